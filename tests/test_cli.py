from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fraisier_textfile.cli.group import main

from .processes import fraisier, lock_held_elsewhere
from .values import sample_values


def run(textfile_dir: Path, *arguments: str) -> click.testing.Result:
    return CliRunner().invoke(main, ["--textfile-dir", str(textfile_dir), *arguments], prog_name="fraisier")


RECORDS = {
    "deployment": (
        ["--provider", "bare_metal", "--fraise-type", "api", "--status", "failed", "--duration", "42"],
        'fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="api"}',
        1,
    ),
    "error": (
        ["--provider", "bare_metal", "--error-type", "build_failed"],
        'fraisier_deployment_errors_total{provider="bare_metal",error_type="build_failed"}',
        1,
    ),
    "rollback": (
        ["--provider", "bare_metal", "--reason", "timeout", "--duration", "7"],
        'fraisier_rollback_duration_seconds_sum{provider="bare_metal"}',
        7,
    ),
    "health-check": (
        ["--provider", "bare_metal", "--check-type", "http", "--status", "fail", "--duration", "0.3"],
        'fraisier_health_checks_total{provider="bare_metal",check_type="http",status="fail"}',
        1,
    ),
    "availability": (
        ["--provider", "docker_compose", "--down"],
        'fraisier_provider_availability{provider="docker_compose"}',
        0,
    ),
    "lock-wait": (
        ["--service", "web", "--provider", "bare_metal", "--seconds", "2.5"],
        'fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}',
        2.5,
    ),
}


@pytest.mark.parametrize("command", RECORDS)
def test_each_record_command_writes_before_it_exits(textfile_dir: Path, command: str) -> None:
    arguments, key, value = RECORDS[command]
    result = run(textfile_dir, "record", command, *arguments)
    assert result.exit_code == 0, result.output
    assert sample_values(textfile_dir / "fraisier.prom")[key] == value


BAD_INPUT = {
    "unknown status": (
        ["record", "deployment", "--provider", "p", "--fraise-type", "api", "--status", "ok", "--duration", "1"],
        2,
        "Error: status='ok' is not known: use one of success, failed, rolled_back, rollback_failed, crashed",
    ),
    "empty label": (["record", "error", "--provider", "", "--error-type", "x"], 2, "Error: provider is empty"),
    "long label": (["record", "error", "--provider", "p" * 129, "--error-type", "x"], 2, "is 129 characters long"),
    "control character": (["record", "error", "--provider", "a\tb", "--error-type", "x"], 2, "non-printable"),
    "negative duration": (
        ["record", "rollback", "--provider", "p", "--reason", "r", "--duration", "-1"],
        2,
        "Error: --duration='-1' is not a finite number of seconds >= 0",
    ),
    "nan duration": (["record", "rollback", "--provider", "p", "--reason", "r", "--duration", "nan"], 2, "nan"),
    "infinite duration": (["record", "rollback", "--provider", "p", "--reason", "r", "--duration", "inf"], 2, "inf"),
    "not a number": (
        ["record", "lock-wait", "--service", "s", "--provider", "p", "--seconds", "soon"],
        2,
        "Error: --seconds='soon' is not a number",
    ),
    "health status": (
        ["record", "health-check", "--provider", "p", "--check-type", "http", "--status", "ok", "--duration", "1"],
        2,
        "status='ok' is not known: use one of pass, fail",
    ),
}


@pytest.mark.parametrize("arguments, code, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_a_nonzero_exit_and_no_change(
    textfile_dir: Path, arguments: list[str], code: int, message: str
) -> None:
    assert run(textfile_dir, "record", "error", "--provider", "p", "--error-type", "seed").exit_code == 0
    before = (textfile_dir / "fraisier.prom").read_bytes()
    result = fraisier(*arguments, textfile_dir=textfile_dir)
    assert result.returncode == code
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert (textfile_dir / "fraisier.prom").read_bytes() == before


