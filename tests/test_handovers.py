"""Hand-overs: events a process could not merge because the lock was busy are written by the next merge of any
process, exactly once, whatever is killed when."""

from __future__ import annotations

import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import handovers
from fraisier_textfile.store.textfile import TextfileStore

from .processes import fraisier, lock_held_elsewhere, start_store_worker
from .values import sample_values


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
    assert as_plain(handovers.decode(handovers.encode(changes))) == as_plain(changes)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"{not json", "not a hand-over this version can read"),
        (b'{"version": 0}', "format version 0"),
        (b'{"version": 1, "added": [["no_such_family", [], 1]], "observed": [], "latest": [], "maximum": [],'
         b' "active_providers": [], "retired_markers": []}', "no_such_family is not in this version's catalogue"),
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
    bad = handovers.handover_directory(textfile_dir) / "00000000000000000001-1-bad.json"
    bad.write_bytes(data)
    store.merge(Changes())
    assert error_count(sample_values(store.path), "good") == 1
    assert problem in caplog.text
    assert not bad.exists()
    assert bad.with_name("00000000000000000001-1-bad.unreadable").read_bytes() == data


def test_hand_over_empties_the_changes_and_the_next_merge_writes_them_once(textfile_dir: Path) -> None:
    from fraisier_textfile.store import inflight

    store = TextfileStore(textfile_dir)
    marker = inflight.create_marker(textfile_dir, "docker_compose", "backup")  # ended by the handed-over changes
    changes = every_kind_of_change()
    changes.retired_markers.add(marker.id)
    store.hand_over(changes)
    assert not changes
    assert not store.path.exists()
    [name] = os.listdir(handovers.handover_directory(textfile_dir))
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
    assert inflight.read_markers(textfile_dir) == []
    assert os.listdir(handovers.handover_directory(textfile_dir)) == []
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
        assert len(os.listdir(handovers.handover_directory(textfile_dir))) == calls
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
    assert os.listdir(handovers.handover_directory(textfile_dir)) == []


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
    assert os.listdir(handovers.handover_directory(textfile_dir)) == []
    store.merge(Changes())
    assert handovers.APPLIED.key not in store.path.read_text()
    assert applied_by_killed_mergers > 0  # the kills did land at every stage, not only before the merges began


def test_sixteen_processes_merging_or_handing_over_lose_nothing_and_count_nothing_twice(textfile_dir: Path) -> None:
    processes, count = 16, 200
    TextfileStore(textfile_dir).merge(Changes())
    workers = [start_store_worker("race", str(textfile_dir), str(count), str(n), "0.01") for n in range(processes)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
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
    directory = handovers.handover_directory(textfile_dir)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o775 | (textfile_mode & stat.S_ISGID)
    [handed_over] = directory.iterdir()
    assert stat.S_IMODE(handed_over.stat().st_mode) == 0o644


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
    assert os.listdir(handovers.handover_directory(textfile_dir)) == []
    values = sample_values(store.path)
    assert [error_count(values, f"many_{number}") for number in range(count)] == [1] * count
    store.merge(Changes())
    assert handovers.APPLIED.key not in store.path.read_text()
    assert sample_values(store.path) == values


def test_a_forked_child_deletes_its_applied_hand_overs_with_a_remover_of_its_own(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    for number in range(handovers.INLINE_REMOVALS * 2):
        changes = Changes()
        events.deployment_error(changes, "bare_metal", f"child_{number}")
        store.hand_over(changes)
    pid = os.fork()
    if pid == 0:
        try:
            TextfileStore(textfile_dir).merge(Changes())
            os._exit(0 if handovers.wait_for_removals() else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.listdir(handovers.handover_directory(textfile_dir)) == []


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
    directory = handovers.handover_directory(textfile_dir)
    assert handovers.wait_for_removals()
    assert [name.endswith(".unreadable") for name in os.listdir(directory)] == [True]


@pytest.mark.parametrize("name", ["copy of 1.json", "line\nbreak.json", "tab\there.json"])
def test_a_hand_over_named_so_that_the_applied_list_cannot_hold_it_is_set_aside(
    textfile_dir: Path, name: str
) -> None:
    """The file lists applied hand-overs by id, space-separated on one line: an id with a blank would be read
    back as two ids (and applied again if its deletion is late), one with a newline could not be written."""
    store = TextfileStore(textfile_dir)
    good = Changes()
    events.deployment_error(good, "bare_metal", "odd")
    data = handovers.encode(good)
    directory = handovers.handover_directory(textfile_dir)
    directory.mkdir(parents=True)
    (directory / name).write_bytes(data)
    store.merge(Changes())
    store.merge(Changes())
    assert error_count(sample_values(store.path), "odd") == 0
    assert os.listdir(directory) == [name[: -len(".json")] + ".unreadable"]
