"""Hand-overs: events a process could not merge because the lock was busy are written by the next merge of any
process, exactly once, whatever is killed when."""

from __future__ import annotations

import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store import fs, handover_order, handovers
from fraisier_textfile.store.handovers import HANDOVERS_PER_MERGE
from fraisier_textfile.store.textfile import TextfileStore as StoreOfASchema

from .processes import binary, fraisier, lock_held_elsewhere, require, start_store_worker, start_together
from .stores import handovers_left
from .test_markers import markers_in
from .values import sample_values


def handover_files(textfile_dir: Path) -> list[str]:
    """The files in the hand-over directory but its counter and the spent hand-overs (stores.handovers_left)."""
    return handovers_left(textfile_dir)


def error_count(values: dict[str, float], error_type: str) -> float:
    return values.get(f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{error_type}"}}', 0)


def every_kind_of_change() -> Changes:
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 42.0, now=1700000000.5)
    events.deployment_error(changes, "docker_compose", 'quote"and\\backslash')
    events.health_check(changes, "bare_metal", "http", "fail", 0.25)
    events.provider_availability(changes, "bare_metal", False)
    events.lock_wait(changes, "web", "bare_metal", 0.125)
    changes.active_providers.add("docker_compose")
    changes.retired_markers.add("123-456-abcdef")
    return changes


def as_plain(changes: Changes) -> dict[str, object]:
    return {
        "added": {(f.name, labels): v for (f, labels), v in changes.added.items()},
        "observed": {(f.name, labels): (d.buckets, d.sum, d.count) for (f, labels), d in changes.observed.items()},
        "latest": {(f.name, labels): v for (f, labels), v in changes.latest.items()},
        "maximum": {(f.name, labels): v for (f, labels), v in changes.maximum.items()},
        "active_providers": changes.active_providers,
        "retired_markers": changes.retired_markers,
    }