def test_a_corrupt_file_is_reported_by_record_and_check(textfile_dir: Path) -> None:
    """Both refuse it in one line (exit 1); record also hands its event over, for the merge that follows the fix:
    the event is not lost for the metrics' file."""
    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text('fraisier_deployment_errors_total{provider="p",error_type="x"} 1 99\n')
    before = (textfile_dir / "fraisier.prom").read_bytes()
    record = fraisier("record", "error", "--provider", "p", "--error-type", "x", textfile_dir=textfile_dir)
    check = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert check.returncode == 1
    assert check.stderr.startswith(f"Error: {textfile_dir / 'fraisier.prom'}:1: sample line")
    # (check adds a warning when node_exporter's user could not read the file: tmp_path is private.)
    errors = [line for line in check.stderr.splitlines() if not line.startswith("warning: ")]
    assert "timestamp" in errors[0] and len(errors) == 1
    assert record.returncode == 1
    [line] = record.stderr.splitlines()
    assert line.startswith(f"Error: {textfile_dir / 'fraisier.prom'}:1: sample line") and "timestamp" in line
    assert line.endswith("(the event was handed over: the next merge, once that is fixed, writes it)")
    assert (textfile_dir / "fraisier.prom").read_bytes() == before
    assert list((textfile_dir / ".fraisier-handover").glob("*.json"))


def test_the_lock_timeout_option_bounds_the_wait_before_a_hand_over(textfile_dir: Path) -> None:
    assert run(textfile_dir, "record", "error", "--provider", "p", "--error-type", "seed").exit_code == 0
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        result = fraisier(
            "--lock-timeout",
            "0.3",
            "record",
            "error",
            "--provider",
            "p",
            "--error-type",
            "x",
            textfile_dir=textfile_dir,
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert list((textfile_dir / ".fraisier-handover").glob("*.json"))
    assert run(textfile_dir, "textfile", "refresh").exit_code == 0
    errors = 'fraisier_deployment_errors_total{provider="p",error_type="x"}'
    assert sample_values(textfile_dir / "fraisier.prom")[errors] == 1


def _waits_for(process: subprocess.Popen[str], path: Path) -> bool:
    """Whether ``process`` has ``path`` open (the lock file: it is trying to take the lock)."""
    fds = Path(f"/proc/{process.pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:  # an entry closed meanwhile
        return False


def test_ctrl_c_while_record_waits_for_a_busy_lock_hands_the_event_over(textfile_dir: Path) -> None:
    """Bug: Ctrl-C while ``fraisier record`` waited for a lock another process held (a user who sees it wait) lost
    the event: the merge's wait raised KeyboardInterrupt and click said "Aborted!". The API's exit hands its events
    over on a Ctrl-C (recorder/process.py); the command now does too, says so, and stops as interrupted."""
    assert run(textfile_dir, "record", "error", "--provider", "p", "--error-type", "seed").exit_code == 0
    lock = textfile_dir / "fraisier.prom.lock"
    with lock_held_elsewhere(lock):
        command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "record", "error",
                   "--provider", "p", "--error-type", "interrupted"]
        recording = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "FRAISIER_LOCK_WAIT_BUDGET": "600"})
        try:
            while not _waits_for(recording, lock):
                assert recording.poll() is None, recording.communicate()
                time.sleep(0.01)
            recording.send_signal(signal.SIGINT)
            _, stderr = recording.communicate(timeout=60)
        finally:
            if recording.poll() is None:
                recording.kill()
                recording.wait()
        assert "Traceback" not in stderr, stderr
        assert "handed over" in stderr, stderr
        assert recording.returncode != 0, stderr  # interrupted: a script that runs it stops too
        assert list((textfile_dir / ".fraisier-handover").glob("*.json"))
    assert run(textfile_dir, "textfile", "refresh").exit_code == 0
    errors = 'fraisier_deployment_errors_total{provider="p",error_type="interrupted"}'
    assert sample_values(textfile_dir / "fraisier.prom")[errors] == 1


