"""Checking a file's layout claims while the merge writes (fraisier_textfile/store/vouching.py): a merge takes the
file it reads as its layout line lays it out, checks the checksums while its new version is written, and renames
nothing taken on trust from a file someone changed since: that file is merged again, read line by line."""

from __future__ import annotations

import _thread
import os
import time
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.reader import parse, read_vouched
from fraisier_textfile.store import vouching
from fraisier_textfile.store.files import TEMPORARY_PREFIX

from .stores import record

LABELS = 'provider="provider_003",status="success",fraise_type="api"'
SWAPPED = 'status="success",provider="provider_003",fraise_type="api"'  # the same bytes, in another order
KEY = f"fraisier_deployments_total{{{LABELS}}}"


def written_file(directory: Path) -> Path:
    """A file the store wrote, several segments long, vouched for by its layout line."""
    store = TextfileStore(directory)
    for number in range(60):
        record(store, events.deployment_complete, f"provider_{number:03d}", "api", "success", 1.5 + number)
    path = directory / "fraisier.prom"
    assert read_vouched(path.read_bytes(), SCHEMA) is not None
    return path


def edited(path: Path, old: str, new: str) -> bytes:
    """The file changed in place by someone else, keeping its length: only the checksums can tell."""
    original = path.read_bytes()
    changed = original.replace(old.encode(), new.encode(), 1)
    assert changed != original and len(changed) == len(original)
    path.write_bytes(changed)
    return changed


def values(path: Path) -> dict[str, float]:
    document = parse(path.read_text(), SCHEMA)
    return dict(sample for block in document.blocks.values() for sample in block.samples())


def lines_of(path: Path, labels: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("fraisier_deployments_total{")
            and all(pair in line for pair in labels.split(","))]


def test_a_file_changed_since_it_was_written_is_merged_as_its_lines_say(tmp_path: Path) -> None:
    """Its labels in another order, the recorded series looks absent to a reader that trusts the layout, which
    would add it a second time; the merge reads the file line by line and sums into it."""
    path = written_file(tmp_path)
    edited(path, f"{KEY} 1.0\n", f"fraisier_deployments_total{{{SWAPPED}}} 1.0\n")
    record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert lines_of(path, LABELS) == [f"{KEY} 2.0"]
    assert values(path)[KEY] == 2.0
    assert read_vouched(path.read_bytes(), SCHEMA) is not None  # written in our form, vouched for again


def test_a_value_changed_into_no_number_is_refused_as_the_line_by_line_reading_refuses_it(
    tmp_path: Path
) -> None:
    """The merge trusting the layout fails on the value (no float); that failure is the file's: read line by
    line, the file is refused with its line, left as it was, and no temporary file stays."""
    path = written_file(tmp_path)
    changed = edited(path, f"{KEY} 1.0\n", f"{KEY} x.0\n")
    with pytest.raises(CorruptTextfileError, match=r'fraisier.prom:\d+: expected float as value, got "x.0"'):
        record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert path.read_bytes() == changed
    assert not [name.name for name in tmp_path.iterdir() if name.name.startswith(TEMPORARY_PREFIX)]


def test_where_no_thread_can_start_the_claims_are_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter shutting down refuses new threads (RuntimeError): the exit's merge still checks."""
    path = written_file(tmp_path)
    edited(path, f"{KEY} 1.0\n", f"fraisier_deployments_total{{{SWAPPED}}} 1.0\n")

    def refuse(*arguments: object) -> int:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert lines_of(path, LABELS) == [f"{KEY} 2.0"]


def test_a_check_gives_one_verdict(tmp_path: Path) -> None:
    from fraisier_textfile.format.reader import read_claimed

    path = written_file(tmp_path)
    good = read_claimed(path.read_bytes(), SCHEMA)
    assert good is not None
    check = vouching.Check(good[1])
    assert check.holds() and check.holds()
    bad = read_claimed(edited(path, f"{KEY} 1.0\n", f"{KEY} 9.0\n"), SCHEMA)
    assert bad is not None  # laid out as the layout line says: only the checksums tell
    check = vouching.Check(bad[1])
    assert not check.holds() and not check.holds()


