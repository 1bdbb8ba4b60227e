"""The store attacked with what we did not write: other writers' files, hostile directory entries, cleaners
racing it, and hand-overs from other versions. Each test names the bug it caught."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraisier_textfile.errors import FraisierTextfileError, UnexpectedFileError
from fraisier_textfile.recorder.recorder import MetricsRecorder
from fraisier_textfile.store import inflight
from fraisier_textfile.store import markers as marker_files
from fraisier_textfile.store.markers import MARKER_DIRECTORY
from fraisier_textfile.store.process_identity import process_start_time

from .processes import fraisier

EXEC_TRUE = ("exec", "--provider", "bare_metal", "--fraise-type", "api", "--", "true")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


# The marker directory: created by a deployment's start, so its checks must be there too, not only in the merge.


def test_a_deployment_never_writes_its_marker_through_a_symlinked_marker_directory(
    textfile_dir: Path, elsewhere: Path
) -> None:
    """Bug: create_marker followed a symlink at .fraisier-inflight and left a marker in the link's target."""
    textfile_dir.mkdir()
    (textfile_dir / MARKER_DIRECTORY).symlink_to(elsewhere)
    result = fraisier(*EXEC_TRUE, textfile_dir=textfile_dir)
    assert result.returncode == 0  # metrics never stop the deployment
    assert os.listdir(elsewhere) == []
    assert f"{textfile_dir / MARKER_DIRECTORY} is a symlink" in result.stderr
    with pytest.raises(UnexpectedFileError, match="is a symlink"):
        marker_files.create_marker(textfile_dir, "bare_metal", "api")
    assert os.listdir(elsewhere) == []


def test_a_file_in_place_of_the_marker_directory_is_named_in_one_clear_line(textfile_dir: Path) -> None:
    """Bug: a regular file at .fraisier-inflight made a deployment's start fail with a raw '[Errno 17] File
    exists'. (A tracked block never raises for it.)"""
    textfile_dir.mkdir()
    (textfile_dir / MARKER_DIRECTORY).write_text("not a directory\n")
    result = fraisier(*EXEC_TRUE, textfile_dir=textfile_dir)
    assert result.returncode == 0
    assert "[Errno" not in result.stderr
    assert f"{textfile_dir / MARKER_DIRECTORY} is a regular file, not a directory" in result.stderr
    recorder = MetricsRecorder(textfile_dir)
    with recorder.track_deployment("bare_metal", "api"):  # never raises for metrics
        pass


def test_a_cleaner_emptying_the_directory_never_makes_a_marker_fail_with_a_raw_error(textfile_dir: Path) -> None:
    """Bug: a tmp cleaner removing .fraisier-inflight between its check and the marker's creation made the
    start fail with a raw FileNotFoundError ('[Errno 2] No such file or directory'). The marker is now made
    in a directory held open, created again if it went."""
    textfile_dir.mkdir()
    stop = threading.Event()

    def clean() -> None:
        directory = textfile_dir / MARKER_DIRECTORY
        while not stop.is_set():
            try:
                for name in os.listdir(directory):
                    os.unlink(directory / name)
                os.rmdir(directory)
            except OSError:
                pass

    cleaner = threading.Thread(target=clean)
    cleaner.start()
    raw: list[BaseException] = []
    made = 0
    try:
        for _ in range(2000):
            try:
                marker = marker_files.create_marker(textfile_dir, "bare_metal", "api")
            except FraisierTextfileError as error:
                assert str(textfile_dir / MARKER_DIRECTORY) in str(error)
                continue
            except OSError as error:
                raw.append(error)
                continue
            made += 1
            marker.release()
    finally:
        stop.set()
        cleaner.join()
    assert raw == []
    assert made > 0


# Hand-overs written by another version (or damaged): set aside, never applied half-checked.