def test_textfile_show_and_check(textfile_dir: Path) -> None:
    run(
        textfile_dir,
        "record",
        "deployment",
        "--provider",
        "bare_metal",
        "--fraise-type",
        "api",
        "--status",
        "success",
        "--duration",
        "3",
    )
    shown = run(textfile_dir, "textfile", "show")
    assert shown.exit_code == 0
    assert "fraisier_deployments_total (counter, 5 samples): Deployments finished" in shown.output
    assert '  fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1.0' in shown.output
    checked = run(textfile_dir, "textfile", "check")
    assert checked.exit_code == 0
    assert checked.output.startswith(f"{textfile_dir / 'fraisier.prom'}: OK, 3 families")
    assert run(textfile_dir, "textfile", "path").output == f"{textfile_dir / 'fraisier.prom'}\n"


def test_check_of_a_missing_file_fails(textfile_dir: Path) -> None:
    result = run(textfile_dir, "textfile", "check")
    assert result.exit_code == 1
    assert "does not exist yet" in result.output


def test_the_default_directory_is_shown_and_used(tmp_path: Path) -> None:
    result = fraisier("--help")
    assert str(tmp_path / "state" / "fraisier" / "textfile") in result.stdout.replace("\n", "").replace(" ", "")
    assert fraisier("record", "error", "--provider", "p", "--error-type", "x").returncode == 0
    assert (tmp_path / "state" / "fraisier" / "textfile" / "fraisier.prom").exists()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


@pytest.mark.parametrize("path", [(), *_commands(main)], ids=lambda p: " ".join(p) or "fraisier")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="fraisier")
    assert result.exit_code == 0
    assert "Usage: fraisier" in result.output
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and len(command.help) > 20
    for parameter in command.params:
        if isinstance(parameter, click.Option):
            assert parameter.help, f"{' '.join(path)} {parameter.opts} has no help"


@pytest.mark.parametrize(("path", "offered"), [
    (("install-dispatcher",), ()),
    (("systemd",), ("--textfile-dir",)),
    (("record", "deployment"), ("--textfile-dir", "--lock-timeout", "--log-level", "--log-format")),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else value)
def test_a_command_offers_only_the_group_options_it_uses(path: tuple[str, ...], offered: tuple[str, ...]) -> None:
    """Bug: every command listed --textfile-dir, --lock-timeout, --log-level and --log-format, also those that
    write no metrics (install-dispatcher) or only name the directory (systemd): a user tuning the lock of the
    units' command saw it accepted and ignored. A command offers the group options it uses; any other is a usage
    error naming it, as click's for any unknown option."""
    shared = ("--textfile-dir", "--lock-timeout", "--log-level", "--log-format")
    help_text = CliRunner().invoke(main, [*path, "--help"], prog_name="fraisier").output
    assert [option for option in shared if f"  {option} " in help_text] == list(offered)
    for option in set(shared) - set(offered):
        refused = CliRunner().invoke(main, [*path, option, "1", "--help"], prog_name="fraisier")
        assert refused.exit_code == 2
        assert "No such option" in refused.output and option in refused.output


# fraisier exec: real child processes


def exec_deployment(textfile_dir: Path, fraise_type: str, *command: str) -> subprocess.CompletedProcess[str]:
    return fraisier(
        "exec", "--provider", "bare_metal", "--fraise-type", fraise_type, "--", *command, textfile_dir=textfile_dir
    )


def test_exec_records_success_and_passes_the_exit_code(textfile_dir: Path) -> None:
    result = exec_deployment(textfile_dir, "api", sys.executable, "-c", "print('deployed')")
    assert result.returncode == 0
    assert result.stdout == "deployed\n"
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


def test_exec_records_a_failure_with_its_exit_code(textfile_dir: Path) -> None:
    result = exec_deployment(textfile_dir, "etl", sys.executable, "-c", "raise SystemExit(3)")
    assert result.returncode == 3
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="etl"}'] == 1
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="exit_code_3"}'] == 1


def test_exec_of_a_missing_command(textfile_dir: Path) -> None:
    result = exec_deployment(textfile_dir, "etl", "/nonexistent/deploy")
    assert result.returncode == 127
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="command_not_found"}'] == 1


