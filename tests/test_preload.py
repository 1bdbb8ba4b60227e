"""Loading ahead (fraisier_textfile/preload.py): a process that lives on after its first write loads the package's
modules it has not imported yet, off every call; one that ends sooner never pays for it; a forked child starts
afresh. What it protects (an upgrade under a running process) is tested in test_upgrade.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.processes import REPOSITORY, SLOW_IMPORT_IN_ANOTHER_THREAD

# Loaded only by a hand-over (the lock busy), never by a merge: whether it is in sys.modules says whether the
# process loaded ahead.
WITNESS = "fraisier_textfile.store.handover_codec"

SCRIPT = textwrap.dedent("""
    import atexit, json, os, sys, time
    witness, mode, directory = sys.argv[1:4]

    def at_the_very_end():
        # Registered before the package is imported, so run after every exit hook of its own. The loading thread,
        # had the exit not called it off, would load during this wait: its delay, and a margin.
        time.sleep(sys.modules["fraisier_textfile.preload"].DELAY + 0.5)
        print(json.dumps({"end": witness in sys.modules}), flush=True)

    def loaded_later():
        deadline = time.monotonic() + 30
        while witness not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.05)
        return witness in sys.modules

    if mode == "bridged, forks":
        # Fraisier's metrics module bridged (the start-up hook), nothing recorded, then a fork at once: a
        # pre-forking server, whose workers live on and may first record hours later, after an upgrade.
        import types
        from fraisier_textfile import bridge
        bridge.install_into(types.ModuleType("fraisier.metrics"))
        pid = os.fork()
        if pid == 0:
            print(json.dumps({"child": loaded_later()}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        sys.exit(0)
    if mode == "exits at once":
        atexit.register(at_the_very_end)
    from fraisier_textfile import MetricsRecorder
    recorder = MetricsRecorder(directory)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    print(json.dumps({"after the call": witness in sys.modules}), flush=True)
    if mode == "lives on":
        print(json.dumps({"later": loaded_later()}), flush=True)
    elif mode == "forks":
        # Forked once the parent's loading thread waits (its state then says a load is under way): the case where
        # a child that kept that state would never load.
        loading = sys.modules["fraisier_textfile.preload"]
        deadline = time.monotonic() + 30
        while not loading._begun and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"loading when forked": loading._begun}), flush=True)
        pid = os.fork()
        if pid == 0:
            # The child: no thread of its parent's; its own first write asks afresh, and it loads on its own.
            recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
            print(json.dumps({"child": loaded_later()}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
""")


def run(mode: str, textfile_dir: Path, script: str = SCRIPT) -> dict[str, bool]:
    result = subprocess.run([sys.executable, "-c", script, WITNESS, mode, str(textfile_dir)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    said: dict[str, bool] = {}
    for line in result.stdout.splitlines():
        said.update(json.loads(line))
    return said


def test_a_recorder_that_lives_on_loads_ahead_after_its_first_write_and_not_in_it(textfile_dir: Path) -> None:
    said = run("lives on", textfile_dir)
    assert said == {"after the call": False, "later": True}


def test_a_process_that_ends_right_after_its_write_never_loads_ahead(textfile_dir: Path) -> None:
    """The exit calls the load off (store/process.py's exit hook): a cron job's `record` pays nothing for it, even
    when the interpreter then lives on past the load's delay."""
    said = run("exits at once", textfile_dir)
    assert said == {"after the call": False, "end": False}


def test_a_forked_child_loads_ahead_on_its_own(textfile_dir: Path) -> None:
    """The parent's loading thread is not in the child (fork keeps one thread): the child's state starts afresh, and
    its own write has it load, rather than wait for a thread that is not there."""
    said = run("forks", textfile_dir)
    assert said == {"after the call": False, "loading when forked": True, "child": True}


FORKS_WHILE_LOADING = textwrap.dedent("""
    import importlib.util, os, signal, subprocess, sys, threading, time
    witness, _, directory = sys.argv[1:4]
    # SLOW IMPORT
    from fraisier_textfile import MetricsRecorder
    recorder = MetricsRecorder(directory)
    recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
    assert importing.wait(30)
    # The lock held by another process: the child's write hands its event over, which imports the witness.
    hold = (f"import fcntl, time; lock = open({os.path.join(directory, 'fraisier.prom.lock')!r}, 'a'); "
            "fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\\n"
    pid = os.fork()
    if pid == 0:
        recorder.record_deployment_complete("bare_metal", "api", "success", 1.0)
        os._exit(0)
    done = ended_within(pid, 20)
    holder.kill()
    holder.wait()
    print('{"child recorded": %s}' % ("true" if done else "false"), flush=True)
""").replace("# SLOW IMPORT\n", SLOW_IMPORT_IN_ANOTHER_THREAD)


def test_a_child_forked_while_its_parent_loads_ahead_records(textfile_dir: Path) -> None:
    """Bug: a fork while the parent's loading thread was importing a module (a slow disk makes that last) gave the
    child the module's import lock, held by a thread the child does not have: the child's first write that needed
    the module (a hand-over's codec) waited for ever, and so did its deployment. The fork waits for the import
    under way (one module's)."""
    said = run("forks while loading", textfile_dir, FORKS_WHILE_LOADING)
    assert said == {"child recorded": True}


def test_a_child_forked_right_after_fraisiers_metrics_module_was_bridged_loads_ahead(textfile_dir: Path) -> None:
    """Bug: the bridge has a process load ahead a second after Fraisier's metrics module is imported, since it may
    first record hours later; a child forked within that second forgot it (its parent's loading thread is not in
    it), and, recording nothing, never loaded: a pre-forking server's workers were the processes at risk."""
    said = run("bridged, forks", textfile_dir)
    assert said == {"child": True}
