"""The ``fraisier`` script beside Fraisier (installed in this interpreter): argv read as click reads it, group
options before our commands honoured or refused, hints for commands that are Fraisier's. Without Fraisier (a
venv): tests/test_coexist.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .processes import free_port, http_get, running
from .values import sample_values

BIN = Path(sys.executable).parent
ERROR = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
RECORD_ERROR = ["record", "error", "--provider", "bare_metal", "--error-type", "timeout"]


def run(script: str, *arguments: str, textfile_dir: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(textfile_dir)}
    return subprocess.run([str(BIN / script), *arguments], capture_output=True, text=True, env=environment,
                          timeout=120)


def answer(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """What a user sees, with the program's name taken out (it is in the usage line)."""
    return (result.returncode, result.stdout.replace("fraisier-textfile", "fraisier"),
            result.stderr.replace("fraisier-textfile", "fraisier"))


def test_fraisier_is_the_dispatcher_beside_fraisier() -> None:
    import importlib.util

    assert importlib.util.find_spec("fraisier") is not None, "Fraisier is not installed in this interpreter"
    assert "fraisier_textfile.cli.dispatch" in (BIN / "fraisier").read_text()


def test_a_double_dash_ends_the_group_options_and_our_command_follows(tmp_path: Path) -> None:
    result = run("fraisier", "--", *RECORD_ERROR, textfile_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sample_values(tmp_path / "fraisier.prom")[ERROR] == 1
    assert run("fraisier-textfile", "--", *RECORD_ERROR, textfile_dir=tmp_path).returncode == 0
    assert sample_values(tmp_path / "fraisier.prom")[ERROR] == 2


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--lock-timeout", *RECORD_ERROR], "--lock-timeout"),
        (["--textfile-dir", *RECORD_ERROR], "--textfile-dir"),
        (["--lock-timeout"], "--lock-timeout"),
        (["--textfile-dir"], "--textfile-dir"),
        (["--log-level", *RECORD_ERROR], "--log-level"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_an_option_missing_its_value_gets_the_answer_of_fraisier_textfile(
    arguments: list[str], named: str, tmp_path: Path
) -> None:
    ours = answer(run("fraisier-textfile", *arguments, textfile_dir=tmp_path))
    assert answer(run("fraisier", *arguments, textfile_dir=tmp_path)) == ours
    returncode, _, stderr = ours
    assert returncode == 2 and named in stderr, stderr
    assert not (tmp_path / "fraisier.prom").exists()


def test_json_before_our_command_is_honoured_where_the_command_has_json(tmp_path: Path) -> None:
    assert run("fraisier", *RECORD_ERROR, textfile_dir=tmp_path).returncode == 0
    result = run("fraisier", "--json", "textfile", "summary", textfile_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("{") and '"rows"' in result.stdout


def test_json_before_a_command_without_json_is_refused_and_records_nothing(tmp_path: Path) -> None:
    result = run("fraisier", "--json", *RECORD_ERROR, textfile_dir=tmp_path)
    assert result.returncode == 2
    assert "--json" in result.stderr and "record error" in result.stderr, result.stderr
    assert not (tmp_path / "fraisier.prom").exists()


def on_a_terminal(*arguments: str, textfile_dir: Path) -> str:
    """What ``fraisier ARGUMENTS`` writes to a terminal (a real pty), colours included."""
    import pty

    controller, terminal = pty.openpty()
    environment = {**os.environ, "FRAISIER_TEXTFILE_DIR": str(textfile_dir), "TERM": "xterm"}
    process = subprocess.Popen([str(BIN / "fraisier"), *arguments], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=environment)
    os.close(terminal)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        assert process.wait(timeout=60) == 0, output
    return output.decode()


def test_no_color_before_our_command_is_honoured(tmp_path: Path) -> None:
    assert run("fraisier", "record", "availability", "--provider", "docker_compose", "--down",
               textfile_dir=tmp_path).returncode == 0
    coloured = on_a_terminal("textfile", "summary", textfile_dir=tmp_path)
    assert "DOWN" in coloured and "\x1b[" in coloured  # a provider down stands out on a terminal
    plain = on_a_terminal("--no-color", "textfile", "summary", textfile_dir=tmp_path)
    assert "DOWN" in plain and "\x1b[" not in plain


@pytest.mark.parametrize("verbose", ["-v", "--verbose", "-vv"])
def test_verbose_before_our_command_means_debug_logs(verbose: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "metrics.log"
    command = [str(BIN / "fraisier"), verbose, "--textfile-dir", str(tmp_path), "metrics", "--address",
               "127.0.0.1", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/metrics", log):
        http_get(f"http://127.0.0.1:{port}/metrics")
    assert "level=debug" in log.read_text()


@pytest.mark.parametrize("form", ["--config PATH", "--config=PATH", "-c PATH", "-cPATH"])
def test_fraisiers_config_before_our_command_still_configures_only_fraisier(tmp_path: Path, form: str) -> None:
    """Fraisier's units start `fraisier --config PATH metrics`: accepted, as before, in each of click's spellings
    (`-cPATH` too: click takes a short option's value attached; read as another option, it sent `fraisier
    -c/etc/fraisier/fraises.yaml metrics` to Fraisier's own exporter instead of ours)."""
    config = tmp_path / "fraises.yaml"
    config.write_text("fraises: {}\n")
    result = run("fraisier", *form.replace("PATH", str(config)).split(), *RECORD_ERROR, textfile_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sample_values(tmp_path / "fraisier.prom")[ERROR] == 1


def test_fraisiers_command_under_fraisier_textfile_says_whose_it_is(tmp_path: Path) -> None:
    result = run("fraisier-textfile", "list", textfile_dir=tmp_path)
    assert result.returncode == 2
    assert "No such command 'list'. It is one of Fraisier's: run it as fraisier list" in result.stderr


def test_the_dispatcher_knows_fraisiers_commands() -> None:
    """Its list of Fraisier's commands (for the hint without Fraisier) is the installed Fraisier's."""
    from fraisier.cli import main as fraisiers

    from fraisier_textfile.cli.dispatch import FRAISIER_COMMANDS

    assert set(fraisiers.commands) == FRAISIER_COMMANDS


@pytest.mark.parametrize(("typed", "meant"), [("recrod", "record"), ("textfil", "textfile"), ("lsit", "list")])
def test_a_mistyped_command_is_told_the_closest_of_fraisiers_commands_and_ours(
    typed: str, meant: str, tmp_path: Path
) -> None:
    """``fraisier --help`` lists both CLIs' commands: a typo of either gets click's suggestion, as under
    fraisier-textfile, and nothing else happens."""
    result = run("fraisier", typed, textfile_dir=tmp_path)
    assert result.returncode == 2
    assert f"Error: No such command '{typed}'. Did you mean '{meant}'?" in result.stderr, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "fraisier.prom").exists()
