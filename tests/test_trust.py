"""The trust model (docs/monitoring.md, "Who may write the textfile directory"): a writer of the directory is
trusted with the metrics, never with what root does. Each attack of issue 15 is run for real: a second real
user (setpriv) owns or shares the directory and plants symlinks, in a loop while root merges; nothing outside
the directory is ever deleted, chmodded or followed."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError, UnexpectedFileError
from fraisier_textfile.store import handovers
from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY

from .processes import http_get, node_exporter
from .test_inflight import DEPLOYER, GROUP, OBSERVER, Users, shared_dir, users  # noqa: F401  (fixtures)
from .values import sample_values

Snapshot = dict[str, tuple[int, int, bytes]]


@pytest.fixture
def victim() -> Iterator[Path]:
    """A directory of root's that the deployer may read but not write: what it must never make root touch."""
    directory = Path(tempfile.mkdtemp(prefix="victim-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def snapshot(directory: Path) -> Snapshot:
    """Every entry's mode, owner and content."""
    result = {}
    for entry in sorted(directory.iterdir()):
        status = entry.lstat()
        result[entry.name] = (status.st_mode, status.st_uid, entry.read_bytes() if entry.is_file() else b"")
    return result


def as_deployer(setup: Users, script: str, *arguments: str) -> subprocess.Popen[str]:
    """Run ``script`` (Python, standard library only) as the deployer, a member of the directory's group."""
    command = [setup.setpriv, f"--reuid={DEPLOYER}", f"--regid={GROUP}", "--init-groups", setup.python, "-c", script]
    return subprocess.Popen(
        [*command, *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=setup.environment, cwd=setup.root,
    )


def finish(process: subprocess.Popen[str]) -> str:
    """Close the attacker's stdin (its signal to stop), wait for it, and return what it printed."""
    stdout, stderr = process.communicate(timeout=60)  # closes its stdin first
    assert process.returncode == 0, stderr
    return stdout


def one_event() -> Changes:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    return changes


def test_a_hand_over_directory_swapped_for_a_symlink_never_makes_root_clean_up_its_target(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: the clean-up of stale temporaries scanned .fraisier-handover by path, following a symlink a writer
    put there, and root deleted every dot-file older than an hour in its target."""
    for name in (".bashrc", ".old-secret", ".fraisier-handover-like.json"):
        (victim / name).write_text("root's\n")
        os.utime(victim / name, (time.time() - 7200, time.time() - 7200))
    before = snapshot(victim)
    plant = "import os, sys; os.symlink(sys.argv[2], os.path.join(sys.argv[1], '.fraisier-handover'))"
    finish(as_deployer(users, plant, str(shared_dir), str(victim)))
    changes = one_event()
    with pytest.raises(UnexpectedFileError, match=f"^{shared_dir / HANDOVER_DIRECTORY} is .*symlink"):
        TextfileStore(shared_dir, lock_timeout=2).merge(changes)
    assert changes  # refused: kept for a later merge
    assert snapshot(victim) == before


# The deployer's side of the symlink-swap attacks: swap ``directory`` for a symlink to root's ``victim`` and back,
# as fast as it can, until stdin closes (each turn first ``refill``s it with files named like root's, for root's
# merges to remove); print the number of swaps.
SWAPPING = """
import os, select, sys


def swap_until_stdin_closes(directory, real, victim, refill=lambda: None, spin=20):
    swaps = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        refill()
        os.rename(directory, real)
        os.symlink(victim, directory)
        for _ in range(spin):
            pass
        os.unlink(directory)
        os.rename(real, directory)
        swaps += 1
    print(swaps)
"""

# The marker attack: fake markers of dead deployments named like root's files.
SWAP_MARKER_DIRECTORY = SWAPPING + """
import json
textfile, victim, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
markers = os.path.join(textfile, ".fraisier-inflight")
os.mkdir(markers, 0o775)
dead = json.dumps({"provider": "bare_metal", "fraise_type": "api"})  # PID 1 with another start time: dead
number = 0


def refill():
    global number
    if not os.path.lexists(os.path.join(markers, f"1-999999999-v{number % count}")):
        number += 1
        try:  # written under a dot name, which a merger may take for a dead writer's litter and remove first
            with open(os.path.join(markers, f".1-999999999-v{number % count}"), "w") as file:
                file.write(dead)
            os.rename(os.path.join(markers, f".1-999999999-v{number % count}"),
                      os.path.join(markers, f"1-999999999-v{number % count}"))
        except OSError:
            pass


swap_until_stdin_closes(markers, os.path.join(textfile, ".real-inflight"), victim, refill)
"""


def merged_while_swapping(attacker: subprocess.Popen[str], directory: Path,
                          after_each: Callable[[], object] = lambda: None) -> tuple[int, int, int]:
    """Root merges one event at a time for 8 s while ``attacker`` swaps; (swaps, merges, merges refused)."""
    merged = refused = 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and attacker.poll() is None:
            try:
                TextfileStore(directory, lock_timeout=2).merge(one_event())
                merged += 1
            except FraisierTextfileError:
                refused += 1  # the symlink was in place when the merge looked: refused, as it must be
            after_each()
    finally:
        swaps = int(finish(attacker))
    return swaps, merged, refused


@pytest.mark.slow  # 8 s of swaps in a loop
def test_marker_directory_swapped_for_a_symlink_during_merges_never_makes_root_delete_outside(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: markers and applied hand-overs were removed by path after the lock was released, the directory
    resolved again by name: a fake dead marker named like a victim file, and the marker directory swapped for a
    symlink meanwhile, made root delete that file."""
    count = 50
    for number in range(count):
        (victim / f"1-999999999-v{number}").write_text("root's\n")
    before = snapshot(victim)
    attacker = as_deployer(users, SWAP_MARKER_DIRECTORY, str(shared_dir), str(victim), str(count))
    swaps, merged, refused = merged_while_swapping(attacker, shared_dir)
    assert swaps > 100 and merged > 20, (swaps, merged, refused)
    assert snapshot(victim) == before


# The deployer's side of the mkdir/chmod race: each time root makes .fraisier-handover, the empty directory is
# removed (rmdir needs no write access to it, only to its parent) and replaced by a symlink to root's file, then
# that is removed again so that root makes the directory once more.
SWAP_NEW_HANDOVER_DIRECTORY = """
import os, select, sys, time
textfile, target = sys.argv[1], sys.argv[2]
handovers = os.path.join(textfile, ".fraisier-handover")
swaps = turns = 0
while turns % 256 or not select.select([sys.stdin], [], [], 0)[0]:
    turns += 1
    try:
        os.rmdir(handovers)
    except OSError:
        try:  # root's hand-overs in it: removed (group-writable once it has its mode), to empty it again
            for name in os.listdir(handovers):
                os.unlink(os.path.join(handovers, name))
        except OSError:
            pass
        continue
    try:
        os.symlink(target, handovers)
    except FileExistsError:
        continue
    swaps += 1
    time.sleep(0.001)  # long enough for root's next step, which took the name for its new directory
    os.unlink(handovers)
print(swaps)
"""


@pytest.mark.slow  # 8 s of swaps in a loop
def test_a_hand_over_directory_swapped_between_its_mkdir_and_its_mode_never_makes_root_chmod_outside(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: the hand-over directory was made with mkdir, then given its mode with os.chmod on its name, which
    follows a symlink a writer put there in between: root chmodded 0775 any file."""
    secret = victim / "secret"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    before = snapshot(victim)
    attacker = as_deployer(users, SWAP_NEW_HANDOVER_DIRECTORY, str(shared_dir), str(secret))
    handed_over = 0
    try:
        deadline = time.monotonic() + 8
        store = TextfileStore(shared_dir, lock_timeout=2)
        while time.monotonic() < deadline and attacker.poll() is None:
            try:
                store.hand_over(one_event(), durable=False)
                handed_over += 1
            except FraisierTextfileError:
                pass
    finally:
        swaps = int(finish(attacker))
    assert swaps > 100, (swaps, handed_over)
    assert snapshot(victim) == before
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


DEPLOYER_RECORDS = """
import sys
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
store = TextfileStore(sys.argv[1])
changes = Changes()
events.deployment_error(changes, "bare_metal", "deployer")
store.hand_over(changes)
if sys.argv[2] == "merge":
    store.merge(Changes())
"""


def test_root_and_a_deployer_of_the_group_take_turns_in_a_shared_directory_under_umask_077(
    users: Users, shared_dir: Path  # noqa: F811
) -> None:
    """Whoever creates the hand-over directory, its counter or the file first, the other user of the group can
    hand over, number and merge after it, whatever either's umask."""
    previous = os.umask(0o077)
    try:
        store = TextfileStore(shared_dir, lock_timeout=5)
        for _turn in range(3):
            store.hand_over(one_event())  # root first: the directory and its counter are root's
            finish(as_deployer(users, "import os; os.umask(0o077)\n" + DEPLOYER_RECORDS, str(shared_dir), "merge"))
            store.merge(one_event())
            finish(as_deployer(users, "import os; os.umask(0o077)\n" + DEPLOYER_RECORDS, str(shared_dir), "hand"))
    finally:
        os.umask(previous)
    store.merge(Changes())
    values = sample_values(shared_dir / "fraisier.prom")
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 6
    assert values['fraisier_deployment_errors_total{provider="bare_metal",error_type="deployer"}'] == 6
    counter = shared_dir / HANDOVER_DIRECTORY / "sequence"
    assert stat.S_IMODE(counter.stat().st_mode) == 0o664
    assert counter.read_text().split() == ["9", "9"]  # 9 hand-overs numbered in turn by both; none waiting


# The same attack on the hand-over directory: empty hand-overs named like root's files, applied by root's
# merges and removed after the lock is released (by a background thread past four), while the directory is
# swapped for a symlink to root's directory and back.
SWAP_HANDOVER_DIRECTORY = SWAPPING + """
textfile, victim, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
handovers = os.path.join(textfile, ".fraisier-handover")
os.mkdir(handovers, 0o775)
empty = '{"version":1,"added":[],"observed":[],"latest":[],"maximum":[],"active_providers":[],"retired_markers":[]}'


def refill():
    for number in range(count):
        name = os.path.join(handovers, f"s{number:020d}-1-victim.json")
        if not os.path.lexists(name):
            try:
                with open(os.path.join(handovers, ".tmp"), "w") as file:
                    file.write(empty)
                os.rename(os.path.join(handovers, ".tmp"), name)
            except OSError:
                pass


swap_until_stdin_closes(handovers, os.path.join(textfile, ".real-handover"), victim, refill)
"""


@pytest.mark.slow  # 8 s of swaps in a loop
def test_hand_over_directory_swapped_for_a_symlink_during_merges_never_makes_root_delete_outside(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    count = 12  # more than INLINE_REMOVALS: most are removed by the background thread, some inline
    for number in range(count):
        (victim / f"s{number:020d}-1-victim.json").write_text("root's\n")
    before = snapshot(victim)
    attacker = as_deployer(users, SWAP_HANDOVER_DIRECTORY, str(shared_dir), str(victim), str(count))
    swaps, merged, refused = merged_while_swapping(attacker, shared_dir, lambda: handovers.wait_for_removals(5))
    assert swaps > 100 and merged > 20, (swaps, merged, refused)
    assert snapshot(victim) == before


# The deployer owns the directory the textfile directory is in (Fraisier's /var/lib/fraisier): it swaps a directory
# on the textfile directory's path (``metrics`` itself, or the ``middle`` one above it) for a symlink to root's
# ``victim`` and back, as fast as it can, until stdin closes, and prints the number of swaps. Each swap is atomic
# (renameat2's RENAME_EXCHANGE, through ctypes): the name is always the directory or the symlink, never missing, so
# that every merge of root's is either refused or counted in the real directory.
EXCHANGE = """
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)


def exchange(first, second):
    if libc.renameat2(-100, first.encode(), -100, second.encode(), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), first)


directory, victim = sys.argv[1], sys.argv[2]
link = directory + ".link"
os.symlink(victim, link)
print("ready", flush=True)
swaps = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    exchange(directory, link)  # the symlink in place
    for _ in range(200):
        pass
    exchange(directory, link)  # the directory back
    swaps += 1
os.unlink(link)
print(swaps)
"""


@pytest.fixture
def deployers_parent(users: Users) -> Iterator[Path]:  # noqa: F811
    """A directory of the deployer's own (Fraisier's /var/lib/fraisier) holding the textfile directory ``metrics``,
    and ``middle/metrics``."""
    parent = Path(tempfile.mkdtemp(prefix="deployer-home-", dir=users.root))
    os.chmod(parent, 0o755)
    for directory in (parent / "metrics", parent / "middle", parent / "middle" / "metrics"):
        directory.mkdir(mode=0o755)
    for directory in (parent, parent / "metrics", parent / "middle", parent / "middle" / "metrics"):
        os.chown(directory, pwd.getpwnam(DEPLOYER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


TIMEOUT = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
BY_THE_DEPLOYER = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="deployer"}'
# node_exporter orders the labels by name
SERVED_TIMEOUT = 'fraisier_deployment_errors_total{error_type="timeout",provider="bare_metal"}'
SERVED_BY_THE_DEPLOYER = 'fraisier_deployment_errors_total{error_type="deployer",provider="bare_metal"}'


def test_root_merges_into_the_deploying_users_directory_and_leaves_it_to_that_user(
    users: Users, deployers_parent: Path  # noqa: F811
) -> None:
    """Bug: root refused a textfile directory whose parent the deploying user owns, Fraisier's own set-up
    (/var/lib/fraisier/textfile): root's events were lost, one warning each. Root now merges and hands over
    there; what it makes there (the lock file, the hand-over directory and its counter, a missing textfile
    directory) is the deployer's, as if the deployer had made it, so that the deployer's next merge works."""
    deployer = pwd.getpwnam(DEPLOYER).pw_uid
    for textfile in (deployers_parent / "metrics", deployers_parent / "made" / "by" / "root"):
        store = TextfileStore(textfile, lock_timeout=2)
        store.merge(one_event())
        store.hand_over(one_event())
        made = [textfile, *textfile.parents][:-len(deployers_parent.parts)]  # the textfile directory, those above
        for path in (*made, textfile / "fraisier.prom.lock", textfile / HANDOVER_DIRECTORY,
                     textfile / HANDOVER_DIRECTORY / "sequence"):
            assert path.stat().st_uid == deployer, path
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o755
        finish(as_deployer(users, DEPLOYER_RECORDS, str(textfile), "merge"))
        values = sample_values(textfile / "fraisier.prom")
        assert (values[TIMEOUT], values[BY_THE_DEPLOYER]) == (2, 1)


def exchanged_while_merging(users: Users, swapped: Path, textfile: Path, victim: Path,  # noqa: F811
                            rounds: int) -> tuple[int, list[str]]:
    """Root merges and hands over one event at a time while the deployer swaps ``swapped`` for a symlink to
    ``victim``; (events written, refusals)."""
    attacker = as_deployer(users, EXCHANGE, str(swapped), str(victim))
    assert attacker.stdout is not None and attacker.stdout.readline() == "ready\n"
    written, refusals = 0, []
    try:
        for _ in range(rounds):
            store = TextfileStore(textfile, lock_timeout=2)
            for attempt in (store.merge, store.hand_over):
                changes = one_event()
                try:
                    attempt(changes)
                    written += 1
                except FraisierTextfileError as error:
                    assert changes  # refused: kept for a later merge
                    refusals.append(str(error))
    finally:
        assert int(finish(attacker)) > 0
    return written, refusals


@pytest.mark.parametrize("swapped", ["metrics", "middle"])
def test_root_never_writes_through_a_textfile_directory_another_user_can_swap_for_a_symlink(
    users: Users, deployers_parent: Path, victim: Path, swapped: str  # noqa: F811
) -> None:
    """Bug: the textfile directory was the one path resolved by name, and root would follow it wherever the
    user owning a parent pointed it (so root refused such a directory). Root now walks the path a component at a
    time: a symlink where the deployer may write is refused in one line, never followed, while the directory
    itself is used; every event root wrote is in the real directory, exactly once."""
    textfile = deployers_parent / "metrics" if swapped == "metrics" else deployers_parent / "middle" / "metrics"
    (victim / "metrics").mkdir()  # what the middle symlink would lead root to
    (victim / "metrics" / "fraisier.prom").write_text("root's\n")
    before = snapshot(victim), snapshot(victim / "metrics")
    written, refusals = exchanged_while_merging(users, deployers_parent / swapped, textfile, victim, 300)
    assert (snapshot(victim), snapshot(victim / "metrics")) == before
    assert written > 0 and refusals, (written, refusals[:3])
    link = deployers_parent / swapped
    for refusal in refusals:
        assert refusal.startswith(f"{textfile}: {link} is a symlink (to {victim}) in {deployers_parent}, which "
                                  f"{DEPLOYER} may write"), refusal
        assert "\n" not in refusal
    TextfileStore(textfile, lock_timeout=2).merge_backlog()
    assert sample_values(textfile / "fraisier.prom")[TIMEOUT] == written
    with node_exporter(textfile) as url:
        values = sample_values(http_get(url))
    assert (values["node_textfile_scrape_error"], values[SERVED_TIMEOUT]) == (0, written)


# The deployer's side of a race in its own directory: ``count`` events, each merged or handed over.
DEPLOYER_RACES = """
import sys
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
store = TextfileStore(sys.argv[1], lock_timeout=5)
for _ in range(int(sys.argv[2])):
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "deployer")
    store.merge_or_hand_over(changes, wait=0.05)
store.merge_backlog()
"""


def test_root_and_the_deploying_user_racing_in_that_users_directory_lose_and_double_count_nothing(
    users: Users, deployers_parent: Path  # noqa: F811
) -> None:
    """Root first (its lock file, hand-over directory and counter in the deployer's directory), then both race:
    neither is locked out, and every event of each is counted once, as node_exporter serves it."""
    textfile = deployers_parent / "metrics"
    count = 150
    store = TextfileStore(textfile, lock_timeout=5)
    store.hand_over(one_event())
    racer = as_deployer(users, DEPLOYER_RACES, str(textfile), str(count))
    for _ in range(count - 1):
        store.merge_or_hand_over(one_event(), wait=0.05)
    finish(racer)
    store.merge_backlog()
    with node_exporter(textfile) as url:
        values = sample_values(http_get(url))
    assert (values["node_textfile_scrape_error"], values[SERVED_TIMEOUT], values[SERVED_BY_THE_DEPLOYER]) == (
        0, count, count)


# The deployer's side of the lock file and textfile attack, in its own directory: each turn, fraisier.prom.lock and
# fraisier.prom are replaced by symlinks to root's files, then by hard links to them, then removed (root makes
# them again).
PLANT_FILES = """
import os, select, sys
textfile, secret, lock = sys.argv[1:]
print("ready", flush=True)
turns = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    for make in (os.symlink, os.link):
        for target, name in ((lock, "fraisier.prom.lock"), (secret, "fraisier.prom")):
            path = os.path.join(textfile, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            try:
                make(target, path)
            except FileExistsError:
                pass
    for name in ("fraisier.prom.lock", "fraisier.prom"):
        try:
            os.unlink(os.path.join(textfile, name))
        except FileNotFoundError:
            pass
    turns += 1
print(turns)
"""


def test_root_never_writes_reads_or_chmods_through_a_lock_file_or_textfile_the_deployer_swaps_in_its_directory(
    users: Users, deployers_parent: Path, victim: Path  # noqa: F811
) -> None:
    """Root merges, hands over and reads in the deployer's own directory while the deployer replaces the lock file
    and the textfile by symlinks and hard links to root's files: each is refused in one line, unread, and root's
    files stay as they were."""
    textfile = deployers_parent / "metrics"
    secrets = []
    for name in ("group-secret", "group-lock"):
        (victim / name).write_text(f"{name}: NOT-FOR-THE-DEPLOYER, the group may read and write it\n")
        os.chown(victim / name, 0, grp.getgrnam(GROUP).gr_gid)
        os.chmod(victim / name, 0o660)
        secrets.append(str(victim / name))
    before = snapshot(victim)
    attacker = as_deployer(users, PLANT_FILES, str(textfile), *secrets)
    assert attacker.stdout is not None and attacker.stdout.readline() == "ready\n"
    refusals, done = [], 0
    try:
        for _ in range(300):
            store = TextfileStore(textfile, lock_timeout=2)
            for attempt in (store.merge, store.hand_over, store.read):
                try:
                    attempt(*([] if attempt == store.read else [one_event()]))
                    done += 1
                except FraisierTextfileError as error:
                    refusals.append(str(error))
    finally:
        assert int(finish(attacker)) > 0
    assert snapshot(victim) == before
    assert done and refusals
    assert all("\n" not in refusal and "NOT-FOR-THE-DEPLOYER" not in refusal for refusal in refusals)


def test_root_never_chmods_a_file_of_its_own_a_writer_moved_into_the_place_of_the_lock_file_or_the_counter(
    users: Users, shared_dir: Path  # noqa: F811
) -> None:
    """Bug: root gave mode 0664 to a lock file or hand-over counter of its own it found in place, so that the group
    could share one an older version made under a strict umask. But a writer of the directory may move there any
    file of root's from a directory it may write (one Fraisier run as root left in the directory, say): root made
    it readable by that writer. Only what the store has just made (O_EXCL) gets a mode now."""
    store = TextfileStore(shared_dir, lock_timeout=2)
    store.hand_over(one_event())  # the hand-over directory and its counter
    for name in ("lock-secret", "counter-secret"):
        (shared_dir / name).write_text(f"{name}: root's\n")
        os.chmod(shared_dir / name, 0o600)
    plant = (
        "import os, sys\n"
        "textfile = sys.argv[1]\n"
        "moves = (('lock-secret', 'fraisier.prom.lock'), ('counter-secret', '.fraisier-handover/sequence'))\n"
        "for secret, name in moves:\n"
        "    if os.path.lexists(os.path.join(textfile, name)):\n"
        "        os.unlink(os.path.join(textfile, name))\n"
        "    os.rename(os.path.join(textfile, secret), os.path.join(textfile, name))\n"
    )
    finish(as_deployer(users, plant, str(shared_dir)))
    store.merge(one_event())
    store.hand_over(one_event())
    # The counter of root's that its writers may not read is moved aside by the merge (handover_aside), and the
    # hand-over after it makes a new one: wherever the secret is now, it keeps its owner and mode.
    [counter_secret] = [path for path in (shared_dir / HANDOVER_DIRECTORY).iterdir()
                        if path.is_file() and path.read_text() == "counter-secret: root's\n"]
    for path in (shared_dir / "fraisier.prom.lock", counter_secret):
        status = path.stat()
        assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (0, 0o600), path


def test_root_never_writes_or_chmods_a_file_hard_linked_into_the_directory(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: the lock file and the hand-over counter are opened for writing by name, and root gave them mode
    0664 when it owned them: a deployer hard-linking there a file of root's it may write (its group's) made root
    chmod it world-readable and truncate it to the counter's few bytes. Even with fs.protected_hardlinks=0, where
    any file may be linked, root never writes or chmods a file with another name elsewhere."""
    store = TextfileStore(shared_dir, lock_timeout=2)
    store.hand_over(one_event())  # the hand-over directory and its counter, as root makes them
    store.merge(Changes())
    secrets = {}
    for name in ("group-secret", "group-lock"):
        (victim / name).write_text(f"{name}: root's, the group may read and write it\n")
        os.chown(victim / name, 0, grp.getgrnam(GROUP).gr_gid)
        os.chmod(victim / name, 0o660)
        secrets[name] = victim / name
    before = snapshot(victim)
    plant = (
        "import os, sys\n"
        "textfile, secret, lock = sys.argv[1:]\n"
        "sequence = os.path.join(textfile, '.fraisier-handover', 'sequence')\n"
        "os.unlink(sequence)\n"
        "os.link(secret, sequence)\n"
        "os.unlink(os.path.join(textfile, 'fraisier.prom.lock'))\n"
        "os.link(lock, os.path.join(textfile, 'fraisier.prom.lock'))\n"
    )
    finish(as_deployer(users, plant, str(shared_dir), str(secrets["group-secret"]), str(secrets["group-lock"])))
    for attempt in (store.hand_over, store.merge, lambda changes: store.merge_or_hand_over(changes, wait=0.1)):
        try:
            attempt(one_event())
        except FraisierTextfileError:
            pass
    with pytest.raises(UnexpectedFileError, match=f"^{shared_dir / 'fraisier.prom.lock'} is a hard link .*remove it"):
        store.merge(one_event())
    assert snapshot(victim) == before


def test_root_writes_a_textfile_directory_whose_parent_belongs_to_another_account_than_its_writers(
    users: Users, deployers_parent: Path  # noqa: F811
) -> None:
    """Debian's layout: /var/lib/prometheus belongs to prometheus, its node-exporter directory to the deploying
    user (the guide's option 2), and root's timers write there. The parent's owner is the system's account, not a
    writer of the directory: root merges."""
    os.chown(deployers_parent, pwd.getpwnam(OBSERVER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    textfile = deployers_parent / "metrics"
    TextfileStore(textfile, lock_timeout=2).merge(one_event())
    assert sample_values(textfile / "fraisier.prom")[
        'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'] == 1


def test_a_textfile_hard_linked_to_another_file_is_refused_without_showing_its_content(
    users: Users, shared_dir: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: a hard link in place of fraisier.prom was read as the textfile, and the parse error quoted its first
    line: with fs.protected_hardlinks=0, a deployer linking /etc/shadow there had root print a password hash in
    its log (and the exporter's error). A file with another name elsewhere is refused, unread, in one line."""
    secret = victim / "group-file"
    secret.write_text("root:$6$NOT-FOR-THE-DEPLOYER:19000:0:99999:7:::\n")
    os.chown(secret, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(secret, 0o660)
    before = snapshot(victim)
    plant = "import os, sys; os.link(sys.argv[1], os.path.join(sys.argv[2], 'fraisier.prom'))"
    finish(as_deployer(users, plant, str(secret), str(shared_dir)))
    store = TextfileStore(shared_dir, lock_timeout=2)
    for attempt in (lambda: store.merge(one_event()), store.read):
        with pytest.raises(UnexpectedFileError, match=f"^{shared_dir / 'fraisier.prom'} is a hard link") as refused:
            attempt()
        assert "NOT-FOR-THE-DEPLOYER" not in str(refused.value) and "\n" not in str(refused.value)
    assert snapshot(victim) == before


# Root's side of the race between its mkdir and its open of what it made: at the open, it asks for the swap and
# waits until it is done, so that the deployer's renames fall exactly in between.
ROOT_MAKES = """
import sys
from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
textfile, name = sys.argv[1:]
made = False


def between_mkdir_and_open(event, arguments):
    global made
    if event == "os.mkdir" and arguments[0] == name:
        made = True
    elif event == "open" and made and arguments[0] == name:
        made = False
        print("swap", flush=True)
        assert sys.stdin.readline() == "swapped\\n"


sys.addaudithook(between_mkdir_and_open)
changes = Changes()
events.deployment_error(changes, "bare_metal", "timeout")
TextfileStore(textfile, lock_timeout=2).hand_over(changes)
print("handed over", flush=True)
"""

# The deployer moves the directory root just made away and a directory of root's in its place, both in a
# directory it owns (a rename within one directory needs no write permission on the directory moved).
MOVE_ROOTS_INTO_PLACE = """
import os, sys
parent, name, roots = sys.argv[1:]
os.rename(os.path.join(parent, name), os.path.join(parent, name + ".made-by-root"))
os.rename(os.path.join(parent, roots), os.path.join(parent, name))
"""


@pytest.mark.parametrize("made", ["textfile directory", "hand-over directory"])
def test_root_never_gives_the_deployer_a_directory_of_its_own_moved_into_the_place_of_one_it_just_made(
    users: Users, deployers_parent: Path, made: str  # noqa: F811
) -> None:
    """Bug: what root made in the deploying user's directory (a missing textfile directory, the hand-over and
    marker directories) was opened by its name after the mkdir, and whatever directory of root's was there got
    its mode and was given to the deployer. The deployer, owning the directory, could rename root's new
    directory away and another directory of root's in that directory into its place in between: root gave it
    that directory, with what is in it. Only an empty directory of root's, as mkdir makes it, is given now."""
    if made == "textfile directory":
        textfile, parent, name = deployers_parent / "new", deployers_parent, "new"
    else:
        textfile, parent, name = deployers_parent / "metrics", deployers_parent / "metrics", HANDOVER_DIRECTORY
    roots = parent / "roots"
    roots.mkdir(mode=0o700)
    (roots / "secret").write_text("root's\n")
    root = subprocess.Popen([users.python, "-c", ROOT_MAKES, str(textfile), name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=users.environment,
                            cwd=users.root)
    assert root.stdin is not None and root.stdout is not None
    try:
        assert root.stdout.readline() == "swap\n"
        finish(as_deployer(users, MOVE_ROOTS_INTO_PLACE, str(parent), name, "roots"))
        root.stdin.write("swapped\n")
        root.stdin.flush()
        root.wait(timeout=60)
    finally:
        root.kill()
        stdout, stderr = root.communicate()
    moved = (parent / name).stat()
    assert (moved.st_uid, stat.S_IMODE(moved.st_mode)) == (0, 0o700), stderr
    assert ((parent / name / "secret").stat().st_uid, (parent / name / "secret").read_text()) == (0, "root's\n")
    assert (root.returncode, stdout) == (0, "handed over\n"), stderr


def test_root_never_reads_a_file_of_its_own_the_deployer_moved_into_place_as_the_textfile(
    users: Users, deployers_parent: Path  # noqa: F811
) -> None:
    """Bug: the deployer, owning the directory, may move there any file of root's from elsewhere in its tree (a
    rename needs no permission on the file): moved into the place of fraisier.prom, root read it as the textfile
    and its parse error quoted it (`sudo fraisier deploy` printed part of a file only root may read to a
    deployer whom sudo allows only Fraisier's commands). As root, a file there that the directory's writers may
    not read is refused, unread, in one line."""
    secret = deployers_parent / "roots-secret"
    secret.write_text("root:$6$NOT-FOR-THE-DEPLOYER:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    textfile = deployers_parent / "metrics"
    move = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"
    finish(as_deployer(users, move, str(secret), str(textfile / "fraisier.prom")))
    store = TextfileStore(textfile, lock_timeout=2)
    for attempt in (lambda: store.merge(one_event()), store.read):
        with pytest.raises(UnexpectedFileError, match=f"^{textfile / 'fraisier.prom'} belongs to root with mode "
                           f"0600, in {textfile}, which {DEPLOYER} may write: .*remove it") as refused:
            attempt()
        assert "NOT-FOR-THE-DEPLOYER" not in str(refused.value) and "\n" not in str(refused.value)
    assert (textfile / "fraisier.prom").read_text() == "root:$6$NOT-FOR-THE-DEPLOYER:19000:0:99999:7:::\n"


def test_root_never_reads_or_writes_a_file_of_its_own_the_deployer_moved_into_place_as_the_counter(
    users: Users, deployers_parent: Path  # noqa: F811
) -> None:
    """Bug: a file of root's only root may read, moved by the deployer into the place of the hand-over counter,
    was read (its first two numbers became the next hand-overs' numbers, names the deployer lists) and overwritten
    with the counter. It is refused as a planted counter is: the hand-over is numbered 0, and handed over."""
    textfile = deployers_parent / "metrics"
    store = TextfileStore(textfile, lock_timeout=2)
    store.hand_over(one_event())  # the hand-over directory and its counter, the deployer's
    secret = deployers_parent / "roots-secret"
    secret.write_text("4242 1717 root's\n")
    secret.chmod(0o600)
    sequence = textfile / HANDOVER_DIRECTORY / "sequence"
    move = "import os, sys; os.unlink(sys.argv[2]); os.rename(sys.argv[1], sys.argv[2])"
    finish(as_deployer(users, move, str(secret), str(sequence)))
    store.hand_over(one_event())
    assert sequence.read_text() == "4242 1717 root's\n"
    assert not [name for name in os.listdir(textfile / HANDOVER_DIRECTORY) if "4243" in name]
    store.merge_backlog()
    assert sample_values(textfile / "fraisier.prom")[TIMEOUT] == 2


def test_root_sets_aside_unread_a_file_of_its_own_the_deployer_moved_into_place_as_a_hand_over(
    users: Users, deployers_parent: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Bug: a file of root's only root may read, moved by the deployer into its hand-over directory under a
    hand-over's name, was refused unread as it must be (what root reads may be quoted back), but the refusal failed
    root's merge and every later one of root's. It is now set aside unread (renamed, kept root's with its mode),
    logged once, and root's merge applies everything else."""
    from fraisier_textfile.catalogue import SCHEMA

    textfile = deployers_parent / "metrics"
    store = TextfileStore(textfile, lock_timeout=2)
    store.hand_over(one_event())
    secret = deployers_parent / "roots-secret"
    unread = Changes()
    events.deployment_error(unread, "bare_metal", "NOT-FOR-THE-DEPLOYER")  # counted if root read it
    secret.write_bytes(handovers.encode(unread, SCHEMA))
    secret.chmod(0o600)
    content = secret.read_bytes()
    planted = textfile / HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    move = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"
    finish(as_deployer(users, move, str(secret), str(planted)))
    store.merge(one_event())
    store.merge(one_event())
    aside = planted.with_suffix(handovers.SET_ASIDE_SUFFIX)
    status = aside.stat()
    assert (status.st_uid, stat.S_IMODE(status.st_mode), aside.read_bytes()) == (0, 0o600, content)
    values = sample_values(textfile / "fraisier.prom")
    assert values[TIMEOUT] == 3
    assert values[handovers.SET_ASIDE_FAMILY] == 1
    assert "NOT-FOR-THE-DEPLOYER" not in (textfile / "fraisier.prom").read_text() + caplog.text
    [line] = [line for line in caplog.text.splitlines() if str(planted) in line]
    assert f"belongs to root with mode 0600, in {planted.parent}, which {DEPLOYER}" in line, line


SET_ASIDE_BY_THE_DEPLOYER = """
import sys
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes, deployment_error
changes = Changes()
deployment_error(changes, "bare_metal", "timeout")
TextfileStore(sys.argv[1], lock_timeout=2).merge(changes)
print("merged")
"""


def test_a_hand_over_another_member_of_the_group_left_unreadable_is_set_aside_by_the_deployers_merge(
    users: Users, shared_dir: Path  # noqa: F811
) -> None:
    """Bug: a file named as a hand-over that the merging user may not read (another member of the group made it
    mode 0600: a mistake, or on purpose) failed every merge of that user with "Permission denied" until a human
    removed it. Reading it can never succeed: it is set aside as an unreadable hand-over is, the merge goes on."""
    from fraisier_textfile.catalogue import SCHEMA

    finish(as_deployer(users, SET_ASIDE_BY_THE_DEPLOYER, str(shared_dir)))  # the file and the hand-over directory
    theirs = Changes()
    events.deployment_error(theirs, "bare_metal", "NOT-FOR-THE-DEPLOYER")
    planted = shared_dir / HANDOVER_DIRECTORY / f"{handovers.id_for(99)}.json"
    (shared_dir / HANDOVER_DIRECTORY).mkdir(exist_ok=True)
    os.chown(shared_dir / HANDOVER_DIRECTORY, pwd.getpwnam(DEPLOYER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    os.chmod(shared_dir / HANDOVER_DIRECTORY, 0o2775)
    planted.write_bytes(handovers.encode(theirs, SCHEMA))
    os.chown(planted, pwd.getpwnam(OBSERVER).pw_uid, grp.getgrnam(GROUP).gr_gid)  # as the other member made it
    planted.chmod(0o600)
    merge = as_deployer(users, SET_ASIDE_BY_THE_DEPLOYER, str(shared_dir))
    stdout, stderr = merge.communicate(timeout=60)
    assert (merge.returncode, stdout) == (0, "merged\n"), stderr
    aside = planted.with_suffix(handovers.SET_ASIDE_SUFFIX)
    assert (aside.stat().st_uid, stat.S_IMODE(aside.stat().st_mode)) == (pwd.getpwnam(OBSERVER).pw_uid, 0o600)
    assert not planted.exists()
    [line] = [line for line in stderr.splitlines() if str(planted) in line]
    assert "may not read it (Permission denied)" in line and str(aside) in line, line
    values = sample_values(shared_dir / "fraisier.prom")
    assert values[TIMEOUT] == 2
    assert values[handovers.SET_ASIDE_FAMILY] == 1
    assert "NOT-FOR-THE-DEPLOYER" not in (shared_dir / "fraisier.prom").read_text()


# The deployer's side of the spent hand-over attacks (store/handover_reuse.py): as fast as it can until stdin
# closes, at each of root's spent names in turn: the file moved away and, in its place for a moment, a FIFO, a
# symlink to root's group-writable file (its bytes made to begin as the spent file's), a hard link to that file,
# or a copy of the deployer's own with the same bytes and mode; then the real one put back. Prints the turns.
SWAP_SPENT = """
import os, select, sys
directory, secret = sys.argv[1], sys.argv[2]
turns = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    for name in os.listdir(directory):
        if not name.endswith(".spent") or name.startswith("kept-"):
            continue
        path, kept = os.path.join(directory, name), os.path.join(directory, "kept-" + name)
        try:  # never a FIFO of its own that root put back in place of the file (it would wait for a writer)
            spent = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                head = os.read(spent, 64)
            finally:
                os.close(spent)
            os.rename(path, kept)
        except OSError:
            continue
        try:
            kind = turns % 4
            if kind in (1, 2):
                with open(secret, "r+b") as file:  # root's, the group may write it: the spent file's first bytes
                    file.write(head)
            if kind == 0:
                os.mkfifo(path, 0o644)
            elif kind == 1:
                os.symlink(secret, path)
            elif kind == 2:
                os.link(secret, path)
            else:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.fchmod(descriptor, 0o644)
                os.write(descriptor, head)
                os.close(descriptor)
            for _ in range(200):
                pass
            os.unlink(path)
        except OSError:
            pass
        try:
            os.rename(kept, path)
        except OSError:
            pass
        turns += 1
print(turns)
"""


@pytest.mark.slow  # a few seconds of swaps in a loop
def test_root_takes_back_nothing_but_its_own_spent_hand_overs_while_the_deployer_swaps_them(
    users: Users, shared_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Root hands over and merges in turns, taking back its spent hand-overs, while the deployer swaps each for a
    FIFO, a symlink, a hard link to a file of root's it may write, or a copy of its own: root never opens anything
    but a regular file of its own there (bug: a FIFO or the deployer's file swapped in between root's look and its
    rename was opened, for reading and writing, before its fstat refused it), never writes into another file, and
    counts every event once."""
    secret = victim / "group-secret"
    secret.write_bytes(b"root's, the group may write it" + b" " * 64)
    os.chown(secret, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(secret, 0o660)
    store = TextfileStore(shared_dir, lock_timeout=2)
    store.hand_over(one_event())
    store.merge(Changes())
    directory = shared_dir / HANDOVER_DIRECTORY
    spent_in = os.stat(directory)
    opened: list[str] = []
    real_open = os.open

    def noting_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        descriptor = real_open(path, flags, mode, dir_fd=dir_fd)
        if flags & (os.O_DIRECTORY | os.O_PATH) or not (  # an O_PATH descriptor opens nothing
            str(path).startswith("/proc/self/fd/")
            or (dir_fd is not None and os.path.samestat(os.fstat(dir_fd), spent_in))
        ):
            return descriptor
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or (status.st_uid != 0 and flags & (os.O_WRONLY | os.O_RDWR)):
            opened.append(f"{path}: {stat.filemode(status.st_mode)} of uid {status.st_uid}")
        return descriptor

    attacker = as_deployer(users, SWAP_SPENT, str(directory), str(secret))
    rounds = 0
    monkeypatch.setattr(os, "open", noting_open)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and attacker.poll() is None:
            store.hand_over(one_event())
            store.merge(Changes())
            handovers.wait_for_removals()
            rounds += 1
    finally:
        monkeypatch.undo()
        turns = int(finish(attacker))
    assert turns > 0 and rounds > 0
    assert opened == []
    assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode), secret.stat().st_nlink) == (0, 0o660, 1)
    assert secret.read_bytes().endswith(b" " * 30)  # the deployer's writes, never root's
    store.merge(Changes())
    assert sample_values(shared_dir / "fraisier.prom")[TIMEOUT] == 1 + rounds


# The deployer's side of the reverse: it hands over, then (once root has merged) hands over again, then merges.
# Prints the inodes of the hand-overs waiting after each of its hand-overs, then "merged".
DEPLOYER_TAKES_BACK = """
import os, sys
from fraisier_textfile import TextfileStore
from fraisier_textfile.changes import Changes, deployment_error
from fraisier_textfile.store import handovers
textfile = sys.argv[1]
directory = os.path.join(textfile, ".fraisier-handover")
store = TextfileStore(textfile, lock_timeout=2)


def hand_over():
    changes = Changes()
    deployment_error(changes, "bare_metal", "deployer")
    store.hand_over(changes)
    print(*sorted(os.stat(os.path.join(directory, name)).st_ino for name in os.listdir(directory)
                  if name.endswith(".json") and not name.startswith(".")), flush=True)


hand_over()
sys.stdin.readline()  # root merged it
hand_over()
sys.stdin.readline()  # root handed over
store.merge(Changes())
assert handovers.wait_for_removals()
print("merged", flush=True)
sys.stdin.readline()
"""


def test_root_and_the_deployer_take_back_the_hand_overs_the_others_merge_retired(
    users: Users, shared_dir: Path  # noqa: F811
) -> None:
    """Root's merge retires the deployer's hand-over (its file stays the deployer's) and the deployer takes it back;
    the deployer's merge retires root's and root takes it back: each writer writes into its own file only, and
    every event is counted once."""
    store = TextfileStore(shared_dir, lock_timeout=2)
    deployer = as_deployer(users, DEPLOYER_TAKES_BACK, str(shared_dir))
    assert deployer.stdin is not None and deployer.stdout is not None
    try:
        [first] = deployer.stdout.readline().split()
        store.merge(Changes())  # applies the deployer's hand-over, renamed to a spent file of the deployer's
        assert handovers.wait_for_removals()
        spent = [path for path in (shared_dir / HANDOVER_DIRECTORY).iterdir() if path.name.endswith(".spent")]
        assert [(path.stat().st_ino, path.stat().st_uid) for path in spent] == [
            (int(first), pwd.getpwnam(DEPLOYER).pw_uid)]
        deployer.stdin.write("\n")
        deployer.stdin.flush()
        assert deployer.stdout.readline().split() == [first]  # taken back: the same file
        store.hand_over(one_event())
        [mine] = [path for path in (shared_dir / HANDOVER_DIRECTORY).iterdir()
                  if path.suffix == handovers.SUFFIX and path.stat().st_uid == 0]
        inode = mine.stat().st_ino
        deployer.stdin.write("\n")
        deployer.stdin.flush()
        assert deployer.stdout.readline() == "merged\n"  # root's hand-over retired by the deployer's merge
        store.hand_over(one_event())
        [again] = [path for path in (shared_dir / HANDOVER_DIRECTORY).iterdir() if path.suffix == handovers.SUFFIX]
        assert (again.stat().st_ino, again.stat().st_uid) == (inode, 0)  # root's own file, taken back
    finally:
        finish(deployer)
    store.merge(Changes())
    values = sample_values(shared_dir / "fraisier.prom")
    assert (values[TIMEOUT], values[BY_THE_DEPLOYER]) == (2, 2)
    assert values.get(handovers.SET_ASIDE_FAMILY, 0) == 0
