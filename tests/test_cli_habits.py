"""CLI habits an operator expects, each checked on the real command in a subprocess: exit code and message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraisier_textfile import catalogue as c

from .processes import fraisier, lock_held_elsewhere
from .values import sample_values

RECORD_DEPLOYMENT = ["record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status",
                     "success", "--duration", "3"]


# Group options after the command


def test_group_options_are_accepted_after_the_command(tmp_path: Path) -> None:
    directory = tmp_path / "after"
    assert fraisier(*RECORD_DEPLOYMENT, "--textfile-dir", str(directory)).returncode == 0
    result = fraisier("textfile", "check", "--textfile-dir", str(directory))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{directory / 'fraisier.prom'}: OK")


def test_an_option_after_the_command_wins_over_one_before_it(tmp_path: Path) -> None:
    result = fraisier("--textfile-dir", str(tmp_path / "before"), "textfile", "path",
                      "--textfile-dir", str(tmp_path / "after"))
    assert (result.returncode, result.stdout) == (0, f"{tmp_path / 'after' / 'fraisier.prom'}\n")


def test_lock_timeout_after_the_command(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        # Past the wait (0.3 s here), the event is handed over as the API does: not lost, not an error.
        result = fraisier(*RECORD_DEPLOYMENT, "--lock-timeout", "0.3", textfile_dir=textfile_dir,
                          env={**os.environ, "FRAISIER_LOCK_WAIT_BUDGET": "600"})
        assert (result.returncode, result.stderr) == (0, "")
        assert len(list((textfile_dir / ".fraisier-handover").glob("*.json"))) == 1
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    bad = fraisier("textfile", "path", "--lock-timeout", "soon", textfile_dir=textfile_dir)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--lock-timeout" in bad.stderr and "soon" in bad.stderr


# Mutually exclusive flags


def test_up_and_down_together_are_refused_and_nothing_is_written(textfile_dir: Path) -> None:
    for flags in (["--up", "--down"], ["--down", "--up"]):
        result = fraisier("record", "availability", "--provider", "bare_metal", *flags, textfile_dir=textfile_dir)
        assert result.returncode == 2
        assert result.stderr.endswith("Error: --up and --down contradict each other: give one of them\n")
    assert not (textfile_dir / "fraisier.prom").exists()


@pytest.mark.parametrize(("flag", "value"), [("--up", 1.0), ("--down", 0.0)])
def test_up_or_down_alone_is_recorded(textfile_dir: Path, flag: str, value: float) -> None:
    result = fraisier("record", "availability", "--provider", "bare_metal", flag, textfile_dir=textfile_dir)
    assert result.returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == value


# fraisier exec: why a command could not start, and a command that dies with its wrapper


def exec_command(textfile_dir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return fraisier("exec", "--provider", "bare_metal", "--fraise-type", "api", "--", *command,
                    textfile_dir=textfile_dir)


def test_a_command_that_is_not_found_is_named_in_one_line(textfile_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sh")
    result = exec_command(textfile_dir, missing, "--env", "prod")
    assert result.returncode == 127
    [line] = result.stderr.splitlines()
    assert "level=error" in line
    assert f'msg="cannot start {missing} --env prod: not found (check the path and PATH); exit 127"' in line


def test_a_command_that_is_not_executable_is_named_in_one_line(textfile_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "deploy.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)  # no x bit: even root cannot exec it
    result = exec_command(textfile_dir, str(script))
    assert result.returncode == 126
    [line] = result.stderr.splitlines()
    assert f'msg="cannot start {script}: not executable: Permission denied (check its mode and its #! line); ' \
        'exit 126"' in line
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="command_not_executable"}'] == 1


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has stopped: only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_the_command_dies_with_its_wrapper_so_crashed_means_stopped(textfile_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "deployment.pid"
    script = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "print('started', flush=True); time.sleep(120)")
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "exec", "--provider",
         "bare_metal", "--fraise-type", "api", "--", sys.executable, "-c", script],
        stdout=subprocess.PIPE, text=True,
    )
    assert wrapper.stdout is not None and wrapper.stdout.readline() == "started\n"
    deployment = int(pid_file.read_text())
    assert is_running(deployment)
    wrapper.send_signal(signal.SIGKILL)
    assert wrapper.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the kernel sends the signal as the wrapper exits; this only bounds a failure
    while is_running(deployment) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(deployment), "the deployment outlived fraisier exec"
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


# Shell completion


def complete(*words: str) -> list[str]:
    """What bash completion offers after ``fraisier WORDS ...`` (the last word being typed)."""
    environment = dict(os.environ, _FRAISIER_COMPLETE="bash_complete", COMP_WORDS=" ".join(("fraisier", *words)),
                       COMP_CWORD=str(len(words)))
    result = subprocess.run(
        [sys.executable, "-c", "from fraisier_textfile.cli.group import main; main(prog_name='fraisier')"],
        env=environment, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return [line.partition(",")[2] for line in result.stdout.splitlines() if line.startswith("plain,")]


def test_completion_offers_status_values() -> None:
    assert complete("record", "deployment", "--status", "") == list(c.DEPLOYMENT_STATUSES)
    assert complete("record", "deployment", "--status", "roll") == ["rolled_back", "rollback_failed"]
    assert complete("record", "health-check", "--status", "") == list(c.HEALTH_CHECK_STATUSES)


def test_completion_offers_commands_and_log_levels() -> None:
    assert "summary" in complete("textfile", "")
    assert complete("textfile", "check", "--log-level", "") == ["debug", "info", "warn", "error"]


def test_the_completion_script_is_what_the_guide_says() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from fraisier_textfile.cli.group import main; main(prog_name='fraisier')"],
        env=dict(os.environ, _FRAISIER_COMPLETE="bash_source"), capture_output=True, text=True,
    )
    assert result.returncode == 0
    assert "_fraisier_completion()" in result.stdout and "complete -o nosort -F _fraisier_completion fraisier" \
        in result.stdout
    guide = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert 'eval "$(_FRAISIER_COMPLETE=bash_source fraisier)"' in guide


def test_every_command_lists_its_help_option_last_and_the_group_its_version(tmp_path: Path) -> None:
    """-h and --help at every level, listed last, and --version on the group, as click's own options say them."""
    for words in ([], ["record"], ["record", "deployment"], ["textfile", "check"]):
        for option in ("-h", "--help"):
            result = fraisier(*words, option)
            assert result.returncode == 0, result.stderr
            lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("-")]
            assert re.fullmatch(r"-h, --help +Show this message and exit\.", lines[-1]), lines
    listed = fraisier("--help").stdout
    assert re.search(r"^  --version +Show the version and exit\.$", listed, re.MULTILINE), listed
    assert fraisier("record", "--version").returncode == 2  # the group's option, not its commands'


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_textfile_dir_that_is_a_file_is_a_usage_error(tmp_path: Path, where: str) -> None:
    """--textfile-dir names a directory: a file there is refused before anything is recorded, as click's
    directory type says it, whether the option comes before or after the command."""
    plain = tmp_path / "plain"
    plain.write_text("")
    option = ["--textfile-dir", str(plain)]
    words = [*option, *RECORD_DEPLOYMENT] if where == "before" else [*RECORD_DEPLOYMENT, *option]
    result = subprocess.run([sys.executable, "-m", "fraisier_textfile", *words], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"Invalid value for '--textfile-dir': Directory '{plain}' is a file." in result.stderr
    assert plain.read_text() == ""


def test_completion_of_the_textfile_dir_offers_directories() -> None:
    environment = dict(os.environ, _FRAISIER_COMPLETE="bash_complete",
                       COMP_WORDS="fraisier record deployment --textfile-dir ", COMP_CWORD="4")
    for words in ("fraisier --textfile-dir ", "fraisier record deployment --textfile-dir "):
        environment.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split())))
        result = subprocess.run(
            [sys.executable, "-c", "from fraisier_textfile.cli.group import main; main(prog_name='fraisier')"],
            env=environment, capture_output=True, text=True,
        )
        assert (result.returncode, result.stdout) == (0, "dir,\n"), result.stderr


