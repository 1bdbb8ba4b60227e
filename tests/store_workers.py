"""Worker processes for the store's tests: ``python tests/store_workers.py NAME TEXTFILE_DIR [ARGS]``.

They use the store directly (the recorder is not theirs to test): each event is one ``Changes`` merged or
handed over, and each acknowledgement is printed only once the call returned.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import LockTimeoutError


def hand_over_then_wait(directory: str, count: str) -> None:
    """``count`` events through merge_or_hand_over (the lock is held elsewhere); say so; then wait to be killed."""
    store = TextfileStore(directory)
    for number in range(int(count)):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"handed_{number}")
        merged = store.merge_or_hand_over(changes, wait=0.05)
        assert not changes
        print("merged" if merged else "handed over", flush=True)
    time.sleep(600)


def exit_with_pending(directory: str) -> None:
    """Record without flushing; at exit, merge or hand over (the lock is held elsewhere), then exit."""
    store = TextfileStore(directory)
    pending = Changes()
    events.deployment_error(pending, "bare_metal", "at_exit")
    atexit.register(lambda: store.merge_or_hand_over(pending, wait=0.05))


def hold_then_release(directory: str) -> None:
    """Take the store's lock as a merger does; release it when told, then do what a merger does after."""
    store = TextfileStore(directory)
    store.transaction.lock.acquire(time.monotonic() + 10, 10, lambda: None)
    print("held", flush=True)
    sys.stdin.readline()
    store.transaction.lock.release()
    with store.file.open_directory() as textfile:
        store.group_commit.merge_late_handovers(textfile, time.monotonic())
    print("released", flush=True)


def race(directory: str, count: str, identity: str, wait: str) -> None:
    """``count`` events, each its own merge_or_hand_over with a short wait. Prints how many were handed over."""
    store = TextfileStore(directory)
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts at once
    handed_over = 0
    for _ in range(int(count)):
        changes = Changes()
        events.deployment_complete(changes, "bare_metal", "api", "success", 1.5, now=1000.0)
        events.health_check(changes, "bare_metal", "http", "pass", 0.1)
        if not store.merge_or_hand_over(changes, wait=float(wait)):
            handed_over += 1
    changes = Changes()
    events.deployment_error(changes, "bare_metal", f"worker_{identity}")
    store.merge_or_hand_over(changes, wait=float(wait))
    print(handed_over, flush=True)


class Interrupted(Exception):
    pass


def flush_under_alarms(directory: str, count: str, threaded: str) -> None:
    """Flush in a tight loop while SIGALRM fires every few hundred microseconds and its handler raises
    inside the merge, wherever it lands. At the end, one last merge (as at exit). Prints the events recorded.

    With ``threaded`` = "1" another thread runs meanwhile, so that the kernel may deliver the alarm to it."""
    import threading

    if threaded == "1":
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    store = TextfileStore(directory, lock_timeout=60)
    armed = False

    def alarm(signum: int, frame: object) -> None:
        nonlocal armed
        if armed:
            armed = False
            raise Interrupted

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    pending = Changes()
    recorded = interrupted = 0
    while recorded < int(count):
        events.deployment_error(pending, "bare_metal", "alarmed")
        recorded += 1
        try:
            armed = True
            store.merge(pending)
            armed = False
        except Interrupted:
            interrupted += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    armed = False
    store.merge(pending)
    print(recorded, interrupted, flush=True)


def flush_until_terminated(directory: str) -> None:
    """Flush in a loop until SIGTERM, whose handler raises SystemExit when it lands inside a flush; the
    events still pending are merged at exit, as a recorder does. Prints the events recorded, at exit."""
    store = TextfileStore(directory, lock_timeout=60)
    pending = Changes()
    recorded = 0
    requested = armed = False

    def terminate(signum: int, frame: object) -> None:
        nonlocal requested
        requested = True
        if armed:
            raise SystemExit(0)

    def at_exit() -> None:
        store.merge(pending)
        print(recorded, flush=True)

    atexit.register(at_exit)
    signal.signal(signal.SIGTERM, terminate)
    print("ready", flush=True)
    while not requested:
        events.deployment_error(pending, "bare_metal", "terminated")
        recorded += 1
        armed = True
        store.merge(pending)
        armed = False


