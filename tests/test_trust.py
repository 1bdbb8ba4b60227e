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

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import FraisierTextfileError, UnexpectedFileError
from fraisier_textfile.store import handovers
from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY

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


# The deployer owns the directory the textfile directory is in (its home, say): it swaps the textfile directory
# for a symlink to root's directory and back, as fast as it can, until stdin closes.
SWAP_TEXTFILE_DIRECTORY = SWAPPING + """
parent, victim = sys.argv[1], sys.argv[2]
print("ready", flush=True)
swap_until_stdin_closes(os.path.join(parent, "metrics"), os.path.join(parent, "metrics.real"), victim, spin=200)
"""


@pytest.fixture
def deployers_parent(users: Users) -> Iterator[Path]:  # noqa: F811
    """A directory of the deployer's own (its home, say) holding the textfile directory ``metrics``."""
    parent = Path(tempfile.mkdtemp(prefix="deployer-home-", dir=users.root))
    os.chmod(parent, 0o755)
    (parent / "metrics").mkdir(mode=0o755)
    for directory in (parent, parent / "metrics"):
        os.chown(directory, pwd.getpwnam(DEPLOYER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def test_root_never_writes_through_a_textfile_directory_another_user_can_swap_for_a_symlink(
    users: Users, deployers_parent: Path, victim: Path  # noqa: F811
) -> None:
    """Bug: the textfile directory is the one path resolved by name, and root followed it wherever the user
    owning its parent pointed it: root created fraisier.prom, its lock and the store's directories in any
    directory of root's. Root now refuses such a textfile directory in one line, swapped or not (sshd's
    StrictModes: a check at the moment of use could be raced)."""
    textfile = deployers_parent / "metrics"
    before = snapshot(victim)
    changes = one_event()
    with pytest.raises(FraisierTextfileError, match=f"^{textfile}: .*{deployers_parent}.*{DEPLOYER}") as refused:
        TextfileStore(textfile, lock_timeout=2).merge(changes)
    assert "\n" not in str(refused.value)
    assert changes  # refused: kept for a later merge
    attacker = as_deployer(users, SWAP_TEXTFILE_DIRECTORY, str(deployers_parent), str(victim))
    assert attacker.stdout is not None and attacker.stdout.readline() == "ready\n"
    try:
        refusals = 0
        for _ in range(300):
            store = TextfileStore(textfile, lock_timeout=2)
            for attempt in (store.merge, store.hand_over):
                try:
                    attempt(one_event())
                except FraisierTextfileError:
                    refusals += 1
    finally:
        assert int(finish(attacker)) > 0
    assert refusals == 600
    assert snapshot(victim) == before
    assert not os.listdir(textfile)


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
