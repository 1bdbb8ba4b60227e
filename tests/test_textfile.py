from __future__ import annotations

import errno
import math
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError, InvalidValueError, LockTimeoutError, TextfileWriteError
from fraisier_textfile.format.reader import parse
from fraisier_textfile.store.files import TEMPORARY_PREFIX

from .processes import STORE_WORKERS, binary, lock_held_elsewhere, small_tmpfs
from .values import sample_values


def merge(store: TextfileStore, event: object, *arguments: object) -> None:
    changes = Changes()
    event(changes, *arguments)  # type: ignore[operator]
    store.merge(changes)


def test_counters_and_histograms_are_summed_across_merges(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_complete, "bare_metal", "api", "success", 12.0)
    merge(TextfileStore(textfile_dir), events.deployment_complete, "bare_metal", "api", "success", 700.0)
    values = sample_values(store.path)
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2
    duration = 'fraisier_deployment_duration_seconds_{}{{provider="bare_metal",status="success"{}}}'
    assert values[duration.format("count", "")] == 2
    assert values[duration.format("sum", "")] == 712
    assert values[duration.format("bucket", ',le="30.0"')] == 1
    assert values[duration.format("bucket", ',le="1200.0"')] == 2
    assert values[duration.format("bucket", ',le="+Inf"')] == 2


def test_a_new_pair_has_every_deployment_status_at_zero(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_complete, "docker_compose", "etl", "success", 1.0)
    values = sample_values(store.path)
    for status in c.DEPLOYMENT_STATUSES:
        key = f'fraisier_deployments_total{{provider="docker_compose",status="{status}",fraise_type="etl"}}'
        assert values[key] == (1 if status == "success" else 0)


def test_gauges_take_the_latest_or_the_maximum(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.provider_availability, "bare_metal", False)
    merge(store, events.provider_availability, "bare_metal", True)
    merge(store, events.lock_wait, "web", "bare_metal", 3.5)
    merge(store, events.lock_wait, "web", "bare_metal", 0.5)
    merge(store, events.deployment_complete, "bare_metal", "api", "success", 1.0, 2000.0)
    merge(store, events.deployment_complete, "bare_metal", "api", "success", 1.0, 1000.0)
    values = sample_values(store.path)
    assert values['fraisier_provider_availability{provider="bare_metal"}'] == 1
    assert values['fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'] == 0.5
    key = 'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}'
    assert values[key] == 2000


def test_the_file_is_readable_by_others_whatever_the_umask(textfile_dir: Path, umask_077: None) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_error, "bare_metal", "timeout")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o644
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o664  # one group of users may share the directory


def test_the_marker_directory_is_group_writable_whatever_the_umask(textfile_dir: Path, umask_077: None) -> None:
    from fraisier_textfile.store.markers import MARKER_DIRECTORY, create_marker

    create_marker(textfile_dir, "bare_metal", "api")
    assert stat.S_IMODE((textfile_dir / MARKER_DIRECTORY).stat().st_mode) == 0o775


def test_no_created_series_and_no_timestamps(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.health_check, "bare_metal", "http", "pass", 0.2)
    text = store.path.read_text()
    assert "_created" not in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert len(line.rsplit("} ", 1)[-1].split()) == 1, line