HANDOVER_BASE: dict[str, object] = {
    "version": 1, "added": [], "observed": [], "latest": [], "maximum": [], "active_providers": [],
    "retired_markers": [],
}
ROLLBACK_BUCKETS = [1, 0, 0, 0, 0, 0, 0, 0, 0]  # fraisier_rollback_duration_seconds: 8 bounds and +Inf


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param({"added": [["fraisier_rollbacks_total", ["p\n", "manual"], 2]]}, "non-printable",
                     id="newline-in-a-label-value"),
        pytest.param({"added": [["fraisier_rollbacks_total", ["p\ud800", "manual"], 2]]}, "non-printable",
                     id="lone-surrogate-in-a-label-value"),
        pytest.param({"added": [["fraisier_rollbacks_total", "pm", 2]]}, "labels", id="labels-as-a-string"),
        pytest.param({"observed": [["fraisier_rollback_duration_seconds", ["p"], ROLLBACK_BUCKETS, 0.5, 7]]},
                     "count", id="count-not-the-sum-of-its-buckets"),
        pytest.param({"observed": [["fraisier_rollback_duration_seconds", ["p"], [1.5, *ROLLBACK_BUCKETS[1:]], 0.5,
                                     1]]}, "whole number", id="fractional-bucket-count"),
        pytest.param({"version": True, "added": [["fraisier_rollbacks_total", ["p", "manual"], 2]]}, "version",
                     id="version-true"),
        pytest.param({"active_providers": [5]}, "provider", id="provider-not-a-string"),
    ],
)
def test_a_hand_over_with_wrong_values_or_types_is_set_aside_and_the_store_goes_on(
    textfile_dir: Path, content: dict[str, object], problem: str
) -> None:
    """Bugs: a label value with a newline or a lone surrogate made every later merge raise a raw ValueError or
    UnicodeEncodeError (the hand-over stayed, the store was wedged for good); a histogram whose count is not
    the sum of its buckets was written, and `textfile check` then refused the file; labels given as a string,
    fractional bucket counts, `version: true` and non-string providers were taken as they came."""
    import json

    from fraisier_textfile.store import handovers

    textfile_dir.mkdir()
    assert fraisier("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3",
                    textfile_dir=textfile_dir).returncode == 0
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    handover_id = handovers.id_for(1)
    data = json.dumps({**HANDOVER_BASE, **content}).encode("utf-8", "surrogatepass")
    (directory / f"{handover_id}.json").write_bytes(data)

    refreshed = fraisier("textfile", "refresh", textfile_dir=textfile_dir)
    assert refreshed.returncode == 0, refreshed.stderr
    assert "Traceback" not in refreshed.stderr
    assert f"{handover_id}.json cannot be applied" in refreshed.stderr and problem in refreshed.stderr
    assert os.listdir(directory) == [f"{handover_id}.unreadable"]
    checked = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    recorded = fraisier("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3",
                        textfile_dir=textfile_dir)
    assert recorded.returncode == 0, recorded.stderr
    text = (textfile_dir / "fraisier.prom").read_text()
    assert 'fraisier_rollbacks_total{provider="p",reason="manual"} 2.0\n' in text


# In-flight markers written by another version or another user of the group.


@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"provider": "p\ud800", "fraise_type": "api"}, id="lone-surrogate"),
        pytest.param({"provider": "p\n", "fraise_type": "api"}, id="newline"),
        pytest.param({"provider": "", "fraise_type": "api"}, id="empty-provider"),
        pytest.param({"provider": 5, "fraise_type": ["api"]}, id="not-strings"),
    ],
)
def test_a_marker_with_values_the_recorder_would_refuse_is_never_counted_under_them(
    textfile_dir: Path, content: dict[str, object]
) -> None:
    """Bugs: a dead marker whose provider held a lone surrogate made every merge fail with a raw
    UnicodeEncodeError (the store wedged for good, `fraisier metrics` too); one with an empty provider or
    non-string values was counted crashed under provider="" or fraise_type="['api']"."""
    import json

    directory = textfile_dir / MARKER_DIRECTORY
    directory.mkdir(parents=True)
    marker = directory / "999999999-1-0badc0de"  # no such PID, no lock held: a dead deployment
    marker.write_bytes(json.dumps({**content, "liveness": "flock"}).encode("utf-8", "surrogatepass"))

    refreshed = fraisier("textfile", "refresh", textfile_dir=textfile_dir)
    assert refreshed.returncode == 0, refreshed.stderr
    assert "Traceback" not in refreshed.stderr
    checked = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'status="crashed"' not in (textfile_dir / "fraisier.prom").read_text()
    recorded = fraisier(*EXEC_TRUE, textfile_dir=textfile_dir)
    assert recorded.returncode == 0 and "Traceback" not in recorded.stderr, recorded.stderr
    assert 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1.0\n' in (
        textfile_dir / "fraisier.prom"
    ).read_text()


