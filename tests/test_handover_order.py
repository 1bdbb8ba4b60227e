"""store/handover_order.py: the counter that numbers hand-overs, shared by processes and users, whatever a writer
of the directory leaves in its place."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraisier_textfile.store import fs, handover_order, process
from fraisier_textfile.store.handover_order import SEQUENCE_FILE, new_id, note_merged, sequence_of

NUMBER = """
import sys
from pathlib import Path
from fraisier_textfile.store import fs, handover_order
directory = fs.open_directory(Path(sys.argv[1]))
print(" ".join(str(handover_order.sequence_of(handover_order.new_id(directory))) for _ in range(int(sys.argv[2]))))
"""


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[fs.Directory]:
    opened = fs.open_directory(tmp_path)
    assert opened is not None
    yield opened
    opened.close()


def test_processes_numbering_at_once_never_share_a_number(tmp_path: Path) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", NUMBER, str(tmp_path), "50"], stdout=subprocess.PIPE,
                                text=True) for _ in range(8)]
    numbers = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        numbers += [int(number) for number in out.split()]
    assert sorted(numbers) == list(range(1, 401))


def test_ids_sort_in_the_order_they_were_numbered(directory: fs.Directory) -> None:
    ids = [new_id(directory) for _ in range(12)]  # 9 -> 10: string order must still be numeric order
    assert sorted(ids) == ids
    assert [sequence_of(handover_id) for handover_id in ids] == list(range(1, 13))


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory", "garbage", "huge", "hard link"])
def test_a_counter_a_writer_replaced_numbers_without_hanging_raising_or_writing_through(
    directory: fs.Directory, tmp_path: Path, planted: str
) -> None:
    path = tmp_path / SEQUENCE_FILE
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.write_bytes(b"7 3\n")
    if planted == "symlink":
        path.symlink_to(elsewhere)
    elif planted == "fifo":
        os.mkfifo(path)
    elif planted == "directory":
        path.mkdir()
    elif planted == "garbage":
        path.write_bytes(b"\xff\x00 not a number -12\n")
    elif planted == "huge":
        path.write_bytes(b"9" * (1 << 20))
    else:
        os.link(elsewhere, path)
    number = sequence_of(new_id(directory))
    assert number is not None and number >= 0
    note_merged(directory, 5, None)
    assert elsewhere.read_bytes() == b"7 3\n"
    elsewhere.unlink()


def test_the_counter_moves_past_hand_overs_numbered_after_a_power_loss(directory: fs.Directory) -> None:
    """Not fsynced, the counter may go back; a merger that listed later numbers moves it on."""
    for _ in range(3):
        new_id(directory)
    note_merged(directory, 40, None)
    assert sequence_of(new_id(directory)) == 41


def test_too_many_waiting_refuses_a_new_hand_over_in_one_line(directory: fs.Directory) -> None:
    note_merged(directory, 0, None)
    counter = os.open(SEQUENCE_FILE, os.O_WRONLY | os.O_CREAT, 0o664, dir_fd=directory.descriptor)
    os.pwrite(counter, f"{handover_order.PENDING_LIMIT} 0\n".encode(), 0)
    os.close(counter)
    with pytest.raises(handover_order.TooManyWaiting, match="hand-overs wait unapplied"):
        new_id(directory)


HOLD_THE_COUNTER = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_counter_whose_lock_a_writer_holds_for_ever_still_numbers(directory: fs.Directory, tmp_path: Path) -> None:
    """The writer holding it cannot hang a deployment's hand-over: past a short wait the counter is read and
    written without its lock."""
    first = sequence_of(new_id(directory))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_COUNTER, str(tmp_path / SEQUENCE_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        numbers = [sequence_of(new_id(directory)) for _ in range(3)]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert first is not None and numbers == [first + 1, first + 2, first + 3]


def test_a_process_waits_for_a_counter_held_for_ever_only_once(
    directory: fs.Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment recording many events while a writer holds the counter's lock waits for it at the first
    hand-over only: the later ones try the lock once and number without it. Counted by the tries, not timed."""
    monkeypatch.setattr(process, "_met", set())
    sequence_of(new_id(directory))  # the counter exists before the holder opens it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_COUNTER, str(tmp_path / SEQUENCE_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tries: list[int] = []
    real_flock = fcntl.flock

    def counted_flock(descriptor: int, operation: int) -> None:
        tries[-1] += 1
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", counted_flock)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for _ in range(3):
            tries.append(0)
            new_id(directory)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert tries[0] > 1 and tries[1:] == [1, 1]


def test_the_counter_says_whether_hand_overs_were_numbered_since_the_last_merge(directory: fs.Directory) -> None:
    """What a racing record call reads, without the counter's lock, to join the hand-overs waiting: none before the
    first hand-over, some once one is numbered, none once a merge noted it took them, and none for a counter
    holding garbage (a writer of the directory is trusted with the metrics, not with this process's choices)."""
    assert not handover_order.numbered_since_merge(directory)
    newest = sequence_of(new_id(directory))
    assert newest is not None
    assert handover_order.numbered_since_merge(directory)
    note_merged(directory, newest, None)
    assert not handover_order.numbered_since_merge(directory)
    (Path(directory.path) / SEQUENCE_FILE).write_text("12 x\n")
    assert not handover_order.numbered_since_merge(directory)


def test_the_counter_is_written_at_one_width_that_earlier_versions_read(directory: fs.Directory) -> None:
    """Every write covers the one before (no ftruncate under the counter's lock); a counter an earlier version
    wrote shorter, or that it shortens again after us, reads back as the two numbers it holds."""
    for _ in range(3):
        new_id(directory)
    data = (Path(directory.path) / SEQUENCE_FILE).read_bytes()
    assert data.split() == [b"3", b"0"]
    assert len(data) == 2 * 20 + 1
    (Path(directory.path) / SEQUENCE_FILE).write_bytes(b"7 2\n")  # an earlier version's, shortened
    assert sequence_of(new_id(directory)) == 8
    assert (Path(directory.path) / SEQUENCE_FILE).read_bytes().split() == [b"8", b"2"]


def test_a_counter_another_writer_makes_between_our_two_looks_is_used_not_skipped(
    directory: fs.Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers number their first hand-overs at once: both find no counter, one makes it, the other's O_EXCL
    make fails. That one must open the counter just made, not number its hand-over 0 (a number shared with other
    such writers, and the test of 8 processes numbering at once then failed now and then)."""
    real_open = os.open
    made_by_another: list[bool] = []

    def open_after_another_made_it(path: str, flags: int, *arguments: object, **options: object) -> int:
        if path == SEQUENCE_FILE and not flags & os.O_CREAT and not made_by_another:
            made_by_another.append(True)
            os.close(real_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o664, **options))  # type: ignore[arg-type]
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(path, flags, *arguments, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_after_another_made_it)
    assert sequence_of(new_id(directory)) == 1
    assert made_by_another
