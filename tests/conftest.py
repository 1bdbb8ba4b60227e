from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .test_fraisier_state import Fraisier
    from .tls import Certificates

# Set for the whole session, not only per test (the fixture below): fixtures of a wider scope (the fleet of
# tests/integration/) start their processes before any per-test setting applies, and a Fraisier database that
# some run left beside Fraisier's package (its default location) must not count in them.
os.environ["FRAISIER_TEXTFILE_FRAISIER_STATE"] = "off"
os.environ.pop("FRAISIER_DB_PATH", None)


def _noted(signum: int, frame: object) -> None:
    """Stands for SIG_IGN in the test run's own process (see below)."""


def pytest_configure(config: pytest.Config) -> None:
    """The processes the tests start get every signal's default action, however the run was started: ``nohup``
    starts it with SIGHUP ignored, a non-interactive shell's background job with SIGINT and SIGQUIT ignored, and an
    ignored signal stays ignored across exec(2), so a command a test kills with SIGHUP would live on (the
    ``[SIGHUP]`` case of test_execution.py timed out so, in every run started under nohup). The run itself still
    ignores them: a handler that does nothing, which exec(2) resets to the default in every child. Not SIGPIPE
    and SIGXFSZ (Python ignores them itself, and subprocess resets them in its children), SIGCHLD (ignored, it
    means children reaped unasked: no test's concern), nor SIGTTIN and SIGTTOU (caught rather than ignored, they
    would make the run's own reads and writes of a terminal it runs in the background of stop or repeat)."""
    kept = {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGKILL,
            signal.SIGSTOP}
    for signum in signal.valid_signals() - kept:
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, _noted)


@pytest.fixture
def umask_077() -> Iterator[None]:
    """The strictest umask a user may have: what the store creates must get its documented mode all the same."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    """A fresh textfile directory, not yet created (the store creates it)."""
    return tmp_path / "textfile"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, server and client certificates with their keys, made once per test module."""
    from .tls import make_certificates  # cryptography is imported only by the modules that use TLS

    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(autouse=True)
def _no_ambient_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never write to the user's real default directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("FRAISIER_TEXTFILE_DIR", raising=False)
    monkeypatch.delenv("FRAISIER_LOCK_TIMEOUT", raising=False)
    # Nor read a Fraisier database of this machine's (tests/test_fraisier_state.py turns it on, on its own).
    monkeypatch.setenv("FRAISIER_TEXTFILE_FRAISIER_STATE", "off")
    monkeypatch.delenv("FRAISIER_DB_PATH", raising=False)


@pytest.fixture
def fraisier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fraisier]:
    """Fraisier 0.84.2's own code writing its state (database, status files, fraises.yaml) in ``tmp_path``, through
    a worker process; the environment points Fraisier and our state source at it."""
    from .test_fraisier_state import Fraisier

    state = Fraisier(tmp_path / "fraisier")
    for name in ("FRAISIER_DB_PATH", "FRAISIER_CONFIG", "FRAISIER_STATUS_DIR", "FRAISIER_TEXTFILE_FRAISIER_STATE"):
        monkeypatch.setenv(name, state.environment[name])
    try:
        yield state
    finally:
        state.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Workers started by a test; their stdin is closed (their children end on EOF) and they are reaped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