# Signals and races: exactly once.

_SLOW_MERGER = """
import os, sys
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
store = TextfileStore(sys.argv[1])
while not os.path.exists(sys.argv[2]):
    store.merge(Changes())
"""

_ENDER = """
import sys
from fraisier_textfile import changes
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
store = TextfileStore(sys.argv[1])
handed_over = deployments = 0
def unmarked(error, where):
    raise error
while handed_over < int(sys.argv[2]) and deployments < 2000:
    deployment = store.start_deployment("bare_metal", "api", unmarked)
    start = Changes()
    changes.deployment_started(start, "bare_metal", "api")
    store.merge(start)
    end = Changes()
    changes.deployment_complete(end, "bare_metal", "api", "success", 1.0)
    changes.deployment_ended(end, "bare_metal", deployment)
    # As the recorder and `fraisier exec` do: hand the end over when the lock is busy (the store then releases
    # the marker).
    if not store.merge_or_hand_over(end, 0.0005):
        handed_over += 1
    deployments += 1
print(deployments, handed_over)
"""


@pytest.mark.slow
def test_an_end_handed_over_while_a_merger_probes_the_markers_is_never_also_counted_crashed(
    textfile_dir: Path,
) -> None:
    """Bug: a merger listed the hand-overs, then probed the markers. An end handed over between the two (its
    process then releasing its marker, as it must once the end is handed over) was counted crashed by that
    merger and success by the next: one deployment, counted twice."""
    import json
    import subprocess
    import sys

    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes

    from .values import sample_values

    markers = textfile_dir / MARKER_DIRECTORY
    markers.mkdir(parents=True)
    # Deployments of an older version (no lock) by this live process: alive by /proc, and each one probed
    # costs the merger a read of /proc, which keeps it between the two steps long enough to be caught there.
    pid, start = os.getpid(), process_start_time(os.getpid())
    for number in range(2000):
        (markers / f"{pid}-{start}-{number:08x}").write_text(json.dumps({"provider": "slow", "fraise_type": "api"}))
    stop = textfile_dir.parent / "stop"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    merger = subprocess.Popen([sys.executable, "-c", _SLOW_MERGER, str(textfile_dir), str(stop)], env=environment)
    try:
        ender = subprocess.run(
            [sys.executable, "-c", _ENDER, str(textfile_dir), "5"],
            env=environment, capture_output=True, text=True, timeout=300,
        )
    finally:
        stop.touch()
        merger.wait(timeout=60)
    assert ender.returncode == 0, ender.stderr
    deployments, handed_over = map(int, ender.stdout.split())
    assert handed_over > 0
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 0
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == deployments


_WHOLE_DEPLOYMENT_HANDED_OVER = """
import sys
from fraisier_textfile import changes
from fraisier_textfile.changes import Changes
from fraisier_textfile import TextfileStore
store = TextfileStore(sys.argv[1])
def unmarked(error, where):
    raise error
deployment = store.start_deployment("bare_metal", "api", unmarked)
start = Changes()
changes.deployment_started(start, "bare_metal", "api")
end = Changes()
changes.deployment_complete(end, "bare_metal", "api", "success", 1.0)
changes.deployment_ended(end, "bare_metal", deployment)
# As `fraisier exec` does while the lock is busy: start and end handed over (the store then releases the marker).
merged = [store.merge_or_hand_over(start, 0.001), store.merge_or_hand_over(end, 0.001)]
print(merged)
"""