def test_families_of_other_writers_are_kept_and_old_help_is_replaced(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    foreign = '# HELP site_info Written by hand.\n# TYPE site_info gauge\nsite_info{site="a"} 1\n'
    old = (
        "# HELP fraisier_rollbacks_total An earlier version's help.\n# TYPE fraisier_rollbacks_total counter\n"
        'fraisier_rollbacks_total{provider="bare_metal",reason="manual"} 4.0\n'
    )
    (textfile_dir / "fraisier.prom").write_text(old + foreign)
    store = TextfileStore(textfile_dir)
    merge(store, events.rollback, "bare_metal", "manual", 3.0)
    text = store.path.read_text()
    assert text.endswith(foreign)
    assert "An earlier version's help" not in text
    assert sample_values(store.path)['fraisier_rollbacks_total{provider="bare_metal",reason="manual"}'] == 5


def file_state(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def test_a_corrupt_file_is_refused_and_left_byte_identical(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_error, "bare_metal", "timeout")
    with store.path.open("ab") as file:
        file.write(b'fraisier_deployment_errors_total{provider="x",error_type="y"} 1')  # no newline: truncated
    before = file_state(textfile_dir)
    with pytest.raises(CorruptTextfileError, match=r"fraisier.prom:\d+: the file does not end with a newline"):
        merge(store, events.deployment_error, "bare_metal", "timeout")
    assert file_state(textfile_dir) == before


def test_a_histogram_that_cannot_be_migrated_is_refused(textfile_dir: Path) -> None:
    # Other buckets are migrated (tests/test_lifecycle.py); a bucket without le cannot be.
    textfile_dir.mkdir()
    name = c.ROLLBACK_DURATION.name
    text = (
        f"# TYPE {name} histogram\n"
        f'{name}_bucket{{provider="p"}} 1.0\n{name}_bucket{{provider="p",le="+Inf"}} 1.0\n'
        f'{name}_sum{{provider="p"}} 0.5\n{name}_count{{provider="p"}} 1.0\n'
    )
    (textfile_dir / "fraisier.prom").write_text(text)
    with pytest.raises(CorruptTextfileError, match="a bucket of fraisier_rollback_duration_seconds has no le label"):
        merge(TextfileStore(textfile_dir), events.rollback, "p", "manual", 1.0)
    assert (textfile_dir / "fraisier.prom").read_text() == text


BAD_VALUES = [
    (events.deployment_complete, ("p", "api", "exploded", 1.0), "status='exploded' is not known: use one of"),
    (events.deployment_complete, ("", "api", "success", 1.0), "provider is empty"),
    (events.deployment_complete, ("p", "x" * 129, "success", 1.0), "is 129 characters long"),
    (events.deployment_error, ("p", "line\nbreak"), "non-printable"),
    (events.rollback, ("p", "manual", -1.0), "duration=-1.0 is not a finite number"),
    (events.rollback, ("p", "manual", float("nan")), "duration=nan"),
    (events.health_check, ("p", "http", "pass", float("inf")), "duration=inf"),
    (events.health_check, ("p", "http", "maybe", 1.0), "status='maybe'"),
]


@pytest.mark.parametrize("event, arguments, message", BAD_VALUES)
def test_bad_values_record_nothing(event: object, arguments: tuple[object, ...], message: str) -> None:
    changes = Changes()
    with pytest.raises(InvalidValueError, match=message):
        event(changes, *arguments)  # type: ignore[operator]
    assert not changes


@pytest.fixture
def unwritable_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory holding a textfile that this process cannot write to. Root writes anywhere, so for root
    it is a real read-only filesystem; for anyone else, a directory without write permission."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], check=True)
    merge(TextfileStore(directory), events.deployment_error, "bare_metal", "timeout")
    if as_root:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    else:
        directory.chmod(0o555)
    try:
        yield directory
    finally:
        if as_root:
            subprocess.run(["umount", str(directory)], check=True)
        else:
            directory.chmod(0o755)


def test_an_unwritable_directory_fails_cleanly(unwritable_directory: Path) -> None:
    before = file_state(unwritable_directory)
    with pytest.raises(TextfileWriteError, match=f"cannot .* {unwritable_directory}.*: .*; (make the|the filesystem)"):
        merge(TextfileStore(unwritable_directory), events.deployment_error, "bare_metal", "timeout")
    assert file_state(unwritable_directory) == before


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real, nearly full filesystem (test_a_full_disk_simulated covers the same path without root)."""
    with small_tmpfs(tmp_path / "tiny", "64k") as mount_point:
        yield mount_point


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tiny_filesystem: Path) -> None:
    store = TextfileStore(tiny_filesystem)
    merge(store, events.deployment_error, "bare_metal", "timeout")
    before = file_state(tiny_filesystem)
    (tiny_filesystem / "filler").write_bytes(b"\0" * (64 * 1024 - 8192 - len(before["fraisier.prom"])))
    big = Changes()
    for number in range(2000):
        events.deployment_error(big, "bare_metal", f"error_{number}")
    with pytest.raises(TextfileWriteError, match="No space left on device; free space on that filesystem"):
        store.merge(big)
    (tiny_filesystem / "filler").unlink()
    assert file_state(tiny_filesystem) == before
    assert not [p for p in tiny_filesystem.iterdir() if p.name.startswith(TEMPORARY_PREFIX)]


def test_a_full_disk_simulated(textfile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above where no filesystem can be mounted: every write fails with ENOSPC."""
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_error, "bare_metal", "timeout")
    before = file_state(textfile_dir)

    def full(descriptor: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(TextfileWriteError, match="No space left on device"):
        merge(store, events.deployment_error, "bare_metal", "timeout")
    monkeypatch.undo()
    assert file_state(textfile_dir) == before


def test_the_lock_times_out_with_a_clear_error(textfile_dir: Path) -> None:
    pattern = "could not lock .*fraisier.prom.lock within 0.2s: another fraisier process holds it"
    store = TextfileStore(textfile_dir, lock_timeout=0.2)
    merge(store, events.deployment_error, "bare_metal", "timeout")
    before = file_state(textfile_dir)
    with lock_held_elsewhere(store.lock_path), pytest.raises(LockTimeoutError, match=pattern):
        merge(store, events.deployment_error, "bare_metal", "timeout")
    assert file_state(textfile_dir) == before


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    store = TextfileStore(tmp_path / "a" / "b" / "c")
    merge(store, events.deployment_error, "bare_metal", "timeout")
    assert parse(store.path.read_text(), SCHEMA).blocks


# Time that steps

LAST_SUCCESS = 'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}'


def record_with_clock(textfile_dir: Path, offset: str | None) -> float:
    """One deployment recorded by a new process whose clock is ``offset`` from ours (real faketime); returns
    what that process's clock said when it recorded."""
    command = [sys.executable, str(STORE_WORKERS), "record_once", str(textfile_dir), "clock"]
    if offset is not None:
        command = [binary("faketime"), "-f", offset, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


def test_a_timestamp_from_a_clock_a_year_ahead_is_replaced_by_the_next_deployment(textfile_dir: Path) -> None:
    ahead = record_with_clock(textfile_dir, "+365d")
    assert ahead > time.time() + 364 * 86400  # the clock really was a year ahead
    assert sample_values(textfile_dir / "fraisier.prom")[LAST_SUCCESS] == ahead
    normal = record_with_clock(textfile_dir, None)
    assert sample_values(textfile_dir / "fraisier.prom")[LAST_SUCCESS] == normal


def test_a_timestamp_ahead_within_the_tolerance_stays_the_maximum(textfile_dir: Path) -> None:
    from fraisier_textfile.store.rules import CLOCK_TOLERANCE

    ahead = record_with_clock(textfile_dir, f"+{CLOCK_TOLERANCE / 3:g}")
    record_with_clock(textfile_dir, None)
    assert sample_values(textfile_dir / "fraisier.prom")[LAST_SUCCESS] == ahead


# Values that cannot be summed honestly


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-1"])
def test_a_counter_that_cannot_be_summed_is_refused_and_the_file_left_as_it_was(
    textfile_dir: Path, value: str
) -> None:
    textfile_dir.mkdir()
    key = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
    (textfile_dir / "fraisier.prom").write_text(f"# TYPE fraisier_deployment_errors_total counter\n{key} {value}\n")
    before = (textfile_dir / "fraisier.prom").read_bytes()
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    with pytest.raises(CorruptTextfileError, match=re.escape(f"{key} is ") + ".*remove that line to restart"):
        TextfileStore(textfile_dir).merge(changes)
    assert (textfile_dir / "fraisier.prom").read_bytes() == before
    assert changes
    merge(TextfileStore(textfile_dir), events.deployment_error, "bare_metal", "other")  # untouched: no matter
    kept = sample_values(textfile_dir / "fraisier.prom")[key]
    assert math.isnan(kept) if value == "NaN" else kept == float(value)


def test_a_sum_that_would_overflow_to_infinity_is_refused(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    merge(store, events.rollback, "bare_metal", "manual", 1.5e308)
    before = file_state(textfile_dir)
    changes = Changes()
    events.rollback(changes, "bare_metal", "manual", 1.5e308)
    key = f'{c.ROLLBACK_DURATION.name}_sum{{provider="bare_metal"}}'
    with pytest.raises(InvalidValueError, match=re.escape(f"adding 1.5e+308 to {key} (now 1.5e+308) in ")):
        store.merge(changes)
    assert file_state(textfile_dir) == before
    assert sample_values(store.path)[key] == 1.5e308


def test_a_first_value_that_overflowed_to_infinity_in_memory_is_refused_not_written(textfile_dir: Path) -> None:
    """Two huge observations in one process make a sum of +Inf before the file has the series: written, every
    later sum of it would be refused ("is inf in the file")."""
    store = TextfileStore(textfile_dir)
    merge(store, events.deployment_error, "bare_metal", "first")
    before = file_state(textfile_dir)
    changes = Changes()
    events.rollback(changes, "bare_metal", "manual", 1.5e308)
    events.rollback(changes, "bare_metal", "manual", 1.5e308)
    key = f'{c.ROLLBACK_DURATION.name}_sum{{provider="bare_metal"}}'
    with pytest.raises(InvalidValueError, match=re.escape(f"adding inf to {key} (a new series) in ")):
        store.merge(changes)
    assert file_state(textfile_dir) == before