def start_long_deployment(textfile_dir: Path, **popen: object) -> subprocess.Popen[str]:
    """``fraisier exec`` running a deployment that sleeps a minute; returns once the deployment runs."""
    script = "import time; print('started', flush=True); time.sleep(60)"
    command = [
        sys.executable,
        "-m",
        "fraisier_textfile",
        "--textfile-dir",
        str(textfile_dir),
        "exec",
        "--provider",
        "bare_metal",
        "--fraise-type",
        "api",
        "--",
        sys.executable,
        "-c",
        script,
    ]
    wrapper = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]
    assert wrapper.stdout is not None and wrapper.stdout.readline() == "started\n"
    return wrapper  # type: ignore[no-any-return]


def test_exec_forwards_sigterm_and_records_the_signal(textfile_dir: Path) -> None:
    wrapper = start_long_deployment(textfile_dir)
    assert sample_values(textfile_dir / "fraisier.prom")['fraisier_active_deployments{provider="bare_metal"}'] == 1
    started = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30  # the child got the signal; it did not sleep on
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="signal_SIGTERM"}'] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


def test_exec_with_bad_labels_runs_the_command_and_says_once_that_it_is_not_recorded(
    textfile_dir: Path, tmp_path: Path
) -> None:
    """The deployment wins: a --provider that cannot be a label value costs its metrics, not the deployment."""
    witness = tmp_path / "ran"
    result = fraisier(
        "exec", "--provider", "", "--fraise-type", "api", "--", "sh", "-c", f"touch {witness}; exit 3",
        textfile_dir=textfile_dir,
    )
    assert result.returncode == 3
    [line] = result.stderr.splitlines()
    assert "its metrics are not recorded: provider is empty: give a non-empty provider" in line
    assert witness.exists()
    assert not (textfile_dir / "fraisier.prom").exists()


def test_availability_needs_up_or_down(textfile_dir: Path) -> None:
    result = fraisier("record", "availability", "--provider", "bare_metal", textfile_dir=textfile_dir)
    assert result.returncode == 2
    assert result.stderr == "Error: say whether the provider is available: add --up or --down\n"
    assert not (textfile_dir / "fraisier.prom").exists()


def test_textfile_refresh_counts_a_dead_deployment_and_touches_the_file(textfile_dir: Path) -> None:
    wrapper = start_long_deployment(textfile_dir, start_new_session=True)
    os.killpg(wrapper.pid, signal.SIGKILL)  # the wrapper and its deployment, killed outright
    wrapper.wait()
    path = textfile_dir / "fraisier.prom"
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert sample_values(path)['fraisier_active_deployments{provider="bare_metal"}'] == 1
    assert run(textfile_dir, "textfile", "refresh").exit_code == 0
    values = sample_values(path)
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 1
    assert path.stat().st_mtime > 1_000_000_000


@pytest.mark.parametrize("options", [
    ["--lock-timeout", "soon", "exec"], ["--log-level", "warning", "exec"], ["exec", "--log-format", "text"],
    ["exec", "--lock-timeout", "10²"],
], ids=lambda options: " ".join(options))
def test_a_bad_option_value_never_stops_exec_but_is_a_usage_error_elsewhere(
    textfile_dir: Path, tmp_path: Path, options: list[str]
) -> None:
    """The deployment wins: exec says what is wrong in one line, uses the default and runs the command; a command
    that only does metrics refuses the same value (exit 2), naming it."""
    exec_at = options.index("exec")
    before, after = options[:exec_at], options[exec_at + 1:]
    witness = tmp_path / "ran"
    result = fraisier(*before, "exec", *after, "--provider", "bare_metal", "--fraise-type", "api", "--",
                      "touch", str(witness), textfile_dir=textfile_dir)
    assert result.returncode == 0 and witness.exists()
    [line] = result.stderr.splitlines()
    assert f"{(before or after)[0]}={(before or after)[1]!r}" in line and "using the default" in line
    refused = fraisier(*before, "textfile", "path", *after, textfile_dir=textfile_dir)
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"Error: {(before or after)[0]}={(before or after)[1]!r}")