def test_a_bookkeeping_line_held_as_bytes_that_is_not_utf8_is_refused_as_the_line_by_line_reading_refuses_it(
    tmp_path: Path
) -> None:
    """The series' update times are taken as bytes, not decoded: that they are UTF-8 is one of the claims."""
    path = written_file(tmp_path)
    original = path.read_bytes()
    changed = original.replace(b" provider_003,success,api=", b" provider_\xff03,success,api=", 1)
    assert changed != original
    path.write_bytes(changed)
    with pytest.raises(CorruptTextfileError, match="not UTF-8"):
        record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert path.read_bytes() == changed


# The seal: a file the store wrote carries, as its mtime's nanoseconds, a number its layout line gives
# (layout.seal_of). A change in place sets the mtime again (the kernel's clock), so a file whose mtime still shows
# the seal is the one written: a new process takes it as laid out without checksumming it.


def checksummed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the claims checked by checksum from here on."""
    from fraisier_textfile.format import layout

    calls: list[int] = []
    original = layout.Claims.hold

    def counted(self: layout.Claims) -> bool:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(layout.Claims, "hold", counted)
    return calls


def test_a_file_as_the_store_wrote_it_is_taken_at_its_seal_without_a_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraisier_textfile.format import layout
    from fraisier_textfile.format.reader import read_claimed

    path = written_file(tmp_path)
    claimed = read_claimed(path.read_bytes(), SCHEMA)
    assert claimed is not None
    assert path.stat().st_mtime_ns % 1_000_000_000 == layout.seal_of(claimed[1].line)
    calls = checksummed(monkeypatch)
    record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert calls == []
    assert values(path)[KEY] == 2.0
    assert read_vouched(path.read_bytes(), SCHEMA) is not None


def test_the_seal_keeps_the_kernels_second(tmp_path: Path) -> None:
    """node_exporter's node_textfile_mtime_seconds and the store's clock check (rules.clock_is_behind) read the
    mtime: the seal changes only the nanoseconds within the second the kernel gave the write, whatever this
    process's own clock says."""
    before = time.time_ns() // 1_000_000_000
    path = written_file(tmp_path)
    after = time.time_ns() // 1_000_000_000
    assert before <= path.stat().st_mtime_ns // 1_000_000_000 <= after


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_file_changed_in_place_is_checksummed_unless_its_mtime_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_mtime: bool
) -> None:
    """A change in place sets the mtime, which breaks the seal: the claims are checksummed and the change found.
    Whoever puts the mtime back by hand forges the seal (as whoever can write the file can write any value into
    it: layout.py), and the file is then taken as laid out."""
    path = written_file(tmp_path)
    sealed = path.stat()
    edited(path, f"{KEY} 1.0\n", f"fraisier_deployments_total{{{SWAPPED}}} 1.0\n")
    if keep_mtime:
        os.utime(path, ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    calls = checksummed(monkeypatch)
    record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert (len(calls) == 0) if keep_mtime else (len(calls) >= 1)
    if not keep_mtime:
        assert lines_of(path, LABELS) == [f"{KEY} 2.0"]


def test_a_file_changed_during_the_read_is_not_taken_at_its_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mtime is looked at before and after the read: a change in place while the merge reads gives torn bytes
    and a new mtime after them (the seal's, as before the change, is what the look before the read saw)."""

    path = written_file(tmp_path)
    original_read = os.read
    changed: list[bool] = []

    def read_then_change(descriptor: int, size: int) -> bytes:
        data = original_read(descriptor, size)
        if not changed and data:
            changed.append(True)
            edited(path, f"{KEY} 1.0\n", f"fraisier_deployments_total{{{SWAPPED}}} 1.0\n")
        return data

    monkeypatch.setattr(os, "read", read_then_change)
    calls = checksummed(monkeypatch)
    record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert changed and len(calls) >= 1


def test_a_sealed_file_whose_claims_fail_the_merge_is_checked_and_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged seal over a value that is no number: the merge taking the file at its seal fails on it, and that
    failure is the file's, as without a seal: its claims are checked, and the file is read line by line and
    refused with its line."""
    path = written_file(tmp_path)
    sealed = path.stat()
    changed = edited(path, f"{KEY} 1.0\n", f"{KEY} x.0\n")
    os.utime(path, ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    with pytest.raises(CorruptTextfileError, match=r'fraisier.prom:\d+: expected float as value, got "x.0"'):
        record(TextfileStore(tmp_path), events.deployment_complete, "provider_003", "api", "success", 2.0)
    assert path.read_bytes() == changed


def written_with_a_note_and_another_writers_family(directory: Path) -> Path:
    """A file the store wrote whose block of ours has a stray comment in its header, and which holds a family of
    another writer's, kept as its text: each vouched for by the layout line like the rest."""
    path = written_file(directory)
    help_line = "# HELP fraisier_deployments_total"
    text = path.read_text().replace(help_line, f"# a note\n{help_line}", 1)
    path.write_text(f'{text}# TYPE other_writers_total counter\nother_writers_total{{job="a"}} 17.0\n')
    record(TextfileStore(directory), events.deployment_complete, "provider_003", "api", "success", 2.0)
    layout_line = path.read_text().splitlines()[0]
    assert "fraisier_deployments_total/" in layout_line and " other_writers_total/r/" in layout_line
    return path


def refusal(directory: Path) -> str:
    with pytest.raises(CorruptTextfileError) as refused:
        record(TextfileStore(directory), events.deployment_complete, "provider_003", "api", "success", 3.0)
    return str(refused.value)


NEIGHBOUR = 'fraisier_deployments_total{provider="provider_004",status="success",fraise_type="api"} 1.0\n'


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(NEIGHBOUR.encode(), NEIGHBOUR.replace(" 1.0", " x.0").encode(), id="no-number-beside-the-series"),
        pytest.param(NEIGHBOUR.encode(), NEIGHBOUR.replace("api", "a\xffi").encode("latin-1"), id="not-utf8-beside"),
        pytest.param(b'other_writers_total{job="a"} 17.0', b'other_writers_total{job="a"} x7.0', id="another-family"),
        pytest.param(b"# a note\n", b"a note #\n", id="a-header-line-no-comment"),
    ],
)
def test_a_forged_seal_over_a_line_the_merge_does_not_change_gets_the_refusal_an_unsealed_file_gets(
    tmp_path: Path, old: bytes, new: bytes
) -> None:
    """The merge taking the file at its seal need not fail on a broken line it does not change: it would write it
    on, checksummed anew as bytes it had checked (a segment it edits, a header, another writer's family), and the
    file would stay broken, vouched for, with no merge ever to refuse it. Whatever the merge checksums anew it
    checks first: the forged seal gets the refusal the file gets unsealed, with the same line."""
    path = written_with_a_note_and_another_writers_family(tmp_path)
    sealed = path.stat()
    original = path.read_bytes()
    changed = original.replace(old, new, 1)
    assert changed != original and len(changed) == len(original)
    path.write_bytes(changed)
    unsealed = refusal(tmp_path)
    os.utime(path, ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    assert refusal(tmp_path) == unsealed
    assert path.read_bytes() == changed


def test_a_forged_seal_over_a_line_in_a_segment_no_merge_changed_yet_is_refused_when_one_does(tmp_path: Path) -> None:
    """A broken line in a segment the merge leaves as it is goes on unchecked, with the checksum claimed for it:
    the limit of taking a file at its seal (vouching.py). The next merge that changes that segment fails on it, in
    the same process too, where the document is cached: its claims are checked then, and the file is refused with
    its line, as the next process refuses it, not with a bare ValueError from deep in the merge."""
    path = written_file(tmp_path)
    sealed = path.stat()
    line = b'fraisier_deployment_duration_seconds_count{provider="provider_050",status="success"} 1.0\n'
    path.write_bytes(path.read_bytes().replace(line, line.replace(b" 1.0", b" x.0"), 1))
    os.utime(path, ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    store = TextfileStore(tmp_path)
    record(store, events.deployment_complete, "provider_003", "api", "success", 2.0)
    with pytest.raises(CorruptTextfileError, match=r'fraisier.prom:\d+: expected float as value, got "x.0"'):
        record(store, events.deployment_complete, "provider_050", "api", "success", 2.0)
