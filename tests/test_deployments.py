"""A deployment through the store's API (store/deployments.py): ``start_deployment`` writes its marker and holds
it; the changes of ``deployment_ended`` retire it, and the store releases it once it wrote them (merged or handed
over), never before. Real processes: each deployment is a worker of tests/store_workers.py, probed from this
process by its marker's lock, and SIGKILLed on either side of the write."""

from __future__ import annotations

import signal
import subprocess
from contextlib import nullcontext
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import markers
from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY

from .processes import lock_held_elsewhere, start_store_worker
from .test_markers import markers_in
from .values import sample_values

ACTIVE = 'fraisier_active_deployments{provider="bare_metal"}'
SUCCESS = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
CRASHED = 'fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'


def alive(textfile_dir: Path) -> dict[str, bool]:
    """Every marker on disk and whether its deployment is alive, as another process sees it (by its lock)."""
    return {marker.id: markers.is_alive(marker) for marker in markers_in(textfile_dir)}


def step(worker: subprocess.Popen[str], line: str) -> str:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(line + "\n")
    worker.stdin.flush()
    return worker.stdout.readline().strip()


def counted(textfile_dir: Path) -> tuple[float, float, float]:
    """After a merge by this process: (active, success, crashed) of the worker's provider and fraise type."""
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    return values[ACTIVE], values[SUCCESS], values[CRASHED]


def counted_once(textfile_dir: Path, expected: tuple[float, float, float]) -> None:
    """Merge after merge, the deployment counts ``expected`` (active, success, crashed), and no marker is left."""
    assert counted(textfile_dir) == expected
    assert counted(textfile_dir) == expected
    assert alive(textfile_dir) == {}


def killed(worker: subprocess.Popen[str]) -> None:
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=60) == -signal.SIGKILL


def deployment(textfile_dir: Path, processes: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], str]:
    """A worker whose deployment has started (its start merged), and its marker's id."""
    worker = start_store_worker("deployment_step_by_step", str(textfile_dir))
    processes.append(worker)
    marker_id = step(worker, "start")
    assert alive(textfile_dir) == {marker_id: True}
    assert counted(textfile_dir) == (1, 0, 0)
    return worker, marker_id


def test_an_end_merged_releases_the_marker_and_counts_the_deployment_once(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    worker, marker_id = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    assert alive(textfile_dir) == {marker_id: True}  # its end is not written: still in flight
    assert step(worker, "write") == "merged"
    assert alive(textfile_dir) == {}  # accounted for in the file, and removed by the merge that wrote its end
    counted_once(textfile_dir, (0, 1, 0))


def test_an_end_handed_over_releases_the_marker_while_its_process_lives(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    worker, marker_id = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        assert step(worker, "write") == "handed over"
        assert alive(textfile_dir) == {marker_id: False}
        assert worker.poll() is None
    counted_once(textfile_dir, (0, 1, 0))


def test_an_end_that_could_not_be_written_keeps_the_marker_held_and_a_sigkill_then_counts_one_crash(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """The lock is busy and the hand-over cannot be written (a file where its directory goes): the end is not in
    the file, so the deployment stays in flight; its process killed, the next merge counts it crashed, once."""
    worker, marker_id = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    in_the_way = textfile_dir / HANDOVER_DIRECTORY
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        in_the_way.write_text("not a directory")
        assert step(worker, "write") == "failed"
        assert alive(textfile_dir) == {marker_id: True}
        killed(worker)
        assert alive(textfile_dir) == {marker_id: False}
    in_the_way.unlink()
    counted_once(textfile_dir, (0, 0, 1))


def test_a_sigkill_before_the_end_is_written_counts_one_crash_and_no_end(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    worker, _ = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    killed(worker)
    counted_once(textfile_dir, (0, 0, 1))


def test_a_sigkill_after_the_end_is_handed_over_and_before_the_release_counts_the_end_once(
    textfile_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    worker, marker_id = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        assert step(worker, "write then die") == ""  # killed before it could say what the write did
        assert worker.wait(timeout=60) == -signal.SIGKILL
        assert alive(textfile_dir) == {marker_id: False}
    counted_once(textfile_dir, (0, 1, 0))


@pytest.mark.parametrize("lock", ["free", "busy"])
def test_a_sigint_whose_handler_raises_as_the_end_is_written_still_releases_the_marker(
    textfile_dir: Path, processes: list[subprocess.Popen[str]], lock: str
) -> None:
    """The merge and the hand-over hold signal handlers back until they end: a KeyboardInterrupt raised then
    comes after the end is written, and the process goes on (it caught it): its marker must not stay held."""
    worker, marker_id = deployment(textfile_dir, processes)
    assert step(worker, "end") == "ended"
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock") if lock == "busy" else nullcontext():
        assert step(worker, "write interrupted") == "interrupted"
        assert worker.poll() is None
        assert alive(textfile_dir).get(marker_id) in (None, False)  # a merge of its own removed it
    counted_once(textfile_dir, (0, 1, 0))


def test_a_marker_that_cannot_be_written_is_told_and_the_deployment_goes_on_unmarked(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    in_the_way = textfile_dir / markers.MARKER_DIRECTORY
    in_the_way.write_text("not a directory")
    told: list[tuple[BaseException, str]] = []
    store = TextfileStore(textfile_dir)
    started = store.start_deployment("bare_metal", "api", lambda error, where: told.append((error, where)))
    assert started.marker_id is None
    assert [where for _, where in told] == [str(textfile_dir / markers.MARKER_DIRECTORY)]
    assert str(textfile_dir / markers.MARKER_DIRECTORY) in str(told[0][0])
    end = Changes()
    events.deployment_complete(end, "bare_metal", "api", "success", 1.0)
    events.deployment_ended(end, "bare_metal", started)
    assert not end.retired_markers
    in_the_way.unlink()  # a merge refuses it too
    store.merge(end)
    assert sample_values(store.path)[SUCCESS] == 1