def test_a_whole_deployment_handed_over_during_a_merge_is_counted_once(textfile_dir: Path) -> None:
    """Bug: a deployment whose marker appeared after a merger had probed the markers, and whose start and end
    were handed over before that merger listed the hand-overs, had its retired marker dropped from the file
    (the merger had not seen the marker), so the next merger counted it crashed as well as successful.

    The moment is chosen by running that deployment, a real process, from inside a real merge, just before
    it lists the hand-overs (the lock is held meanwhile, so both its merges must hand over)."""
    import subprocess
    import sys

    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes

    from .values import sample_values

    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    outputs: list[str] = []

    merger = TextfileStore(textfile_dir)
    collect = merger.handovers.collect

    def caught_between_its_steps(merge):  # type: ignore[no-untyped-def]
        # The hand-overs participant collects after the markers' probe (the ordering rule): run the deployment
        # in between.
        if not outputs:
            outputs.append(subprocess.run(
                [sys.executable, "-c", _WHOLE_DEPLOYMENT_HANDED_OVER, str(textfile_dir)],
                env=environment, capture_output=True, text=True, check=True, timeout=60,
            ).stdout)
        return collect(merge)

    merger.handovers.collect = caught_between_its_steps  # type: ignore[method-assign]
    merger.merge(Changes())
    assert outputs == ["[False, False]\n"]
    TextfileStore(textfile_dir).merge(Changes())
    TextfileStore(textfile_dir).merge(Changes())
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 0
    assert os.listdir(textfile_dir / MARKER_DIRECTORY) == []