def merge_paused_before_rename(directory: str, error_type: str) -> None:
    """Merge one event, pausing once between writing the new file and renaming it into place (while the
    lock is held) until a line arrives on stdin."""
    store = TextfileStore(directory, lock_timeout=30)
    write_temporary = store.file.write_temporary
    paused = False

    def pause(text: str, *arguments: object) -> tuple[object, int]:
        nonlocal paused
        written = write_temporary(text, *arguments)  # type: ignore[arg-type]
        if not paused:
            paused = True
            print("paused", flush=True)
            sys.stdin.readline()
        return written

    store.file.write_temporary = pause  # type: ignore[method-assign, assignment]
    changes = Changes()
    events.deployment_error(changes, "bare_metal", error_type)
    store.merge(changes)
    print("merged", flush=True)


def merge_one(directory: str, error_type: str) -> None:
    """One event, merged, waiting for the lock as long as it takes."""
    store = TextfileStore(directory, lock_timeout=60)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", error_type)
    print("waiting", flush=True)
    store.merge(changes)


def wait_for_the_lock(directory: str) -> None:
    """Merge one event, waiting up to two minutes for a lock held elsewhere."""
    from fraisier_textfile.store import lock

    store = TextfileStore(directory, lock_timeout=120)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "interrupted")
    try_lock = lock.try_lock

    def saying_when_it_waits(descriptor: int, path: str | os.PathLike[str]) -> bool:
        # Said from inside the wait, after a try found the lock busy: the test signals then, not after a guess.
        taken = try_lock(descriptor, path)
        if not taken and not saying_when_it_waits.said:  # type: ignore[attr-defined]
            saying_when_it_waits.said = True  # type: ignore[attr-defined]
            print("waiting", flush=True)
        return taken

    saying_when_it_waits.said = False  # type: ignore[attr-defined]
    lock.try_lock = saying_when_it_waits
    store.merge(changes)


def merge_forever(directory: str) -> None:
    """Merge nothing of its own, over and over (so applying whatever hand-overs wait), until killed."""
    store = TextfileStore(directory)
    while True:
        try:
            store.merge(Changes(), timeout=1)
        except LockTimeoutError:
            pass


def record_once(directory: str, error_type: str) -> None:
    """One deployment completed now (by this process's clock) and one error, merged."""
    store = TextfileStore(directory)
    changes = Changes()
    now = time.time()
    events.deployment_complete(changes, "bare_metal", "api", "success", 1.0, now=now)
    events.deployment_error(changes, "bare_metal", error_type)
    store.merge(changes)
    print(repr(now), flush=True)


def deploy_and_hand_over_end(directory: str, fraise_type: str) -> None:
    """A deployment that starts (its marker), ends, and hands its end over with the marker retired, then exits
    with the marker still on disk (the lock it held goes with the process)."""
    from fraisier_textfile.store import markers as marker_files

    store = TextfileStore(directory)
    marker = marker_files.create_marker(Path(directory), "docker_compose", fraise_type)
    changes = Changes()
    events.deployment_complete(changes, "docker_compose", fraise_type, "success", 1.0)
    changes.retire_marker(marker.id)
    store.hand_over(changes)
    os._exit(0)