def test_a_hand_over_holds_every_field_of_the_changes() -> None:
    public = {name for name in vars(Changes()) if not name.startswith("_")}
    assert public == set(handovers.FIELDS), "a field of Changes is not handed over: add it to handovers.py"
    changes = every_kind_of_change()
    assert as_plain(handovers.decode(handovers.encode(changes, SCHEMA), SCHEMA)) == as_plain(changes)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"{not json", "not a hand-over this version can read"),
        (b'{"version": 0}', "format version 0"),
        (b'{"version": 1, "added": [["no_such_family", [], 1]], "observed": [], "latest": [], "maximum": [],'
         b' "active_providers": [], "retired_markers": []}', "no_such_family is not in this store's schema"),
        (b'{"version": 1, "added": [["fraisier_deployment_errors_total", ["p", "e"], NaN]], "observed": [],'
         b' "latest": [], "maximum": [], "active_providers": [], "retired_markers": []}', "the value nan"),
        # JSON integers have no bound: one past the largest float cannot even be converted to one.
        (b'{"version": 1, "added": [["fraisier_deployment_errors_total", ["p", "e"], 1' + b"0" * 400 + b']],'
         b' "observed": [], "latest": [], "maximum": [], "active_providers": [], "retired_markers": []}',
         "not a finite number >= 0"),
        (b'{"version": 1, "added": [], "observed": [["fraisier_rollback_duration_seconds", ["p"], [1' + b"0" * 400
         + b', 0, 0, 0, 0, 0, 0, 0, 0], 1.0, 1' + b"0" * 400 + b']], "latest": [], "maximum": [],'
         b' "active_providers": [], "retired_markers": []}', "not a finite number >= 0"),
        (b"[" * 100_000, "RecursionError"),  # json's decoder recurses: a deep enough nesting exhausts the stack
    ],
    ids=["corrupt", "other-format", "unknown-family", "not-a-number", "huge-integer", "huge-bucket", "deep"],
)
def test_a_hand_over_this_version_cannot_read_is_set_aside_and_the_rest_applied(
    textfile_dir: Path, data: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = TextfileStore(textfile_dir)
    good = Changes()
    events.deployment_error(good, "bare_metal", "good")
    store.hand_over(good)
    bad = textfile_dir / handovers.HANDOVER_DIRECTORY / "00000000000000000001-1-bad.json"
    bad.write_bytes(data)
    store.merge(Changes())
    assert error_count(sample_values(store.path), "good") == 1
    assert problem in caplog.text
    assert not bad.exists()
    assert bad.with_name("00000000000000000001-1-bad.unreadable").read_bytes() == data


def test_hand_over_empties_the_changes_and_the_next_merge_writes_them_once(textfile_dir: Path) -> None:
    from fraisier_textfile.store import markers as marker_files

    store = TextfileStore(textfile_dir)
    marker = marker_files.create_marker(textfile_dir, "docker_compose", "backup")  # ended by the handed-over changes
    changes = every_kind_of_change()
    changes.retired_markers.add(marker.id)
    store.hand_over(changes)
    assert not changes
    assert not store.path.exists()
    [name] = handover_files(textfile_dir)
    assert not name.endswith(".prom")
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0  # another process
    values = sample_values(store.path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    escaped = 'error_type="quote\\"and\\\\backslash"'
    assert values[f'fraisier_deployment_errors_total{{provider="docker_compose",{escaped}}}'] == 1
    assert values['fraisier_health_check_duration_seconds_sum{provider="bare_metal",check_type="http"}'] == 0.25
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == 0
    assert values['fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'] == 0.125
    key = 'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}'
    assert values[key] == 1700000000.5
    assert values['fraisier_active_deployments{provider="docker_compose"}'] == 0  # the marker's deployment ended
    assert markers_in(textfile_dir) == []
    assert handover_files(textfile_dir) == []
    assert f"# fraisier_textfile {handovers.APPLIED.key}: {name[:-5]}\n" in store.path.read_text()
    store.merge(Changes())
    assert sample_values(store.path) == values
    assert handovers.APPLIED.key not in store.path.read_text()  # the list forgets hand-overs once deleted


def test_calls_under_a_held_lock_hand_over_and_the_next_merge_writes_each_once(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    calls = 20
    with lock_held_elsewhere(store.lock_path):
        for number in range(calls):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", f"held_{number}")
            assert store.merge_or_hand_over(changes, wait=0.01) is False
            assert not changes
        assert len(handover_files(textfile_dir)) == calls
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(store.path)
    assert [error_count(values, f"held_{number}") for number in range(calls)] == [1] * calls
    for _ in range(2):
        TextfileStore(textfile_dir).merge(Changes())
    assert sample_values(store.path) == values


def test_events_handed_over_survive_the_process_killed_after_its_calls_returned(textfile_dir: Path) -> None:
    TextfileStore(textfile_dir).merge(Changes())
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        worker = start_store_worker("hand_over_then_wait", str(textfile_dir), "5")
        assert worker.stdout is not None
        assert [worker.stdout.readline() for _ in range(5)] == ["handed over\n"] * 5
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert [error_count(values, f"handed_{number}") for number in range(5)] == [1] * 5


def test_events_pending_at_an_exit_under_a_held_lock_are_handed_over(textfile_dir: Path) -> None:
    TextfileStore(textfile_dir).merge(Changes())
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        worker = start_store_worker("exit_with_pending", str(textfile_dir))
        _, errors = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors
        assert error_count(sample_values(textfile_dir / "fraisier.prom"), "at_exit") == 0
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    assert error_count(sample_values(textfile_dir / "fraisier.prom"), "at_exit") == 1


def test_the_holder_writes_a_hand_over_that_arrived_while_it_held_the_lock(textfile_dir: Path) -> None:
    """The hand-over's own try of the lock fails; the holder looks for hand-overs after releasing it."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    holder = start_store_worker("hold_then_release", str(textfile_dir))
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "late")
    assert store.merge_or_hand_over(changes, wait=0.01) is False
    assert error_count(sample_values(store.path), "late") == 0
    output, errors = holder.communicate("release\n", timeout=60)
    assert output == "released\n", errors
    assert error_count(sample_values(store.path), "late") == 1  # written by the holder, nobody merged since
    assert handover_files(textfile_dir) == []


def test_mergers_and_hand_overs_killed_at_random_moments_never_count_twice(textfile_dir: Path) -> None:
    """Processes hand over events, each with its own series, while mergers are SIGKILLed at random moments:
    every series is at most 1 after each kill, and exactly 1 once a merger finishes."""
    rng = random.Random(20261125)
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    handed_over = previously_applied = applied_by_killed_mergers = 0
    started = time.monotonic()
    if os.fork() == 0:
        try:
            TextfileStore(textfile_dir).merge(Changes())
        finally:
            os._exit(0)
    os.wait()
    lifetime = time.monotonic() - started  # how long a merger lives: the kills land anywhere in it
    for _ in range(150):
        for _ in range(rng.randint(0, 3)):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", f"event_{handed_over}")
            store.hand_over(changes)
            handed_over += 1
        pid = os.fork()
        if pid == 0:
            try:
                TextfileStore(textfile_dir).merge(Changes())
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, lifetime))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        values = sample_values(store.path)
        counts = [error_count(values, f"event_{number}") for number in range(handed_over)]
        assert set(counts) <= {0, 1}, [n for n, count in enumerate(counts) if count > 1]
        applied_by_killed_mergers += counts.count(1) > previously_applied
        previously_applied = counts.count(1)
    store.merge(Changes())
    values = sample_values(store.path)
    assert [error_count(values, f"event_{number}") for number in range(handed_over)] == [1] * handed_over
    assert handovers.wait_for_removals()  # more than INLINE_REMOVALS are deleted by the background thread
    assert handover_files(textfile_dir) == []
    store.merge(Changes())
    assert handovers.APPLIED.key not in store.path.read_text()
    assert applied_by_killed_mergers > 0  # the kills did land at every stage, not only before the merges began


@pytest.mark.slow
def test_sixteen_processes_merging_or_handing_over_lose_nothing_and_count_nothing_twice(textfile_dir: Path) -> None:
    processes, count = 16, 200
    TextfileStore(textfile_dir).merge(Changes())
    workers = [start_store_worker("race", str(textfile_dir), str(count), str(n), "0.01") for n in range(processes)]
    start_together(workers)
    handed_over = 0
    for worker in workers:
        output, errors = worker.communicate(timeout=600)
        assert worker.returncode == 0, errors  # no lock timeout, no error of any kind
        handed_over += int(output)
    TextfileStore(textfile_dir).merge(Changes())  # nothing should be left, but make sure
    values = sample_values(textfile_dir / "fraisier.prom")
    total = processes * count
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == total
    duration = 'fraisier_deployment_duration_seconds_{}{{provider="bare_metal",status="success"}}'
    assert values[duration.format("count")] == total
    assert values[duration.format("sum")] == total * 1.5
    assert values['fraisier_health_checks_total{provider="bare_metal",check_type="http",status="pass"}'] == total
    assert [error_count(values, f"worker_{n}") for n in range(processes)] == [1] * processes
    print(f"{handed_over} of {total} calls handed over")


def test_changes_are_summed_across_hand_overs_in_order(textfile_dir: Path) -> None:
    """Gauges: the latest hand-over's value wins; counters and histograms: summed."""
    store = TextfileStore(textfile_dir)
    for available, wait in ((True, 3.0), (False, 1.0)):
        changes = Changes()
        events.provider_availability(changes, "bare_metal", available)
        events.lock_wait(changes, "web", "bare_metal", wait)
        events.rollback(changes, "bare_metal", "manual", 10.0)
        store.hand_over(changes)
    store.merge(Changes())
    values = sample_values(store.path)
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == 0
    assert values['fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'] == 1.0
    assert values['fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'] == 2
    assert values[f'{c.ROLLBACK_DURATION.name}_sum{{provider="bare_metal"}}'] == 20


@pytest.mark.parametrize("textfile_mode", [0o755, 0o2775])
def test_the_hand_over_directory_is_shared_by_the_group_whatever_the_umask(
    textfile_dir: Path, textfile_mode: int
) -> None:
    """Writers of one group hand over, a merger of another user of it deletes what it applied."""
    textfile_dir.mkdir()
    textfile_dir.chmod(textfile_mode)
    previous = os.umask(0o077)
    try:
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "shared")
        TextfileStore(textfile_dir).hand_over(changes)
    finally:
        os.umask(previous)
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    assert stat.S_IMODE(directory.stat().st_mode) == 0o775 | (textfile_mode & stat.S_ISGID)
    [handed_over] = handover_files(textfile_dir)
    assert stat.S_IMODE((directory / handed_over).stat().st_mode) == 0o644
    # The counter that orders hand-overs is shared by the group too.
    assert stat.S_IMODE((directory / handovers.SEQUENCE_FILE).stat().st_mode) == 0o664


def test_many_applied_hand_overs_are_deleted_in_the_background_and_stay_listed_until_they_are_gone(
    textfile_dir: Path,
) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    count = handovers.INLINE_REMOVALS * 3
    with lock_held_elsewhere(store.lock_path):
        for number in range(count):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", f"many_{number}")
            assert store.merge_or_hand_over(changes, wait=0.01) is False
    store.merge(Changes())
    # Listed as applied by the file that holds them, whether or not the thread has deleted them yet.
    listed = store.path.read_text().split(f"# fraisier_textfile {handovers.APPLIED.key}: ")[1].split("\n")[0]
    assert len(listed.split()) == count
    assert handovers.wait_for_removals()
    assert handover_files(textfile_dir) == []
    values = sample_values(store.path)
    assert [error_count(values, f"many_{number}") for number in range(count)] == [1] * count
    store.merge(Changes())
    assert handovers.APPLIED.key not in store.path.read_text()
    assert sample_values(store.path) == values


def test_hand_overs_each_summable_but_not_together_are_applied_up_to_the_one_that_cannot_be(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each hand-over fits the file alone, but their total overflows to +Inf: the one that tips it over is set
    aside, not every merge of every process failed from then on."""
    store = TextfileStore(textfile_dir)
    huge = 1e308
    for _ in range(2):
        changes = Changes()
        changes.observe(c.ROLLBACK_DURATION, ("bare_metal",), huge)
        store.hand_over(changes)
    mine = Changes()
    events.deployment_error(mine, "bare_metal", "mine")
    store.merge(mine)  # applies the first hand-over, sets the second aside
    values = sample_values(store.path)
    assert error_count(values, "mine") == 1
    assert values['fraisier_rollback_duration_seconds_sum{provider="bare_metal"}'] == huge
    assert values['fraisier_rollback_duration_seconds_count{provider="bare_metal"}'] == 1
    assert "would make it +Inf" in caplog.text
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    assert handovers.wait_for_removals()
    assert [name.endswith(".unreadable") for name in handover_files(textfile_dir)] == [True]
    assert directory.is_dir()


@pytest.mark.parametrize("name", ["copy of 1.json", "line\nbreak.json", "tab\there.json"])
def test_a_hand_over_named_so_that_the_applied_list_cannot_hold_it_is_set_aside(
    textfile_dir: Path, name: str
) -> None:
    """The file lists applied hand-overs by id, space-separated on one line: an id with a blank would be read
    back as two ids (and applied again if its deletion is late), one with a newline could not be written."""
    store = TextfileStore(textfile_dir)
    good = Changes()
    events.deployment_error(good, "bare_metal", "odd")
    data = handovers.encode(good, SCHEMA)
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir(parents=True)
    (directory / name).write_bytes(data)
    store.merge(Changes())
    store.merge(Changes())
    assert error_count(sample_values(store.path), "odd") == 0
    assert os.listdir(directory) == [name[: -len(".json")] + ".unreadable"]


REPORT = """
import sys
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
changes = Changes()
events.provider_availability(changes, "bare_metal", sys.argv[2] == "up")
events.lock_wait(changes, "web", "bare_metal", float(sys.argv[3]))
assert TextfileStore(sys.argv[1]).merge_or_hand_over(changes, wait=0.01) is False
"""


def test_after_the_clock_is_stepped_back_the_later_report_still_wins_the_latest_gauges(textfile_dir: Path) -> None:
    """Bug: hand-overs were applied in the wall-clock order of their ids, so a report handed over after the
    clock was stepped back (NTP, a restored VM) sorted first and the older one won the latest gauges."""
    faketime = binary("faketime")
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path):
        earlier = subprocess.run([sys.executable, "-c", REPORT, str(textfile_dir), "down", "7"],
                                 capture_output=True, text=True, timeout=60)
        assert earlier.returncode == 0, earlier.stderr
        later = subprocess.run([faketime, "-f", "-1d", sys.executable, "-c", REPORT, str(textfile_dir), "up", "2"],
                               capture_output=True, text=True, timeout=60)
        assert later.returncode == 0, later.stderr
        assert len(handover_files(textfile_dir)) == 2
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(store.path)
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == 1
    assert values['fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'] == 2


def _hand_over_directly(textfile_dir: Path, count: int, last: Changes) -> None:
    """``count`` hand-overs of one error each, as processes write them while the lock is held; ``last`` is
    added to the newest."""
    textfile = fs.open_directory(textfile_dir, create=True)
    assert textfile is not None
    with textfile, handovers.open_directory(textfile, create=True) as directory:  # type: ignore[union-attr]
        for number in range(count):
            changes = Changes()
            events.deployment_error(changes, "bare_metal", "held")
            if number == count - 1:
                changes.latest.update(last.latest)
            temporary, final, descriptor = handovers.write(directory, changes, SCHEMA)
            handovers.publish(directory, temporary, final, descriptor, durable=False)


@pytest.mark.slow
def test_a_record_call_after_a_long_lock_hold_applies_a_bounded_share_of_the_backlog_and_refresh_the_rest(
    textfile_dir: Path,
) -> None:
    """Bug: the first record call after a long lock hold applied the whole backlog inline (15,000 hand-overs:
    1.35 s with a 0.1 s wait budget). A merge now applies at most HANDOVERS_PER_MERGE, oldest first; the rest
    waits for the following merges, each applied once."""
    backlog = 15_000
    TextfileStore(textfile_dir).merge(Changes())
    stale = Changes()
    events.provider_availability(stale, "bare_metal", False)
    _hand_over_directly(textfile_dir, backlog, stale)
    mine = Changes()
    events.deployment_error(mine, "bare_metal", "mine")
    events.provider_availability(mine, "bare_metal", True)  # reported after every hand-over waiting
    store = TextfileStore(textfile_dir)
    store.merge_or_hand_over(mine, wait=0.1)
    assert not mine
    values = sample_values(store.path)
    assert error_count(values, "mine") == 1
    applied = error_count(values, "held")
    assert HANDOVERS_PER_MERGE <= applied < backlog / 4, applied
    assert handovers.wait_for_removals(60)
    # Neither lost nor doubled so far: what is not in the file is still waiting (with the latest gauge behind).
    assert len(handover_files(textfile_dir)) == backlog - applied + 1
    assert values[handovers.PENDING_FAMILY] >= backlog - applied  # the hand-overs the last merge left
    assert store.handovers_waiting()
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir, timeout=600).returncode == 0
    values = sample_values(store.path)
    assert error_count(values, "held") == backlog
    assert error_count(values, "mine") == 1
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == 1
    assert values[handovers.PENDING_FAMILY] == 0
    assert handover_files(textfile_dir) == []


def test_hand_overs_pile_up_to_a_bound_while_merges_fail_then_drain_once_they_succeed(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every merge fails (here a corrupt file), hand-overs pile up to PENDING_LIMIT; past it a hand-over
    is refused with one line and the caller keeps its events; once merges succeed they drain and it goes on."""
    monkeypatch.setattr(handover_order, "PENDING_LIMIT", 5)
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    good = store.path.read_bytes()
    store.path.write_text("not the text format\n")
    for number in range(5):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"held_{number}")
        store.hand_over(changes)
        with pytest.raises(CorruptTextfileError):
            store.merge(Changes())
    refused = Changes()
    events.deployment_error(refused, "bare_metal", "refused")
    with pytest.raises(handovers.TooManyWaiting, match=r"^5 hand-overs wait unapplied in .*\.fraisier-handover"):
        store.hand_over(refused)
    assert refused  # kept by its caller
    assert len(handover_files(textfile_dir)) == 5
    store.path.write_bytes(good)  # the operator's fix
    store.merge(Changes())
    store.hand_over(refused)
    store.merge(Changes())
    values = sample_values(store.path)
    assert [error_count(values, f"held_{number}") for number in range(5)] == [1] * 5
    assert error_count(values, "refused") == 1
    assert values[handovers.PENDING_FAMILY] == 0


@pytest.mark.parametrize("plant", ["garbage", "huge", "symlink", "fifo", "directory", "held"])
def test_a_planted_or_held_counter_never_fails_or_hangs_a_hand_over(
    textfile_dir: Path, tmp_path: Path, plant: str
) -> None:
    """The counter that orders hand-overs is a writer's to spoil (trusted with the metrics, not with stopping
    a deployment): whatever is there, a hand-over is written, promptly, and applied once."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    counter = directory / handovers.SEQUENCE_FILE
    secret = tmp_path / "secret"
    secret.write_text("root's\n")
    holder = None
    if plant == "garbage":
        counter.write_bytes(b"\xff-12 x\n")
    elif plant == "huge":
        counter.write_text("9" * 40 + " 0\n")
    elif plant == "symlink":
        counter.symlink_to(secret)
    elif plant == "fifo":
        os.mkfifo(counter)
    elif plant == "directory":
        counter.mkdir()
    else:
        counter.write_text("7 7\n")
        holder = subprocess.Popen(["flock", str(counter), "sleep", "600"])
        while not subprocess.run(["flock", "-n", str(counter), "true"]).returncode:
            time.sleep(0.01)
    try:
        changes = Changes()
        events.deployment_error(changes, "bare_metal", "spoiled")
        store.hand_over(changes)
        assert not changes
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    store.merge(Changes())
    assert error_count(sample_values(store.path), "spoiled") == 1
    if plant in ("symlink", "fifo", "directory"):
        # Bug: a counter that is not a regular file made every merge fail until removed by hand. The merge moves it
        # aside, never through it, and the next hand-over makes a new counter that numbers again.
        [aside] = directory.glob(f"{handovers.SEQUENCE_FILE}-*{handovers.SET_ASIDE_SUFFIX}")
        assert aside.is_symlink() if plant == "symlink" else not aside.is_file()
        assert not os.path.lexists(counter)
        later = Changes()
        events.deployment_error(later, "bare_metal", "later")
        with lock_held_elsewhere(store.lock_path):
            store.hand_over(later)
        assert counter.is_file() and not counter.is_symlink()
        store.merge(Changes())
        assert error_count(sample_values(store.path), "later") == 1
    assert secret.read_text() == "root's\n"


@pytest.mark.parametrize("spoil", ["hard link", "root's, unreadable to its writers"])
def test_a_counter_writers_refuse_is_moved_aside_and_hand_overs_are_numbered_again(
    textfile_dir: Path, tmp_path: Path, spoil: str
) -> None:
    """Bug: a snapshot of the textfile directory by hard links (``cp -al``) gave the hand-overs' counter a
    second name, which writers rightly refuse to write (it would change the snapshot), and the merge left it there:
    every later hand-over was numbered 0, for ever, and their order (which report of a gauge is the latest) was
    lost. The same for root's writers and a counter of root's that the directory's other writers may not read (one
    of them may have moved it there). The merge moves it aside as it moves a counter that is not a regular file;
    the snapshot is untouched."""
    if spoil != "hard link":
        require(os.geteuid() == 0, "a counter of root's refused by root's writers: run it as root (CI does)")
    store = TextfileStore(textfile_dir)
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY

    def hand_over(label: str) -> int | None:
        before = set(directory.glob(f"*{handovers.SUFFIX}"))
        changes = Changes()
        events.deployment_error(changes, "bare_metal", label)
        with lock_held_elsewhere(store.lock_path):
            store.hand_over(changes)
        [written] = set(directory.glob(f"*{handovers.SUFFIX}")) - before
        return handover_order.sequence_of(written.name[: -len(handovers.SUFFIX)])

    assert hand_over("first") == 1
    counter = directory / handovers.SEQUENCE_FILE
    snapshot = tmp_path / "snapshot-sequence"
    if spoil == "hard link":
        os.link(counter, snapshot)
    else:
        assert directory.stat().st_mode & stat.S_IWGRP  # shared by a group, as the store makes it
        counter.chmod(0o600)
    kept = counter.read_bytes()
    assert hand_over("linked") == 0  # refused by the writer, as before
    store.merge(Changes())
    [aside] = directory.glob(f"{handovers.SEQUENCE_FILE}-*{handovers.SET_ASIDE_SUFFIX}")
    assert aside.samefile(snapshot) if spoil == "hard link" else stat.S_IMODE(aside.stat().st_mode) == 0o600
    later = hand_over("later")
    assert later is not None and later > 0  # numbered again by a new counter (those before it are all applied)
    assert hand_over("latest") == later + 1
    store.merge(Changes())
    values = sample_values(store.path)
    assert [error_count(values, label) for label in ("first", "linked", "later", "latest")] == [1, 1, 1, 1]
    assert aside.read_bytes() == kept  # moved aside whole, never written (the snapshot's bytes, for a hard link)


def test_two_stores_of_different_schemas_on_one_directory_leave_each_other_their_hand_overs(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug: a store of another schema (an application's families beside Fraisier's) merging the directory set
    the Fraisier store's hand-overs aside as unreadable, and the Fraisier store set aside the application's:
    their events were never counted. Each now leaves the other's for it."""
    jobs = Family("app_jobs_total", Kind.COUNTER, ("kind",), "Jobs run.")
    application = StoreOfASchema(textfile_dir, schema=Schema([jobs]))
    fraisier = TextfileStore(textfile_dir)
    for _ in range(2):
        ours = Changes()
        events.deployment_error(ours, "bare_metal", "handed")
        fraisier.hand_over(ours)
        theirs = Changes()
        theirs.add(jobs, ("backup",), 1)
        application.hand_over(theirs)
        with caplog.at_level(logging.INFO):
            application.merge(Changes())
            fraisier.merge(Changes())
            application.merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert error_count(values, "handed") == 2
    assert values['app_jobs_total{kind="backup"}'] == 2
    assert values.get("fraisier_textfile_handovers_set_aside", 0) == 0
    assert handovers_left(textfile_dir) == []
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_an_empty_hand_over_is_the_litter_of_a_power_loss_and_goes_without_an_error(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-over is renamed into place whole (written before the rename) and fsynced after it: only a power loss
    before that fsync, whose call never returned, can leave its name with no bytes. Such a file holds no events:
    it is removed, not set aside with an error as a corrupt one would be."""
    store = TextfileStore(textfile_dir)
    good = Changes()
    events.deployment_error(good, "bare_metal", "good")
    store.hand_over(good)
    empty = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.id_for(7)}.json"
    empty.write_bytes(b"")
    with caplog.at_level(logging.INFO):
        store.merge(Changes())
    assert handovers.wait_for_removals()
    assert error_count(sample_values(store.path), "good") == 1
    assert handover_files(textfile_dir) == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert sample_values(store.path).get(handovers.SET_ASIDE_FAMILY, 0) == 0


KILLED_AT_ITS_FSYNC = """
import os, signal, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes

fsync = os.fsync

def killed(descriptor):
    if os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)  # the hand-over's own fsync: after its rename, before the return
    fsync(descriptor)

os.fsync = killed
changes = Changes()
events.deployment_error(changes, "bare_metal", "killed")
TextfileStore(sys.argv[1]).hand_over(changes)
print("returned", flush=True)
"""


def test_a_writer_killed_at_its_hand_overs_fsync_has_handed_over_whole(textfile_dir: Path) -> None:
    """The hand-over is renamed into place before its fsyncs (on ext4 the file's fsync then commits the rename
    too, and the directory's has nothing left to wait for): a writer SIGKILLed at that fsync, its call not
    returned, leaves a whole hand-over, applied once by the next merge."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_ITS_FSYNC, str(textfile_dir)], capture_output=True,
                            text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""
    store.merge(Changes())
    store.merge(Changes())
    assert error_count(sample_values(store.path), "killed") == 1


def test_a_merge_that_finds_no_hand_over_leaves_its_directorys_fsync_to_another_thread_as_without_hand_overs(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over directory stays once made (one busy lock makes it): a merge that finds no hand-over in it
    removes nothing after its commit, so its caller does not wait for the directory's fsync, as on a host that never
    handed over. Moving the hand-over counter on after it (note_merged) needs no durable rename: the counter is a
    hint, never fsynced, and the hand-overs stay until a merge applies them."""
    import threading

    from fraisier_textfile.store import process

    store = TextfileStore(textfile_dir)
    handed = Changes()
    events.deployment_error(handed, "bare_metal", "timeout")
    store.hand_over(handed)
    store.merge(Changes())  # applies it, then removes it
    assert process.wait_for_syncs(10) and handover_files(textfile_dir) == []
    let_the_fsync_go = threading.Event()
    fsync = os.fsync

    def held_fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            let_the_fsync_go.wait(10 if threading.current_thread() is not threading.main_thread() else 0)
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", held_fsync)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    try:
        store.merge(changes)
        owed = len(process.syncing)
    finally:
        let_the_fsync_go.set()
    assert process.wait_for_syncs(10)
    assert owed == 1  # 0: the caller made the fsync, and waited for it
    assert error_count(sample_values(store.path), "timeout") == 2


def test_a_durable_hand_over_fsyncs_the_file_it_wrote_even_if_its_name_is_taken_over_at_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug: a hand-over was closed once written and opened again by its name after the rename, to fsync it. A
    writer of the shared directory that put something else at that name in between (here a FIFO) made the call
    fsync nothing of its own, and log that it could not; the look by name also cost four system calls per
    hand-over. The descriptor it wrote with is now kept for the fsync."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    written: list[int] = []
    synced: list[int] = []
    real_rename, real_fsync = fs.Directory.rename, os.fsync

    def rename_then_taken_over(self: fs.Directory, source: str, target: str) -> None:
        written.append(self.lstat(source).st_ino)  # type: ignore[union-attr]
        real_rename(self, source, target)
        if target.endswith(handovers.SUFFIX):  # another writer of the directory takes the name over
            os.unlink(target, dir_fd=self.descriptor)
            os.mkfifo(target, dir_fd=self.descriptor)

    def noted_fsync(descriptor: int) -> None:
        synced.append(os.fstat(descriptor).st_ino)
        real_fsync(descriptor)

    monkeypatch.setattr(fs.Directory, "rename", rename_then_taken_over)
    monkeypatch.setattr(os, "fsync", noted_fsync)
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    with lock_held_elsewhere(store.lock_path):
        assert store.merge_or_hand_over(changes, 0.0, follow_up=False) is False
    assert written and written[-1] in synced
    assert "durable" not in caplog.text
