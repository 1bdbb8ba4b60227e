"""Hand-overs left for another merger (a newer version, a store of another schema): read by one merge of this
version and schema, not by every merge of every process, with the reads of each merge bounded, and those
written after them never starved behind them."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store import handover_codec, handovers
from fraisier_textfile.store.handovers import HANDOVERS_PER_MERGE
from fraisier_textfile.store.textfile import TextfileStore as StoreOfASchema

from .values import sample_values

PADDING = 100_000
"""Bytes of padding in each hand-over left for a newer version, so that the bytes a merge reads show how many
hand-overs it read, far above what else it reads."""

_MERGE_AND_COUNT_READS = """
import sys
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.schema import Family, Kind, Schema

TextfileStore(sys.argv[2]).merge(Changes())  # every lazy import done before the count

def read_so_far():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))

before = read_so_far()
TextfileStore(sys.argv[1]).merge(Changes())
print(read_so_far() - before)
"""


def merge_in_a_new_process(textfile_dir: Path, warm_dir: Path) -> int:
    """Merge once in a new process (its first merge of ``textfile_dir``); the bytes that merge read."""
    result = subprocess.run([sys.executable, "-c", _MERGE_AND_COUNT_READS, str(textfile_dir), str(warm_dir)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def newer_version_handover(directory: Path, sequence: int) -> Path:
    path = directory / f"{handovers.id_for(sequence)}{handovers.SUFFIX}"
    content = {"version": handover_codec.FORMAT_VERSION + 1, "schema": SCHEMA.fingerprint, "added": [],
               "observed": [], "latest": [], "maximum": [], "active_providers": [], "retired_markers": [],
               "padding": "x" * PADDING}
    path.write_text(json.dumps(content))
    return path


def our_handover(directory: Path, sequence: int, error_type: str) -> Path:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", error_type)
    path = directory / f"{handovers.id_for(sequence)}{handovers.SUFFIX}"
    path.write_bytes(handover_codec.encode(changes, SCHEMA))
    return path


def more_left_for_a_newer_version_than_a_merge_reads(textfile_dir: Path) -> tuple[Path, int]:
    """A textfile with more hand-overs of a newer version waiting than a merge reads, then one of ours
    (error_type "after_them"); the hand-over directory and how many of a newer version wait."""
    TextfileStore(textfile_dir).merge(Changes())
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    newer = HANDOVERS_PER_MERGE + 44
    for sequence in range(1, newer + 1):
        newer_version_handover(directory, sequence)
    our_handover(directory, newer + 1, "after_them")
    return directory, newer


def errors_of(textfile_dir: Path, error_type: str) -> float:
    values = sample_values(textfile_dir / "fraisier.prom")
    return values.get(f'fraisier_deployment_errors_total{{provider="bare_metal",error_type="{error_type}"}}', 0)


def test_hand_overs_left_for_a_newer_version_are_read_once_by_bounded_merges_and_never_starve_later_ones(
    tmp_path: Path,
) -> None:
    """Bug (attack7): every merge of every process read every hand-over left for a newer version, since the bound
    on a merge's work counted only those it applied: with 100,000 waiting, each merge took seconds. Now a merge
    reads at most HANDOVERS_PER_MERGE in all, what it found left for another merger is remembered in the
    directory, so that the next merge, in any process, reads on past them, and the hand-over written after them
    is applied, once."""
    textfile_dir, warm_dir = tmp_path / "textfile", tmp_path / "warm"
    directory, newer = more_left_for_a_newer_version_than_a_merge_reads(textfile_dir)
    one = PADDING + 1000

    first = merge_in_a_new_process(textfile_dir, warm_dir)
    assert first < (HANDOVERS_PER_MERGE + 4) * one, f"{first:,} bytes read: more than {HANDOVERS_PER_MERGE}"
    second = merge_in_a_new_process(textfile_dir, warm_dir)
    assert second < (newer - HANDOVERS_PER_MERGE + 4) * one, f"{second:,} bytes read: those read before again"
    assert errors_of(textfile_dir, "after_them") == 1
    third = merge_in_a_new_process(textfile_dir, warm_dir)
    assert third < one, f"{third:,} bytes read: hand-overs left for a newer version read again"
    assert errors_of(textfile_dir, "after_them") == 1
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[handovers.PENDING_FAMILY] == newer
    assert len([name for name in os.listdir(directory) if name.endswith(handovers.SUFFIX)]) == newer


def test_two_schemas_sharing_a_textfile_each_get_past_the_hand_overs_neither_applies(tmp_path: Path) -> None:
    """Two stores of different schemas may merge one textfile. With more hand-overs of a newer version waiting than
    a merge reads, a memory shared by both would be replaced at each merge of the other (a memory judged by another
    schema is not used), and each would read the same first ones again and again, never reaching its own written
    after them. Each remembers its own: both are applied."""
    textfile_dir = tmp_path / "textfile"
    jobs = Family("app_jobs_total", Kind.COUNTER, ("kind",), "Jobs run.")
    application = StoreOfASchema(textfile_dir, schema=Schema([jobs]))
    fraisier = TextfileStore(textfile_dir)
    directory, newer = more_left_for_a_newer_version_than_a_merge_reads(textfile_dir)
    theirs = Changes()
    theirs.add(jobs, ("backup",), 1)
    (directory / f"{handovers.id_for(newer + 2)}{handovers.SUFFIX}").write_bytes(
        handover_codec.encode(theirs, application.schema))
    for _ in range(3):
        fraisier.merge(Changes())
        application.merge(Changes())
    assert errors_of(textfile_dir, "after_them") == 1
    assert sample_values(textfile_dir / "fraisier.prom")['app_jobs_total{kind="backup"}'] == 1


def test_root_remembers_in_another_users_directory_in_a_file_of_that_users(tmp_path: Path) -> None:
    """What root makes in another user's directory is that user's (fs.give): the memory too."""
    if os.geteuid() != 0:
        pytest.skip("only root merges in another user's directory")
    nobody = pwd.getpwnam("nobody")
    textfile_dir = tmp_path / "nobodys"
    TextfileStore(textfile_dir).merge(Changes())
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    newer_version_handover(directory, 1)
    for path in (textfile_dir, directory):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    TextfileStore(textfile_dir).merge(Changes())
    [memory] = [path for path in directory.iterdir() if path.name.startswith("fraisier.prom.left-")]
    assert memory.stat().st_uid == nobody.pw_uid