# What one command loads


LOADED_MODULES = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_LISTING"], "w").write("\\n".join(sorted(sys.modules))))
from fraisier_textfile.cli.dispatch import main
sys.argv[0] = "fraisier"
main()
"""


def modules_loaded_by(arguments: list[str], tmp_path: Path, **environment: str) -> set[str]:
    """Every module in ``sys.modules`` when ``fraisier ARGUMENTS`` (the dispatcher, in a process of its own)
    exits."""
    listing = tmp_path / "modules.txt"
    result = subprocess.run([sys.executable, "-c", LOADED_MODULES, *arguments], capture_output=True, text=True,
                            env=dict(os.environ, MODULES_LISTING=str(listing), **environment))
    assert result.returncode == 0, result.stderr
    return set(listing.read_text().split())


def test_a_record_run_loads_no_other_command_nor_the_server(tmp_path: Path) -> None:
    """A `fraisier record` from cron or a hook pays for recording only: not for the server, its web config,
    the summary, the systemd units, the other commands, prometheus_client or Fraisier."""
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.cli.record" in loaded  # the command ran from its own module
    unwanted = {
        name for name in loaded
        if name.startswith(("fraisier_textfile.serve", "prometheus_client", "fraisier.", "yaml"))
        or name in {"fraisier", "fraisier_textfile.cli.textfile", "fraisier_textfile.cli.serve",
                    "fraisier_textfile.cli.install", "fraisier_textfile.cli.systemd", "fraisier_textfile.cli.scripts",
                    "fraisier_textfile.cli.execution", "fraisier_textfile.sources.fraisier_state"}
    }
    assert not unwanted


def test_a_record_run_imports_no_module_it_has_no_use_for(tmp_path: Path) -> None:
    """What a plain record run would import only to leave unused: logging (its loggers fetch it at their first
    record, fraisier_textfile.logger, and its log lines are set up then), signal (the lock's deferral of signal
    handlers uses the C functions under it, not its enums), queue (made with the thread that removes applied
    hand-overs)."""
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.cli.record" in loaded
    assert not {"logging", "signal", "queue"} & loaded


def test_a_record_run_asks_gettext_for_nothing(tmp_path: Path) -> None:
    """click translates its own words through gettext, and gettext's first lookup imports locale (its table of
    aliases: a sixth of what our own modules cost a record run; bench/README.md). A record run builds none of click's
    options that look a word up (its help and version options, its path type): ours say the same words."""
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.cli.record" in loaded
    assert "locale" not in loaded


def test_a_record_run_loads_no_extension_module_for_a_search_over_a_few_bounds(tmp_path: Path) -> None:
    """Loading a C extension (a shared object) is start-up a process pays (bench/README.md): the bisect
    module's, for finding the bucket of a duration among a dozen bounds and the segment of an edited line, is more
    than the searches themselves will ever cost (format/schema.py's Family.bucket_of, format/span.py). Run with
    bisect made unimportable (an editable install's finder loads it at start-up), a record run records its event,
    twice: the second edits the lines the first wrote."""
    script = "import sys\nsys.modules['bisect'] = sys.modules['_bisect'] = None\n" + LOADED_MODULES
    textfile_dir = tmp_path / "textfile"
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script, "--textfile-dir", str(textfile_dir),
                                 *RECORD_DEPLOYMENT], capture_output=True, text=True,
                                env=dict(os.environ, MODULES_LISTING=str(tmp_path / "modules.txt")))
        assert result.returncode == 0, result.stderr
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2


COMPILED = """
import re, sys
compiled = []
compile = re.compile
def ours(pattern, flags=0):
    if "fraisier_textfile" in sys._getframe(1).f_code.co_filename:
        compiled.append(pattern)
    return compile(pattern, flags)
re.compile = ours
import atexit, os
atexit.register(lambda: compiled and os.write(2, ("compiled: " + repr(compiled)).encode()))
""" + LOADED_MODULES


def test_a_record_run_compiles_no_regular_expression(tmp_path: Path) -> None:
    """Compiling a pattern costs a process more than matching what a record run reads with it (its
    seconds, a setting): none of ours is compiled at import, and a record run's values are read without one."""
    result = subprocess.run([sys.executable, "-c", COMPILED, "--textfile-dir", str(tmp_path / "textfile"),
                             *RECORD_DEPLOYMENT, "--lock-timeout", "2"], capture_output=True, text=True,
                            env=dict(os.environ, MODULES_LISTING=str(tmp_path / "modules.txt"),
                                     FRAISIER_LOCK_WAIT_BUDGET="0.5", FRAISIER_MAX_SERIES_PER_FAMILY="5000"))
    assert (result.returncode, result.stderr) == (0, "")


TYPING_MACHINERY = """
import atexit, enum, sys, typing

def report():
    built = []
    for name, module in list(sys.modules.items()):
        if name.startswith("fraisier_textfile"):
            for attribute, value in vars(module).items():
                if isinstance(value, type) and value.__module__ == name and (
                        issubclass(value, enum.Enum) or getattr(value, "_is_protocol", False)):
                    built.append(f"{name}.{attribute}")
                elif type(value).__module__ == "typing" and not isinstance(value, typing.TypeVar) and not any(
                        value is own for own in vars(typing).values()):  # made here, not typing's own (Any)
                    built.append(f"{name}.{attribute}")
    print(sorted(built))

atexit.register(report)
""" + LOADED_MODULES


def test_a_record_run_builds_no_enum_protocol_or_typing_alias(tmp_path: Path) -> None:
    """Making an enum class, a Protocol or a typing alias (Union[...]) is start-up a record run pays at import
    (bench/README.md): three constants for a family's kind are a plain class, and what only the type checker reads
    (a Protocol, an alias) is defined for it alone (``if TYPE_CHECKING``)."""
    result = subprocess.run([sys.executable, "-c", TYPING_MACHINERY, "--textfile-dir", str(tmp_path / "textfile"),
                             *RECORD_DEPLOYMENT], capture_output=True, text=True,
                            env=dict(os.environ, MODULES_LISTING=str(tmp_path / "modules.txt")))
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_a_record_run_imports_no_pathlib(tmp_path: Path) -> None:
    """pathlib (with the urllib.parse and ipaddress it imports) is a few of our modules' worth of start-up: the store
    works with strings, and makes a Path only for whoever asks for one (an error's path, the store's public
    attributes). Run with pathlib made unimportable (an editable install's finder may have loaded it already), a
    record run records its event."""
    script = "import sys\nsys.modules['pathlib'] = None\n" + LOADED_MODULES
    listing = tmp_path / "modules.txt"
    textfile_dir = tmp_path / "textfile"
    result = subprocess.run([sys.executable, "-c", script, "--textfile-dir", str(textfile_dir), *RECORD_DEPLOYMENT],
                            capture_output=True, text=True, env=dict(os.environ, MODULES_LISTING=str(listing)))
    assert result.returncode == 0, result.stderr
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1


def test_a_record_run_that_meets_no_hand_over_loads_none_of_their_code(tmp_path: Path) -> None:
    """A record run into a directory that never saw a hand-over, nor a forget or an expiry, imports neither how a
    hand-over is encoded, ordered and set aside (store/handover_codec.py, store/handover_order.py,
    store/handover_aside.py) nor how series are selected for forgetting (store/selection.py): each is loaded by the
    first merge that meets one."""
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.store.handovers" in loaded  # the merge looked for hand-overs
    assert not {"fraisier_textfile.store.handover_codec", "fraisier_textfile.store.handover_order",
                "fraisier_textfile.store.handover_aside", "fraisier_textfile.store.selection"} & loaded



def test_a_record_run_that_meets_no_marker_loads_neither_deployments_nor_process_identities(tmp_path: Path) -> None:
    """A record run into a directory where no deployment in flight left a marker imports neither the handle of a
    deployment this process runs (store/deployments.py: `fraisier exec` and the recorder start them) nor how a
    marker's writer is told alive (store/process_identity.py): each is loaded by the first merge that needs it.
    With a marker there, the same run loads the identities and counts the dead writer's deployment crashed."""
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.store.markers" in loaded  # the merge looked for markers
    assert not {"fraisier_textfile.store.deployments", "fraisier_textfile.store.process_identity"} & loaded
    dead = subprocess.run(
        [sys.executable, "-c", "import sys; from fraisier_textfile.store import markers; "
         "markers.create_marker(sys.argv[1], 'bare_metal', 'api')", str(tmp_path / "textfile")],
        capture_output=True, text=True)
    assert dead.returncode == 0, dead.stderr
    loaded = modules_loaded_by(["--textfile-dir", str(tmp_path / "textfile"), *RECORD_DEPLOYMENT], tmp_path)
    assert "fraisier_textfile.store.process_identity" in loaded
    assert sample_values(tmp_path / "textfile" / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 1

COLLECTIONS_SEEN = """
import atexit, gc, json, sys
seen = []
gc.callbacks.append(lambda phase, info: phase == "start" and seen.append(
    sorted(name for name in sys.modules if name.startswith("fraisier_textfile"))))
atexit.register(lambda: print(json.dumps({"enabled": gc.isenabled(), "seen": seen,
    "loaded": sorted(name for name in sys.modules if name.startswith("fraisier_textfile"))})))
from fraisier_textfile.cli.dispatch import main
print(json.dumps(sorted(name for name in sys.modules if name.startswith("fraisier_textfile"))))
sys.argv[0] = "fraisier"
main()
"""


def test_a_record_run_collects_no_garbage_while_it_imports_and_leaves_the_collector_on(tmp_path: Path) -> None:
    """The objects a command's imports make (modules, functions, classes) live as long as the process: the cyclic
    garbage collector's passes over them while they are made find nothing to free, and so would every later pass
    (the one at exit among them). No collection runs between the dispatcher's start and the command's module
    loaded; the collector is on again when the command runs."""
    result = subprocess.run([sys.executable, "-c", COLLECTIONS_SEEN, "--textfile-dir", str(tmp_path / "textfile"),
                             *RECORD_DEPLOYMENT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first, last = result.stdout.splitlines()
    before, after = json.loads(first), json.loads(last)
    assert "fraisier_textfile.cli.record" in after["loaded"] and "fraisier_textfile.store.textfile" in after["loaded"]
    assert after["enabled"]
    # Those whose modules are more than the dispatcher's own and fewer than all: run during main()'s imports.
    while_importing = [modules for modules in after["seen"] if set(before) < set(modules) < set(after["loaded"])]
    assert not while_importing, f"{len(while_importing)} collections ran while the CLI's modules were imported"


EXIT_HOOK_SEEN = """
import atexit, sys
atexit.register(lambda: print("exit hook", flush=False))  # printed, not flushed: the CLI's end flushes it
sys.argv[0] = "fraisier"
from {module} import script
script()
"""
PROGRAMS = {
    "fraisier": ["-c", EXIT_HOOK_SEEN.format(module="fraisier_textfile.cli.dispatch")],
    "fraisier-textfile": ["-c", EXIT_HOOK_SEEN.format(module="fraisier_textfile.cli")],
    "python -m": ["-m", "fraisier_textfile"],
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize(("arguments", "status"), [
    (["--textfile-dir", "{directory}", *RECORD_DEPLOYMENT], 0),
    (["--textfile-dir", "{directory}", "textfile", "path"], 0),
    (["--textfile-dir", "{directory}", "record", "deployment", "--provider", "bare_metal"], 2),
])
def test_a_command_ends_once_its_exit_hooks_ran_without_tearing_the_interpreter_down(
        tmp_path: Path, program: str, arguments: list[str], status: int) -> None:
    """Tearing the interpreter down (``python -v`` prints a "# cleanup" or "# destroy" line for each step) is
    a twentieth of a record run's CPU (bench/README.md), spent on a process about to end. Once its command is
    done, the CLI runs the exit hooks, flushes its output and ends the process with the command's status: what
    was printed, also by an exit hook, is all there; the status is the command's. The console scripts do
    (dispatch.script, cli.script), and ``python -m fraisier_textfile``."""
    directory = str(tmp_path / "textfile")
    result = subprocess.run(
        [sys.executable, "-v", *PROGRAMS[program], *(a.format(directory=directory) for a in arguments)],
        capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith(("# cleanup", "# destroy"))]
    hook = "" if program == "python -m" else "exit hook\n"
    assert result.stdout.endswith(hook)
    if arguments[2:4] == ["textfile", "path"]:
        assert result.stdout == f"{tmp_path / 'textfile' / 'fraisier.prom'}\n{hook}"


def test_main_called_from_python_ends_with_system_exit_and_its_caller_goes_on(tmp_path: Path) -> None:
    """Only the programs end the process: a caller of ``main()`` (bench/trace_event.py, a test) gets SystemExit, as
    from any click command, and goes on, also after a record command of ours."""
    script = ("import sys\n"
              "from fraisier_textfile.cli.dispatch import main\n"
              "sys.argv[0] = 'fraisier'\n"
              "try:\n"
              "    main()\n"
              "except SystemExit as stop:\n"
              "    print('went on after', stop.code)\n")
    result = subprocess.run([sys.executable, "-c", script, "--textfile-dir", str(tmp_path), *RECORD_DEPLOYMENT],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "went on after 0\n"), result.stderr


def test_a_command_leaves_a_thread_that_is_not_a_daemon_to_finish(tmp_path: Path) -> None:
    """A thread the process must wait for (one that is not a daemon) is waited for, as the interpreter does."""
    script = ("import sys, threading, time\n"
              "threading.Thread(target=lambda: (time.sleep(0.5), print('finished', flush=True))).start()\n"
              "sys.argv[0] = 'fraisier'\n"
              "from fraisier_textfile.cli.dispatch import script\n"
              "script()\n")
    result = subprocess.run([sys.executable, "-c", script, "--textfile-dir", str(tmp_path), "textfile", "path"],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "finished"), result.stderr


def test_the_script_imports_typing_and_its_kin_only_under_the_paused_collector() -> None:
    """As the console script starts, importing the dispatcher imports the package first, outside the CLI's paused
    collector (cli.LastingImports): typing there, with re, enum and the rest it imports, made the collector run
    about eight times over objects that are not garbage (bench/README.md). Those modules are click's
    to import, under the pause. Run without site (an editable install's finder imports typing at start-up)."""
    repository = str(Path(__file__).resolve().parent.parent)
    script = (f"import sys; sys.path.insert(0, {repository!r}); import fraisier_textfile.cli.dispatch; "
              "print(sorted({'typing', 're', 'enum', 'functools', 'contextlib'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_importing_the_package_leaves_the_collector_as_it_found_it() -> None:
    """A program that imports the library (Fraisier, through the bridge) keeps its collector: on if it was on,
    nothing frozen; off if it was off."""
    script = ("import gc, sys\n"
              "if sys.argv[1] == 'off': gc.disable()\n"
              "import fraisier_textfile, fraisier_textfile.metrics\n"
              "print(gc.isenabled(), gc.get_freeze_count())\n")
    for state, expected in (("on", "True 0\n"), ("off", "False 0\n")):
        result = subprocess.run([sys.executable, "-c", script, state], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, expected), result.stderr


def test_the_dispatcher_decides_where_a_line_goes_before_importing_the_cli_framework() -> None:
    """The ``fraisier`` script routes its command line with nothing but the standard library: click, and the CLI
    that needs it, are imported by main() once the line is known to be ours, with the collector paused
    (cli.LastingImports), not by the import of the script's module."""
    script = "import sys; import fraisier_textfile.cli.dispatch; print('click' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_a_record_run_logs_a_bad_setting_in_the_chosen_format(textfile_dir: Path, log_format: str) -> None:
    """With its logging set up at the first record, a record run still logs in the format chosen, in the
    environment or by the option."""
    bad_setting = {**os.environ, "FRAISIER_LOCK_TIMEOUT": "soon"}
    for arguments, environment in (
        (RECORD_DEPLOYMENT, {**bad_setting, "FRAISIER_LOG_FORMAT": log_format}),
        (["--log-format", log_format, *RECORD_DEPLOYMENT], bad_setting),
    ):
        result = fraisier(*arguments, textfile_dir=textfile_dir, env=dict(environment))
        assert result.returncode == 0, result.stderr
        [line] = result.stderr.splitlines()
        assert "FRAISIER_LOCK_TIMEOUT" in line and "soon" in line
        if log_format == "json":
            assert json.loads(line)["level"] == "warn"
        else:
            assert line.startswith("time=") and " level=warn " in line
    assert sample_values(textfile_dir / "fraisier.prom")[
        'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2


def test_whether_a_word_is_a_command_is_told_without_loading_it() -> None:
    """`fraisier --log-level metrics record ...` is refused for naming a command as a value: telling so must not
    import the server's module (nor fail where a command's module cannot be imported)."""
    from fraisier_textfile.cli.group import LazyCommands

    commands = LazyCommands({"metrics": "fraisier_textfile.no_such_module:metrics"})
    assert "metrics" in commands and "record" not in commands
    assert list(commands) == ["metrics"]


@pytest.mark.parametrize("arguments", [("exec",), ("record", "deployment"), ("textfile", "forget", "--bogus")])
def test_a_usage_error_says_how_to_get_the_commands_help(textfile_dir: Path, arguments: tuple[str, ...]) -> None:
    """click's usage error: the usage line, where to find help, the error, exit 2 (STYLE.md's anchor). Giving
    the commands a -h/--help of our own (add_help_option=False) loses the middle line: click prints it only for a
    command whose help option it knows."""
    result = fraisier(*arguments, textfile_dir=textfile_dir)
    command = " ".join(["python -m fraisier_textfile", *[word for word in arguments if not word.startswith("-")]])
    usage, hint = result.stderr.splitlines()[:2]
    assert (result.returncode, usage.startswith(f"Usage: {command} [OPTIONS]"), hint) == (
        2, True, f"Try '{command} --help' for help."), result.stderr
