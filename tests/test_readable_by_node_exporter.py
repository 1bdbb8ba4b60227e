"""``fraisier textfile check`` warns when node_exporter's user could not read the file: every warning checked
against a real read by that user (Debian's ``prometheus``, through ``setpriv``), before and after its fix."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .processes import binary, fraisier

READER = "prometheus"  # the user Debian's prometheus-node-exporter runs as
RECORD = ("record", "error", "--provider", "bare_metal", "--error-type", "timeout")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is under a 0700 directory)."""
    try:
        pwd.getpwnam(READER)
    except KeyError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no user {READER}: install prometheus-node-exporter")
        pytest.skip(f"no user {READER}")
    root = Path(tempfile.mkdtemp(prefix="fraisier-check-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def reads(path: Path) -> bool:
    """Whether node_exporter's user can really read ``path``."""
    command = [binary("setpriv"), f"--reuid={READER}", f"--regid={READER}", "--init-groups", "cat", str(path)]
    return subprocess.run(command, capture_output=True, timeout=60).returncode == 0


def check(directory: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    if home is not None:
        environment["HOME"] = str(home)
    return fraisier("textfile", "check", textfile_dir=directory, env=environment)


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "warning:" in line]


def test_a_file_node_exporter_can_read_gets_no_warning(shared: Path) -> None:
    directory = shared / "textfile"
    assert fraisier(*RECORD, textfile_dir=directory).returncode == 0
    result = check(directory)
    assert result.returncode == 0 and not warnings(result), result.stderr
    assert reads(directory / "fraisier.prom")


def test_the_default_directory_under_a_home_is_named_with_the_fix(shared: Path) -> None:
    home = shared / "home" / "deploy"
    home.mkdir(parents=True)
    home.chmod(0o700)
    directory = home / ".local" / "state" / "fraisier" / "textfile"
    assert fraisier(*RECORD, textfile_dir=directory).returncode == 0
    assert not reads(directory / "fraisier.prom")
    result = check(directory, home=home)
    assert result.returncode == 0, result.stderr  # the file itself is sound
    [warning] = warnings(result)
    assert f"{READER} cannot enter {home}" in warning and "under your home" in warning
    assert "--textfile-dir" in warning and "chmod o+x" in warning
    home.chmod(0o711)  # the fix it names
    assert reads(directory / "fraisier.prom")
    assert not warnings(check(directory, home=home))


def test_a_directory_left_private_by_a_umask_is_named_with_the_fix(shared: Path) -> None:
    directory = shared / "textfile"
    assert fraisier(*RECORD, textfile_dir=directory).returncode == 0
    directory.chmod(0o700)
    assert not reads(directory / "fraisier.prom")
    [warning] = warnings(check(directory))
    assert f"{READER} cannot list {directory}" in warning and f"chmod 755 {directory}" in warning
    assert "umask" in warning
    directory.chmod(0o755)
    assert reads(directory / "fraisier.prom") and not warnings(check(directory))


def test_a_private_file_is_named_with_the_fix(shared: Path) -> None:
    directory = shared / "textfile"
    assert fraisier(*RECORD, textfile_dir=directory).returncode == 0
    textfile = directory / "fraisier.prom"
    before = textfile.read_bytes()
    textfile.chmod(0o600)
    assert not reads(textfile)
    [warning] = warnings(check(directory))
    assert f"{READER} cannot read {textfile}" in warning and f"chmod 644 {textfile}" in warning
    assert textfile.read_bytes() == before and (textfile.stat().st_mode & 0o777) == 0o600  # check changes nothing
    textfile.chmod(0o644)
    assert reads(textfile) and not warnings(check(directory))


def test_a_group_node_exporter_is_in_is_enough(shared: Path) -> None:
    """The shared-group set-up (docs/monitoring.md): mode 0640 and the file's group is node_exporter's."""
    directory = shared / "textfile"
    assert fraisier(*RECORD, textfile_dir=directory).returncode == 0
    textfile = directory / "fraisier.prom"
    os.chown(textfile, -1, pwd.getpwnam(READER).pw_gid)
    textfile.chmod(0o640)
    assert reads(textfile)
    assert not warnings(check(directory))
