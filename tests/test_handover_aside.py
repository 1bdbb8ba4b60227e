"""Hand-overs that can never be applied are set aside (store/handover_aside.py): kept up to a bound and counted,
said once, whatever the entry is (a FIFO swapped in is never opened), and only what can never succeed: an error
that may pass fails the merge, and the next applies the hand-over."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import TextfileWriteError
from fraisier_textfile.store import fs, handover_aside, handover_codec, handovers

from .processes import binary
from .test_handovers import error_count, handover_files
from .values import sample_values


def store_with_unreadable_hand_overs(textfile_dir: Path, count: int) -> tuple[TextfileStore, Path]:
    """A store whose file exists, and ``count`` hand-overs no merge can read in its hand-over directory."""
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    for number in range(count):
        (directory / f"{handovers.id_for(number + 1)}.json").write_text("{not json")
    return store, directory


def test_hand_overs_set_aside_are_kept_up_to_a_bound_and_counted(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handover_aside, "SET_ASIDE_LIMIT", 3)
    store, _ = store_with_unreadable_hand_overs(textfile_dir, 5)
    store.merge(Changes())
    assert handovers.wait_for_removals()
    assert [name.endswith(".unreadable") for name in handover_files(textfile_dir)] == [True] * 3
    assert sample_values(store.path)[handovers.SET_ASIDE_FAMILY] == 3
    assert sample_values(store.path)[handovers.PENDING_FAMILY] == 0


def test_a_merge_that_sets_many_hand_overs_aside_lists_their_directory_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: each hand-over set aside listed the directory again to count those kept (SET_ASIDE_LIMIT), so a merge
    that met N unreadable hand-overs made N listings of a directory that held them all: quadratic, 8.7 s for one
    merge over 5,000 of them, which a record call or a scrape paid. The count comes from the merge's one listing."""
    store, directory = store_with_unreadable_hand_overs(textfile_dir, 20)
    (directory / "bad name.json").write_text("{not json")
    listings: list[str] = []
    names, entries = fs.Directory.names, fs.Directory.entries

    def counted_names(self: fs.Directory) -> list[str]:
        listings.append(str(self.path))
        return names(self)

    def counted_entries(self: fs.Directory) -> list[os.DirEntry[str]]:
        listings.append(str(self.path))
        return entries(self)

    monkeypatch.setattr(fs.Directory, "names", counted_names)
    monkeypatch.setattr(fs.Directory, "entries", counted_entries)
    store.merge(Changes())
    handover_listings = [path for path in listings if path == str(directory)]
    assert len(handover_listings) <= 2  # the merge's, and the look for late hand-overs after it
    assert [name.endswith(".unreadable") for name in handover_files(textfile_dir)] == [True] * 21
    assert sample_values(store.path)[handovers.SET_ASIDE_FAMILY] == 21


def one(error_type: str) -> Changes:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", error_type)
    return changes