def deployment_step_by_step(directory: str) -> None:
    """One deployment through the store's API, a step per line on stdin, each acknowledged once done: ``start``
    (prints its marker id), ``end`` (its end put in changes, not written), ``write`` (merged or handed over, with
    no wait for a busy lock: prints ``merged``, ``handed over`` or ``failed``), ``write then die`` (SIGKILLed
    once the end is written, before the marker is released), ``write interrupted`` (a SIGINT arrives as the end's
    file is renamed into place: prints ``interrupted`` once the KeyboardInterrupt is caught, this process going
    on). Then waits to be killed or for EOF."""
    from fraisier_textfile.errors import FraisierTextfileError
    from fraisier_textfile.store import deployments, handovers
    from fraisier_textfile.store.files import Textfile

    store = TextfileStore(directory)
    deployment: deployments.Deployment | None = None
    end = Changes()
    for step in sys.stdin:
        step = step.strip()
        if step == "start":
            deployment = store.start_deployment(
                "bare_metal", "api", lambda error, where: print(f"no marker in {where}: {error}", file=sys.stderr)
            )
            start = Changes()
            events.deployment_started(start, "bare_metal", "api")
            store.merge(start)
            print(deployment.marker_id, flush=True)
        elif step == "end":
            events.deployment_complete(end, "bare_metal", "api", "success", 1.0)
            events.deployment_ended(end, "bare_metal", deployment)
            print("ended", flush=True)
        elif step in ("write", "write then die", "write interrupted"):
            if step == "write then die":
                deployments.Deployment.written = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
            if step == "write interrupted":
                Textfile.rename = interrupted(Textfile.rename)  # type: ignore[method-assign]
                handovers.publish = interrupted(handovers.publish)
            try:
                merged = store.merge_or_hand_over(end, 0.0)
            except FraisierTextfileError:
                print("failed", flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            else:
                print("merged" if merged else "handed over", flush=True)
        else:
            raise SystemExit(f"no step {step}")


def interrupted(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, with a SIGINT sent to this process just before it runs."""

    def sigint_then(*arguments: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        return function(*arguments)

    return sigint_then


def deploy_and_die(directory: str, fraise_type: str) -> None:
    """A deployment whose process dies after writing its marker: a crash, for the next merger to count."""
    from fraisier_textfile.store import markers as marker_files

    marker_files.create_marker(Path(directory), "docker_compose", fraise_type)
    os._exit(0)


def merge_killed_at(directory: str, step: str) -> None:
    """One merge with every participant (markers, hand-overs, Fraisier's state, the lifecycle) and an event of
    its own, this process SIGKILLed at ``step`` of the transaction (store/transaction.py)."""
    from fraisier_textfile.sources.fraisier_state import participants
    from fraisier_textfile.store import fs, handover_reuse, handovers

    store = TextfileStore(directory, participants=participants())
    assert store.sources, "the Fraisier state source is not active"

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*arguments: Any, **keywords: Any) -> Any:
            result = function(*arguments, **keywords)
            die()
            return result
        return wrapped

    lifecycle = store.transaction.participants[-1]
    if step == "collected":
        lifecycle.collect = then_die(lifecycle.collect)  # type: ignore[method-assign]
    elif step == "written":
        store.file.rename = lambda *arguments: die()  # type: ignore[method-assign]
    elif step == "renamed":
        store.file.rename = then_die(store.file.rename)  # type: ignore[method-assign]
    elif step == "markers-removed":
        assert store.markers is not None
        store.markers.after_commit = then_die(store.markers.after_commit)  # type: ignore[method-assign]
    elif step == "hand-overs-being-removed":
        unlink = fs.Directory.unlink
        removed: list[str] = []

        def unlink_then_die(self: fs.Directory, name: str) -> bool:
            gone = unlink(self, name)
            if name.endswith(handovers.SUFFIX):
                removed.append(name)
                if len(removed) == 2:
                    die()
            return gone

        fs.Directory.unlink = unlink_then_die  # type: ignore[method-assign]
        rename = fs.Directory.rename

        def retire_then_die(self: fs.Directory, source: str, destination: str) -> None:
            rename(self, source, destination)
            if source.endswith(handovers.SUFFIX) and destination.endswith(handover_reuse.SUFFIX):
                removed.append(source)  # kept for its writer (store/handover_reuse.py): gone as a hand-over
                if len(removed) == 2:
                    die()

        fs.Directory.rename = retire_then_die  # type: ignore[method-assign]
    elif step == "committed":
        lifecycle.after_commit = then_die(lifecycle.after_commit)  # type: ignore[method-assign]
    elif step in ("released", "released-then-merged-by-another"):
        # The lock is free and the directory not yet fsynced (the rename not yet durable): another process may
        # merge in that window, and remove what our file and its own both account for, before we die.
        release = store.transaction.lock.release

        def release_then_die() -> None:
            release()
            if step == "released-then-merged-by-another":
                subprocess.run([sys.executable, __file__, "merge_with_every_participant", directory], check=True,
                               timeout=120)
            die()

        store.transaction.lock.release = release_then_die  # type: ignore[method-assign]
    elif step == "fsynced":
        # The rename is durable, nothing it accounts for removed yet: before the first participant's after-commit.
        first = store.transaction.participants[0]
        first.after_commit = lambda merge: die()  # type: ignore[method-assign]
    else:
        raise SystemExit(f"no step {step}")
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "merger_own")
    store.merge(changes)
    handovers.wait_for_removals()
    sys.exit(3)  # the step was never reached: the parent sees this process was not killed


def merge_with_every_participant(directory: str) -> None:
    """One merge of nothing of its own, with every participant: it applies and removes what is waiting."""
    from fraisier_textfile.sources.fraisier_state import participants
    from fraisier_textfile.store import handovers

    TextfileStore(directory, participants=participants()).merge(Changes())
    handovers.wait_for_removals()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    globals()[sys.argv[1]](*sys.argv[2:])