def test_a_problem_in_the_hand_over_directory_is_reported_once(textfile_dir: Path) -> None:
    """Bug: a directory in place of a hand-over made `fraisier record` report the same problem twice, as a
    warning from the look for late hand-overs that followed the failed merge, then as its error. Such a directory
    is now set aside (and the record merged): still one report, not two."""
    from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY

    from .values import sample_values

    planted = textfile_dir / HANDOVER_DIRECTORY / "00000000000000000001-1-0badc0de.json"
    planted.mkdir(parents=True)
    result = fraisier("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3",
                      textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(str(planted)) == 1, result.stderr
    assert "is a directory, not a regular file" in result.stderr
    assert planted.with_suffix(".unreadable").is_dir()
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_rollbacks_total{provider="p",reason="manual"}'] == 1


def test_a_deployment_run_while_the_file_cannot_be_merged_keeps_its_outcome(textfile_dir: Path) -> None:
    """Bug: `fraisier exec` dropped the start and end of a deployment it could not merge for another reason than
    a busy lock (here a file it refuses; likewise a rename refused in a sticky directory) and released its
    marker: the next merge, once the file was fixed, counted a successful deployment as crashed. Its events
    are now handed over, as the recorder's are."""
    from .values import sample_values

    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text("garbage{\n")
    result = fraisier(*EXEC_TRUE, textfile_dir=textfile_dir)
    assert result.returncode == 0
    assert "handed over" in result.stderr, result.stderr
    (textfile_dir / "fraisier.prom").unlink()  # what the error asks for
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="crashed",fraise_type="api"}'] == 0
    assert values['fraisier_active_deployments{provider="bare_metal"}'] == 0
    assert os.listdir(textfile_dir / MARKER_DIRECTORY) == []


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory under /tmp that another user can enter (pytest's tmp_path is under a 0700 directory)."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="fraisier-adversarial-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_rename_refused_in_a_sticky_directory_says_why(world_readable: Path) -> None:
    """Bug: in a sticky directory (mode 1777, as /tmp) only a file's owner may replace it; another user's merge
    was refused with "Operation not permitted; make the directory writable by this user", a directory that
    is writable by that user already. The error now names the owner and the sticky bit."""
    import shutil
    import subprocess
    import sys

    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes, deployment_error

    from .processes import binary

    if os.geteuid() != 0:
        pytest.skip("needs root, to run a merge as another user")
    setpriv = binary("setpriv")
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    tmp_path = world_readable
    package = tmp_path / "package"
    shutil.copytree(Path(inflight.__file__).parent.parent, package / "fraisier_textfile",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _, files in os.walk(tmp_path):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    sticky = tmp_path / "sticky"
    sticky.mkdir(mode=0o1777)
    os.chmod(sticky, 0o1777)
    changes = Changes()
    deployment_error(changes, "bare_metal", "timeout")
    TextfileStore(sticky).merge(changes)  # fraisier.prom and its lock now belong to root
    os.chmod(sticky / "fraisier.prom.lock", 0o666)
    before = (sticky / "fraisier.prom").read_bytes()
    script = (
        "import sys\nfrom fraisier_textfile.changes import Changes, deployment_error\n"
        "from fraisier_textfile import TextfileStore\n"
        "from fraisier_textfile.errors import TextfileWriteError\n"
        "changes = Changes()\ndeployment_error(changes, 'bare_metal', 'timeout')\n"
        "try:\n    TextfileStore(sys.argv[1]).merge(changes)\nexcept TextfileWriteError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", script, str(sticky)],
        capture_output=True, text=True, env={"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"cannot write {sticky / 'fraisier.prom'}"), message
    assert "sticky" in message and "root" in message, message
    assert "make the directory writable" not in message
    assert (sticky / "fraisier.prom").read_bytes() == before


def test_a_lock_file_another_user_left_unwritable_is_named_with_its_owner_and_mode(world_readable: Path) -> None:
    """Bug: a lock file that another user created without group write (an older version, or an admin's touch)
    was reported as "Permission denied; make the directory writable by this user", for a writable directory.
    The error now names the lock file's owner and mode, and the fix."""
    import shutil
    import subprocess
    import sys

    from .processes import binary

    if os.geteuid() != 0:
        pytest.skip("needs root, to run a merge as another user")
    setpriv = binary("setpriv")
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    package = world_readable / "package"
    shutil.copytree(Path(inflight.__file__).parent.parent, package / "fraisier_textfile",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _, files in os.walk(package):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    shared = world_readable / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "fraisier.prom.lock").touch()
    os.chmod(shared / "fraisier.prom.lock", 0o644)
    script = (
        "import sys\nfrom fraisier_textfile.changes import Changes, deployment_error\n"
        "from fraisier_textfile import TextfileStore\n"
        "from fraisier_textfile.errors import TextfileWriteError\n"
        "changes = Changes()\ndeployment_error(changes, 'bare_metal', 'timeout')\n"
        "try:\n    TextfileStore(sys.argv[1]).merge(changes)\nexcept TextfileWriteError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", script, str(shared)],
        capture_output=True, text=True, env={"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"},
        cwd=world_readable,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"cannot open the lock file {shared / 'fraisier.prom.lock'}"), message
    assert "belongs to root" in message and "0644" in message, message
    assert "make the directory writable" not in message


# Clocks that step.


def test_a_series_updated_now_by_a_process_whose_clock_is_behind_is_not_expired(textfile_dir: Path) -> None:
    """Bug: a process whose clock was 60 days behind (a host before its NTP sync, a clock stepped back) wrote
    its old time as the last update of the series it touched, over the time a correct process had just
    written; the next `refresh --expire-after 30d` then removed those series with their totals. (It also
    broke the times line's "oldest" head, which assumes times only move forward.) A series' last-update time
    now only moves forward."""
    from .processes import binary
    from .values import sample_values

    faketime = binary("faketime")

    def record(provider: str, clock: str | None) -> None:
        command = ["record", "deployment", "--provider", provider, "--fraise-type", "api", "--status", "success",
                   "--duration", "1", "--textfile-dir", str(textfile_dir)]
        import subprocess
        import sys

        prefix = [faketime, "-f", clock] if clock else []
        result = subprocess.run([*prefix, sys.executable, "-m", "fraisier_textfile", *command],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    record("retired", "-40d")  # a provider really not updated for 40 days
    record("bare_metal", None)
    record("bare_metal", "-60d")
    refreshed = fraisier("textfile", "refresh", "--expire-after", "30d", textfile_dir=textfile_dir)
    assert refreshed.returncode == 0, refreshed.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2
    assert not any('provider="retired"' in key for key in values)


def test_a_process_whose_clock_is_behind_keeps_the_last_deployment_time(textfile_dir: Path) -> None:
    """Bug: the rule that replaces a stored last-deployment time too far ahead of the merger's clock (written
    by a clock that was ahead) also fired when the merger's own clock was behind (a host before its NTP sync,
    faketime): the right time was replaced by a year-old one, and "time since the last success" jumped by a
    year. The file's mtime, set by the kernel at the last write, tells the two apart: a file last written in
    this process's future means this process's clock is behind, and the stored time stays the maximum."""
    import subprocess
    import sys

    from .processes import binary
    from .values import sample_values

    faketime = binary("faketime")
    command = ["record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
               "--duration", "1", "--textfile-dir", str(textfile_dir)]
    last = 'fraisier_last_deployment_timestamp_seconds{provider="bare_metal",fraise_type="api",status="success"}'
    assert fraisier(*command).returncode == 0
    right = sample_values(textfile_dir / "fraisier.prom")[last]
    behind = subprocess.run([faketime, "-f", "-365d", sys.executable, "-m", "fraisier_textfile", *command],
                            capture_output=True, text=True, timeout=60)
    assert behind.returncode == 0, behind.stderr
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 2
    assert values[last] == right
    assert "clock is behind" in behind.stderr


# Files other tools wrote.


def test_a_file_with_a_byte_order_mark_is_refused_with_the_reason_named(textfile_dir: Path) -> None:
    """Bug (unclear error): a file saved by an editor with a UTF-8 byte-order mark, which node_exporter refuses
    too, was refused as "invalid metric name" on line 1, where nothing is visibly wrong."""
    textfile_dir.mkdir()
    data = "\ufeff# HELP other_total c\n# TYPE other_total counter\nother_total 1\n".encode()
    (textfile_dir / "fraisier.prom").write_bytes(data)
    record = ("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3")
    for command in (("textfile", "check"), record):
        result = fraisier(*command, textfile_dir=textfile_dir)
        assert result.returncode == 1
        assert "byte-order mark" in result.stderr + result.stdout, result.stderr
    assert (textfile_dir / "fraisier.prom").read_bytes() == data


def test_a_family_of_ours_the_pushgateway_left_untyped_is_read_and_given_our_type(textfile_dir: Path) -> None:
    """The Pushgateway writes `# TYPE x untyped` for a series pushed without a TYPE; node_exporter serves it,
    as it serves the same family with no TYPE line at all: the store reads both and writes our type back. An
    untyped histogram is not one, and is refused in plain words."""
    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    path.write_text(
        '# TYPE fraisier_rollbacks_total untyped\nfraisier_rollbacks_total{provider="p",reason="manual"} 2\n'
    )
    assert fraisier("textfile", "check", textfile_dir=textfile_dir).returncode == 0
    record = ("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3")
    assert fraisier(*record, textfile_dir=textfile_dir).returncode == 0
    text = path.read_text()
    assert "# TYPE fraisier_rollbacks_total counter\n" in text
    assert 'fraisier_rollbacks_total{provider="p",reason="manual"} 3.0\n' in text
    path.write_text("# TYPE fraisier_rollback_duration_seconds untyped\n"
                    'fraisier_rollback_duration_seconds{provider="p"} 2\n')
    result = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert result.returncode == 1
    assert "fraisier_rollback_duration_seconds is an untyped in the file but a histogram here" in result.stderr


def _written_by_prometheus_client(path: Path) -> None:
    """Every family of ours as prometheus_client writes it (labels in reverse order, `le` where it puts it,
    `_created` samples on), and foreign families of each other kind: a summary, an info and an enum."""
    from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary, write_to_textfile

    from fraisier_textfile import catalogue

    registry = CollectorRegistry(auto_describe=True)
    for family in catalogue.FAMILIES:
        labels = list(reversed(family.labels))
        values = {label: "bare_metal" if label == "provider" else "success" for label in labels}
        if family.kind is catalogue.Kind.COUNTER:
            Counter(family.name, "another HELP: ünïcode", labels, registry=registry).labels(**values).inc(3)
        elif family.kind is catalogue.Kind.HISTOGRAM:
            histogram = Histogram(family.name, "another HELP", labels, buckets=family.buckets, registry=registry)
            histogram.labels(**values).observe(0.7)
        else:
            Gauge(family.name, "another HELP", labels, registry=registry).labels(**values).set(1)
    Summary("other_summary_seconds", "a summary", ["x"], registry=registry).labels("é \" \\").observe(2)
    Info("other_build", "build information", registry=registry).info({"version": "1.2", "note": "😀"})
    Enum("other_state", "an enum", states=["a", "b"], registry=registry).state("b")
    write_to_textfile(str(path), registry)


@pytest.mark.integration
def test_a_file_prometheus_client_wrote_is_merged_into_and_node_exporter_serves_the_right_totals(
    textfile_dir: Path,
) -> None:
    """No bug found: kept as the proof that a file first written by prometheus_client's write_to_textfile,
    with every family of ours in another label order and _created samples, is merged into (not duplicated),
    its foreign families are kept byte for byte, and node_exporter serves the sums."""
    from .processes import http_get, node_exporter
    from .values import canonical_samples

    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    _written_by_prometheus_client(path)
    before = canonical_samples(path.read_text())
    foreign = [line for line in path.read_text().splitlines(keepends=True) if "other_" in line or "_created" in line]
    result = fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "success",
                      "--status", "success", "--duration", "42", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert all(line in text for line in foreign)
    after = canonical_samples(text)
    key = ("fraisier_deployments_total", frozenset({("provider", "bare_metal"), ("status", "success"),
                                                    ("fraise_type", "success")}))
    assert (before[key], after[key]) == (3, 4)
    bucket = ("fraisier_deployment_duration_seconds_bucket",
              frozenset({("provider", "bare_metal"), ("status", "success"), ("le", "60.0")}))
    assert (before[bucket], after[bucket]) == (1, 2)
    with node_exporter(textfile_dir) as url:
        scraped = http_get(url)
    assert "node_textfile_scrape_error 0" in scraped
    served = canonical_samples(scraped, "fraisier_")
    assert {name: value for name, value in served.items() if not name[0].endswith("_created")} == {
        name: value for name, value in after.items() if name[0].startswith("fraisier_")
        and not name[0].endswith("_created")
    }


def test_a_hand_over_that_can_never_be_summed_is_set_aside_instead_of_wedging_every_merge(
    textfile_dir: Path,
) -> None:
    """Bug: a process recorded a duration so large that the file's _sum would overflow to +Inf. Its merge was
    refused (right), its events were handed over, and from then on every merge by every process applied that
    hand-over and failed with the same error about someone else's series (`fraisier record` of another
    provider exited 2): the store was wedged until someone found and deleted the file. Such a hand-over is now
    set aside, as an unreadable one is, and the rest goes on."""
    import subprocess
    import sys

    from fraisier_textfile.store.handovers import HANDOVER_DIRECTORY

    from .values import sample_values

    script = (
        "import sys\nfrom fraisier_textfile.recorder.recorder import MetricsRecorder\n"
        "recorder = MetricsRecorder(sys.argv[1])\n"
        "for _ in range(2):\n"
        "    recorder.record_deployment_complete('bare_metal', 'api', 'success', 1.7e308)\n"
        "    recorder.flush()\n"
    )
    recorder = subprocess.run([sys.executable, "-c", script, str(textfile_dir)], capture_output=True, text=True,
                              timeout=60, check=True)
    result = fraisier("record", "rollback", "--provider", "docker_compose", "--reason", "manual", "--duration", "3",
                      textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    # Set aside by the first merge after the hand-over: the recorder's own at its exit, or this one.
    logged = recorder.stderr + result.stderr
    assert "cannot be applied" in logged and "+Inf" in logged, logged
    [set_aside] = [name for name in os.listdir(textfile_dir / HANDOVER_DIRECTORY) if name != "sequence"]
    assert set_aside.endswith(".unreadable")
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values['fraisier_rollbacks_total{provider="docker_compose",reason="manual"}'] == 1
    assert values['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1


def test_a_hand_over_from_a_newer_version_is_left_for_it_not_set_aside(textfile_dir: Path) -> None:
    """Bug (events lost on an upgrade): during an upgrade, a newer version's hand-over (a higher format version)
    met by an older merger was renamed .unreadable, which no merger ever reads again: its events were lost for
    the newer version too. It is now left in place, logged, for a merger that can read it."""
    from fraisier_textfile.store import handovers

    textfile_dir.mkdir()
    directory = textfile_dir / handovers.HANDOVER_DIRECTORY
    directory.mkdir()
    newer = directory / f"{handovers.id_for(1)}.json"
    data = b'{"version": 3, "events": []}'
    newer.write_bytes(data)
    result = fraisier("record", "rollback", "--provider", "p", "--reason", "manual", "--duration", "3",
                      textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert "newer version" in result.stderr and str(newer) in result.stderr
    assert newer.read_bytes() == data
    assert [name for name in os.listdir(directory) if not name.startswith("fraisier.prom.left-")] == [newer.name]
    assert newer.stem not in (textfile_dir / "fraisier.prom").read_text()  # not listed as applied