def test_a_hand_over_swapped_for_a_fifo_after_the_listing_is_set_aside_unopened(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The listing saw a regular file; a writer of the directory swapped it for a FIFO before the merge read it.
    Opened without blocking and found not a regular file, it is set aside as one seen so at the listing is, and
    the merge goes on."""
    from .test_hostile_entries import within

    store = TextfileStore(textfile_dir)
    store.hand_over(one("swapped"))
    [swapped] = (textfile_dir / handovers.HANDOVER_DIRECTORY).glob("*.json")
    store.hand_over(one("kept"))
    listed = handovers.pending

    def then_swapped(directory: fs.Directory) -> tuple[list[str], int, list[str], int]:
        found = listed(directory)
        swapped.unlink()
        os.mkfifo(swapped)
        return found

    monkeypatch.setattr(handovers, "pending", then_swapped)
    within(30, lambda: store.merge(one("merged")))
    values = sample_values(store.path)
    assert (error_count(values, "kept"), error_count(values, "merged"), error_count(values, "swapped")) == (1, 1, 0)
    assert stat.S_ISFIFO(os.lstat(swapped.with_suffix(handover_aside.SET_ASIDE_SUFFIX)).st_mode)
    assert values[handovers.SET_ASIDE_FAMILY] == 1
    assert f"the hand-over {swapped} cannot be applied (it is a FIFO, not a regular file" in caplog.text


@pytest.mark.parametrize("number", [errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_a_transient_error_reading_a_hand_over_fails_that_merge_and_the_next_applies_it(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, number: int
) -> None:
    """Only what can never succeed is set aside. An I/O error, or no descriptor or memory left for the moment (a
    mock: none of them can be had for real at that one read), fails the merge as before: its caller keeps its
    events, and the hand-over waits for the next merge."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    read_regular = fs.Directory.read_regular

    def failing(self: fs.Directory, name: str, limit: int | None = None, largest: int | None = None) -> bytes:
        if name.endswith(handovers.SUFFIX):
            raise OSError(number, os.strerror(number))
        return read_regular(self, name, limit, largest)

    monkeypatch.setattr(fs.Directory, "read_regular", failing)
    changes = one("merged")
    with pytest.raises(TextfileWriteError, match=os.strerror(number)):
        store.merge(changes)
    assert changes
    assert [name.endswith(handovers.SUFFIX) for name in handover_files(textfile_dir)] == [True]
    monkeypatch.undo()
    store.merge(changes)
    values = sample_values(store.path)
    assert (error_count(values, "handed"), error_count(values, "merged")) == (1, 1)
    assert values[handovers.SET_ASIDE_FAMILY] == 0


def test_past_the_bound_an_entry_named_as_a_hand_over_is_deleted_unopened_or_left_and_logged_once(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past SET_ASIDE_LIMIT what cannot be applied is deleted: a FIFO by its name, never opened. A directory
    cannot be: it is left with what it holds, logged once (not at every merge), and no merge fails on it, nor is
    started again and again for it (a look for hand-overs waiting ignores it)."""
    from .test_hostile_entries import within

    monkeypatch.setattr(handover_aside, "SET_ASIDE_LIMIT", 0)
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    fifo = directory / f"{handovers.id_for(100)}.json"
    os.mkfifo(fifo)
    planted = directory / f"{handovers.id_for(101)}.json"
    planted.mkdir()
    (planted / "inside").write_text("kept\n")
    for _ in range(3):
        within(30, lambda: store.merge(Changes()))
    assert not os.path.lexists(fifo)
    assert (planted / "inside").read_text() == "kept\n"
    assert error_count(sample_values(store.path), "handed") == 1
    [line] = [line for line in caplog.text.splitlines() if str(planted) in line]
    assert "is a directory, not a regular file" in line and "left in place" in line, line
    assert not store.handovers_waiting()


def test_a_hand_over_larger_than_any_fraisier_writes_is_set_aside_unread(textfile_dir: Path) -> None:
    """Bug: a hand-over was read whole, whatever its size. A sparse file of 64 GiB named as one (a member of the
    group's `truncate -s 64G`; no disk taken) made every merge read until its memory ran out: every record call
    failed, or was killed by the OOM killer, until a human removed it. Past handover_codec.LARGEST it is set aside
    by its size, before a byte is read. Run with its address space bounded (1 GiB), so that the old read fails fast
    rather than take the machine's memory."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    huge = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    with open(huge, "wb") as file:
        file.truncate(64 << 30)
    command = [binary("prlimit"), f"--as={1 << 30}", sys.executable, "-m", "fraisier_textfile", "record", "error",
               "--provider", "bare_metal", "--error-type", "recorded"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, FRAISIER_TEXTFILE_DIR=str(textfile_dir)))
    assert result.returncode == 0, result.stderr
    values = sample_values(store.path)
    assert (error_count(values, "handed"), error_count(values, "recorded")) == (1, 1)
    assert values[handovers.SET_ASIDE_FAMILY] == 1
    assert huge.with_suffix(handover_aside.SET_ASIDE_SUFFIX).stat().st_size == 64 << 30
    [line] = [line for line in result.stderr.splitlines() if str(huge) in line]
    assert f"too large for a hand-over: {64 << 30} bytes, more than {handover_codec.LARGEST}" in line, line


def test_a_hand_over_of_the_largest_size_is_read(textfile_dir: Path) -> None:
    """The bound is on what is read, not one byte less: a hand-over of exactly handover_codec.LARGEST bytes (its
    JSON padded with blanks) is applied."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    data = handover_codec.encode(one("largest"), SCHEMA)
    largest = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    largest.write_bytes(data + b" " * (handover_codec.LARGEST - len(data)))
    store.merge(Changes())
    values = sample_values(store.path)
    assert (error_count(values, "handed"), error_count(values, "largest")) == (1, 1)
    assert values[handovers.SET_ASIDE_FAMILY] == 0


def test_an_entry_removed_while_it_is_set_aside_is_not_said_to_be_left_in_place(
    textfile_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The member of the group who planted a FIFO may remove it while a merge sets it aside: the rename then finds
    nothing (a real ENOENT). Nothing is left in place, so no line may tell the operator to remove it."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    planted = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    os.mkfifo(planted)
    rename = fs.Directory.rename

    def removed_just_before(self: fs.Directory, source: str, destination: str) -> None:
        if source == planted.name:
            planted.unlink()
        rename(self, source, destination)

    monkeypatch.setattr(fs.Directory, "rename", removed_just_before)
    store.merge(Changes())
    values = sample_values(store.path)
    assert error_count(values, "handed") == 1
    assert values[handovers.SET_ASIDE_FAMILY] == 0
    assert str(planted) not in caplog.text


GROWN_AFTER_ITS_SIZE_WAS_READ = """
import sys
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes
from fraisier_textfile.store import handover_codec
handover_codec.LARGEST = 1000  # past this test's own hand-over, short of /proc/cpuinfo
TextfileStore(sys.argv[1]).merge(Changes())
"""


def test_a_hand_over_that_holds_more_than_its_size_said_is_read_no_further_than_the_bound(textfile_dir: Path) -> None:
    """Bug: the bound was checked on the size fstat gave, and the read went on to the end of the file. A writer of the
    directory who grows the file between the two (truncate to 64 GiB, back, in a loop) made the merge read it all.
    The read stops past the bound too. Here a file that says it holds 0 bytes and holds more (a /proc file
    bind-mounted in its place, in a mount namespace of the test's own; the bound lowered to 1,000 bytes): refused as
    too large, not read as a hand-over."""
    store = TextfileStore(textfile_dir)
    store.hand_over(one("handed"))
    planted = textfile_dir / handovers.HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    planted.write_bytes(b"")
    assert os.stat("/proc/cpuinfo").st_size == 0 and len(Path("/proc/cpuinfo").read_bytes()) > 1000
    inner = 'mount --bind /proc/cpuinfo "$1" && shift && exec "$@"'
    result = subprocess.run(
        [binary("unshare"), "--mount", "--propagation", "private", "sh", "-c", inner, "sh", str(planted),
         sys.executable, "-c", GROWN_AFTER_ITS_SIZE_WAS_READ, str(textfile_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if str(planted) in line]
    assert "too large for a hand-over: 1001 bytes read so far, more than 1000" in line, line
    assert error_count(sample_values(store.path), "handed") == 1