@pytest.mark.parametrize("command", [
    ["record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
     "--duration", "1"],
    ["exec", "--provider", "bare_metal", "--fraise-type", "api", "--", "true"],
    ["textfile", "path"],
], ids=lambda command: command[0])
def test_a_bad_setting_is_reported_by_the_command_that_read_it(textfile_dir: Path, command: list[str]) -> None:
    """Every warning about a setting began "fraisier metrics:", which names another command: an operator whose
    cron job runs `fraisier record` looked for a server. Each line names the command run, whichever layer read
    the setting (the group its log level, the store its lock-wait budget)."""
    environment = {**os.environ, "FRAISIER_LOG_LEVEL": "loud", "FRAISIER_LOCK_WAIT_BUDGET": "soon"}
    result = fraisier(*command, textfile_dir=textfile_dir, env=environment)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "using the default" in line]
    assert any("FRAISIER_LOG_LEVEL='loud'" in line for line in lines), result.stderr
    if command[0] != "textfile":  # the commands that record read the lock-wait budget
        assert any("FRAISIER_LOCK_WAIT_BUDGET='soon'" in line for line in lines), result.stderr
    assert all(f'msg="fraisier {command[0]}: FRAISIER_' in line for line in lines), result.stderr


def test_install_dispatcher_replaces_only_a_fraisier_script(tmp_path: Path) -> None:
    from fraisier_textfile.cli.scripts import install_dispatcher

    fraisiers = "#!/usr/bin/python3\nimport sys\nfrom fraisier.cli import main\nsys.exit(main())\n"
    (tmp_path / "fraisier").write_text(fraisiers)
    written = install_dispatcher(tmp_path)
    assert written == tmp_path / "fraisier"
    text = written.read_text()
    assert text.startswith(f"#!{sys.executable}\n") and "from fraisier_textfile.cli.dispatch import script" in text
    assert written.stat().st_mode & 0o777 == 0o755
    assert [path.name for path in tmp_path.iterdir()] == ["fraisier"]
    # Run as the script pip would have written: without Fraisier it is our CLI.
    done = subprocess.run([str(written), "--version"], capture_output=True, text=True)
    assert done.stdout.startswith("fraisier-textfile, version ") or done.stdout.startswith("fraisier, version ")
    someone_elses = "#!/bin/sh\necho another fraisier\n"
    written.write_text(someone_elses)
    from fraisier_textfile.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="is neither Fraisier's script nor ours: move it aside"):
        install_dispatcher(tmp_path)
    assert written.read_text() == someone_elses


def test_install_dispatcher_replaces_the_script_an_earlier_version_of_ours_wrote(tmp_path: Path) -> None:
    """0.2.0's console script called dispatch.main (now dispatch.script, which ends the process at once)."""
    from fraisier_textfile.cli.scripts import install_dispatcher

    ours_before = ("#!/usr/bin/python3\nimport re\nimport sys\nfrom fraisier_textfile.cli.dispatch import main\n"
                   "if __name__ == '__main__':\n    sys.exit(main())\n")
    (tmp_path / "fraisier").write_text(ours_before)
    assert "from fraisier_textfile.cli.dispatch import script\n" in install_dispatcher(tmp_path).read_text()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_install_dispatcher_refuses_what_pip_did_not_write_and_leaves_it(tmp_path: Path, kind: str) -> None:
    from fraisier_textfile.cli.scripts import install_dispatcher
    from fraisier_textfile.errors import InvalidValueError

    target = tmp_path / "fraisier"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("#!/bin/sh\nfrom fraisier.cli import main\n")
    if kind == "symlink":
        target.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(InvalidValueError, match=f"^{target} is .*not a script pip wrote: remove it"):
        install_dispatcher(tmp_path)
    assert elsewhere.read_text() == "#!/bin/sh\nfrom fraisier.cli import main\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["elsewhere", "fraisier"]
