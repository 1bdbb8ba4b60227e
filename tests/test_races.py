"""Real processes racing on real files, and killed at random moments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fraisier_textfile import MetricsRecorder, TextfileStore
from fraisier_textfile.store.files import TEMPORARY_PREFIX
from fraisier_textfile.store.markers import MARKER_DIRECTORY

from .processes import fraisier, lock_held_elsewhere, start_store_worker, start_together
from .values import sample_values

WORKERS = Path(__file__).with_name("workers.py")
SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
CRASHED = 'fraisier_deployments_total{provider="docker_compose",status="crashed",fraise_type="backup"}'
ACTIVE = 'fraisier_active_deployments{provider="docker_compose"}'


def start(name: str, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), name, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_parallel_writers_lose_nothing_and_count_nothing_twice(textfile_dir: Path) -> None:
    processes, events = 8, 150
    workers = [start("flush_many", str(textfile_dir), str(events), str(n)) for n in range(processes)]
    start_together(workers)
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[SUCCESS] == processes * events
    assert values['fraisier_deployment_duration_seconds_count{provider="bare_metal",status="success"}'] == (
        processes * events
    )
    assert values['fraisier_deployment_duration_seconds_sum{provider="bare_metal",status="success"}'] == (
        processes * events * 1.5
    )
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'] == (
        processes * (events // 2)
    )
    for n in range(processes):
        assert values[f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="worker_{n}"}}'] == 1


def test_a_hot_loop_without_auto_flush_is_written_at_exit(textfile_dir: Path) -> None:
    worker = start("hot_loop", str(textfile_dir), "500")
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="failed",fraise_type="etl"}'] == 500


def test_writers_killed_at_random_moments_never_corrupt_the_file(textfile_dir: Path) -> None:
    """Hundreds of writers, each a forked process flushing in a loop, SIGKILLed at a random moment."""
    rng = random.Random(20261124)
    store = TextfileStore(textfile_dir)
    key = 'fraisier_rollbacks_total{provider="bare_metal",reason="timeout"}'
    previous = 0.0
    for _ in range(300):
        acknowledgements, acknowledge = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: one byte down the pipe each time a record call has returned
            try:
                os.close(acknowledgements)
                recorder = MetricsRecorder(textfile_dir)
                while True:
                    recorder.record_rollback("bare_metal", "timeout", 3.0)
                    os.write(acknowledge, b".")
            finally:
                os._exit(1)
        os.close(acknowledge)
        time.sleep(rng.uniform(0, 0.03))
        acknowledged = kill_and_count(pid, acknowledgements)
        document = store.read()  # raises if the file does not parse
        block = document.blocks.get("fraisier_rollbacks_total")
        total = (block.value(key) if block else None) or 0.0
        # Every event whose call returned is in the file, plus at most the one being written when killed.
        assert total - previous in (acknowledged, acknowledged + 1)
        previous = total
    assert previous > 0
    # The lock is not stuck and the litter goes: the next writer gets through and cleans up.
    MetricsRecorder(textfile_dir, lock_timeout=5).record_deployment_error("bare_metal", "after")
    assert not [p.name for p in textfile_dir.iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="after"}'] == 1
    assert values[key] >= previous


def test_a_deployment_killed_midway_is_counted_crashed_exactly_once(textfile_dir: Path) -> None:
    worker = start("deploy_forever", str(textfile_dir))
    assert worker.stdout is not None and worker.stdout.readline() == "deploying\n"
    assert sample_values(textfile_dir / "fraisier.prom")[ACTIVE] == 1
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    for _ in range(3):  # several later writers, each its own process: one crash, counted once
        assert (
            fraisier(
                "record", "error", "--provider", "bare_metal", "--error-type", "x", textfile_dir=textfile_dir
            ).returncode
            == 0
        )
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[ACTIVE] == 0
    assert values[CRASHED] == 1
    assert not list((textfile_dir / MARKER_DIRECTORY).iterdir())


def test_a_reused_pid_does_not_keep_a_dead_deployment_alive(textfile_dir: Path) -> None:
    """A marker naming a live PID but another start time is a dead process whose PID was reused."""
    from fraisier_textfile.store import markers as marker_files

    marker = marker_files.create_marker(textfile_dir, "docker_compose", "backup")
    pid, start_time = marker.id.split("-")[:2]
    reused = f"{pid}-{int(start_time) - 1}-feedface"
    os.rename(textfile_dir / MARKER_DIRECTORY / marker.id, textfile_dir / MARKER_DIRECTORY / reused)
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "unrelated")
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[CRASHED] == 1
    assert values[ACTIVE] == 0


def test_events_pending_at_a_fork_are_written_once(textfile_dir: Path) -> None:
    worker = start("fork_with_pending", str(textfile_dir))
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert errors == ""
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="before_fork"}'] == 1
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="in_child"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0


def test_an_auto_flush_that_failed_is_retried_at_exit(textfile_dir: Path) -> None:
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "seed")
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        worker = start("fail_then_exit", str(textfile_dir))
        assert worker.stdout is not None and worker.stdout.readline() == "failed\n"
    _, errors = worker.communicate("exit\n", timeout=60)
    assert worker.returncode == 0, errors
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="while_locked"}'] == 1


def _plant_marker(textfile_dir: Path, marker_id: str, **context: str) -> None:
    import json

    directory = textfile_dir / MARKER_DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    content = {"provider": "docker_compose", "fraise_type": "backup", **context}
    (directory / marker_id).write_text(json.dumps(content))


def test_a_marker_from_before_a_reboot_is_a_crash(textfile_dir: Path) -> None:
    """Same PID and start time as a live process, but written under another boot id: that process is gone."""
    from fraisier_textfile.store import markers as marker_files

    live = marker_files.create_marker(textfile_dir, "docker_compose", "backup")
    (textfile_dir / MARKER_DIRECTORY / live.id).unlink()
    _plant_marker(textfile_dir, live.id, boot="another-boot", pid_namespace=live.pid_namespace)
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "unrelated")
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[CRASHED] == 1
    assert values[ACTIVE] == 0


def test_a_marker_from_another_pid_namespace_is_never_counted_crashed(textfile_dir: Path) -> None:
    """A PID from another namespace (a container) cannot be checked from here: it stays active."""
    from fraisier_textfile.store import markers as marker_files

    own = marker_files.create_marker(textfile_dir, "docker_compose", "backup")
    (textfile_dir / MARKER_DIRECTORY / own.id).unlink()
    _plant_marker(textfile_dir, "999999999-1-feedface", boot=own.boot, pid_namespace="pid:[1]")
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "unrelated")
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values.get(CRASHED, 0) == 0
    assert values[ACTIVE] == 1


def test_a_marker_already_accounted_for_is_not_counted_again(textfile_dir: Path) -> None:
    """A merger killed between writing the file and removing a dead marker: the file lists the marker as
    retired, so the next merger removes it without counting it a second time."""
    worker = start("deploy_forever", str(textfile_dir))
    assert worker.stdout is not None and worker.stdout.readline() == "deploying\n"
    worker.kill()
    worker.wait()
    [marker] = list((textfile_dir / MARKER_DIRECTORY).iterdir())
    saved = marker.read_bytes()
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "first")
    assert sample_values(textfile_dir / "fraisier.prom")[CRASHED] == 1
    assert marker.name in (textfile_dir / "fraisier.prom").read_text()  # listed as retired
    marker.write_bytes(saved)  # as if the merger had died before removing it
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "second")
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[CRASHED] == 1
    assert not marker.exists()
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "third")
    assert marker.name not in (textfile_dir / "fraisier.prom").read_text()  # the list forgets it once gone


def errors_of(textfile_dir: Path, error_type: str) -> float:
    key = f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{error_type}"}}'
    return sample_values(textfile_dir / "fraisier.prom").get(key, 0)


def test_a_lock_file_removed_while_held_loses_no_event(textfile_dir: Path) -> None:
    """A merger holds the lock, mid-merge; another waits for it; a cleaner removes the lock file; a third
    process locks a new one and merges. The first must not then replace the file with its older merge, and the
    waiter must not merge beside whoever holds the new lock."""
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "seed")
    holder = start_store_worker("merge_paused_before_rename", str(textfile_dir), "holder")
    assert holder.stdout is not None and holder.stdout.readline() == "paused\n"
    waiter = start_store_worker("merge_one", str(textfile_dir), "waiter")
    assert waiter.stdout is not None and waiter.stdout.readline() == "waiting\n"
    subprocess.run(["rm", str(textfile_dir / "fraisier.prom.lock")], check=True)
    later = fraisier("record", "error", "--provider", "bare_metal", "--error-type", "later", textfile_dir=textfile_dir)
    assert later.returncode == 0, later.stderr
    assert errors_of(textfile_dir, "later") == 1
    output, errors = holder.communicate("go on\n", timeout=60)
    assert output == "merged\n", errors
    _, errors = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, errors
    assert [errors_of(textfile_dir, name) for name in ("seed", "holder", "waiter", "later")] == [1, 1, 1, 1]


def test_alarms_raising_inside_flushes_never_count_an_event_twice_or_lose_one(textfile_dir: Path) -> None:
    """SIGALRM every 0.3 ms, its handler raising wherever it lands in a merge; then a last merge, as at exit.
    Also with a second thread running, which the kernel may hand the signal to."""
    total = 0
    for threaded in ("0", "1"):
        worker = start_store_worker("flush_under_alarms", str(textfile_dir), "400", threaded)
        output, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
        recorded, interrupted = map(int, output.split())
        assert interrupted > 0  # the alarms did land inside merges
        total += recorded
        assert errors_of(textfile_dir, "alarmed") == total


def test_a_sigterm_handler_raising_inside_a_flush_never_counts_an_event_twice(textfile_dir: Path) -> None:
    """A SIGTERM handler raises SystemExit wherever it lands in a flush; the exit flush writes what is pending."""
    rng = random.Random(20261125)
    total = 0
    for _ in range(20):
        worker = start_store_worker("flush_until_terminated", str(textfile_dir))
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.1))
        worker.send_signal(signal.SIGTERM)
        output, errors = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors
        total += int(output)
        assert errors_of(textfile_dir, "terminated") == total


def test_ctrl_c_still_interrupts_a_wait_for_the_lock(textfile_dir: Path) -> None:
    """Signal handlers are held back during a merge, but not while it waits for the lock: Ctrl-C ends a wait
    at once instead of after the lock timeout (two minutes here)."""
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "seed")
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        worker = start_store_worker("wait_for_the_lock", str(textfile_dir))
        # The worker says "waiting" from inside the wait for the lock, once a try found it busy.
        assert worker.stdout is not None and worker.stdout.readline() == "waiting\n"
        worker.send_signal(signal.SIGINT)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGINT  # how Python exits on an uncaught KeyboardInterrupt
    assert errors.splitlines()[-1] == "KeyboardInterrupt"
    assert errors_of(textfile_dir, "interrupted") == 0


def test_racing_writers_killed_while_their_background_threads_merge_hand_overs_count_each_event_once(
    textfile_dir: Path,
) -> None:
    """A record call that hands over returns once its events are durably handed over; its process's background
    thread then tries the lock and merges every hand-over waiting. Writers racing (so that most calls hand over)
    are SIGKILLed at random moments: between a call's return and its thread's try, during that thread's merge, in
    the middle of a hand-over. After one more merge, each writer's events are counted exactly as many times as
    its calls returned, or once more for the one under way when it was killed."""
    rng = random.Random(20261206)
    writers: dict[str, int] = {}
    for round_ in range(12):
        running = []
        for number in range(4):
            name = f"w{round_}_{number}"
            acknowledgements, acknowledge = os.pipe()
            pid = os.fork()
            if pid == 0:  # one byte down the pipe each time a record call has returned
                try:
                    os.close(acknowledgements)
                    recorder = MetricsRecorder(textfile_dir)
                    while True:
                        recorder.record_deployment_error("bare_metal", name)
                        os.write(acknowledge, b".")
                finally:
                    os._exit(1)
            os.close(acknowledge)
            running.append((name, pid, acknowledgements))
        time.sleep(rng.uniform(0.05, 0.4))
        for name, pid, acknowledgements in running:
            writers[name] = kill_and_count(pid, acknowledgements)
    TextfileStore(textfile_dir).merge_backlog()
    values = sample_values(textfile_dir / "fraisier.prom")
    counted = {name: values.get(f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{name}"}}', 0)
               for name in writers}
    assert all(counted[name] - acknowledged in (0, 1) for name, acknowledged in writers.items()), (counted, writers)
    assert sum(writers.values()) > 100
    # The writers raced: calls handed over (the counter numbers every hand-over written).
    assert int((textfile_dir / ".fraisier-handover" / "sequence").read_text().split()[0]) > 10


def kill_and_count(pid: int, acknowledgements: int) -> int:
    """SIGKILL the writer ``pid``; return how many of its record calls returned (the bytes it wrote down the pipe
    whose reading end is ``acknowledgements``, closed here)."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    acknowledged = 0
    while chunk := os.read(acknowledgements, 65536):
        acknowledged += len(chunk)
    os.close(acknowledgements)
    return acknowledged
