"""The store attacked with what we did not write: other writers' files, hostile directory entries, cleaners
racing it, and hand-overs from other versions. Each test names the bug it caught."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fraisier_textfile import liveness
from fraisier_textfile.errors import FraisierTextfileError, UnexpectedFileError
from fraisier_textfile.liveness import MARKER_DIRECTORY
from fraisier_textfile.recorder import MetricsRecorder

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
        liveness.create_marker(textfile_dir, "bare_metal", "api")
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
                marker = liveness.create_marker(textfile_dir, "bare_metal", "api")
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
