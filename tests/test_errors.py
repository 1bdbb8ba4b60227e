"""Exceptions a multi-process library can use: one base class, pickled whole, the builtin a caller would catch,
the errno kept."""

from __future__ import annotations

import errno
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore, errors
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    InvalidValueError,
    LockTimeoutError,
    ServerStartError,
    TextfileError,
    TextfileWriteError,
    UnexpectedFileError,
    WebConfigError,
)

from .processes import lock_held_elsewhere

EXAMPLES = [
    FraisierTextfileError("something went wrong"),
    InvalidValueError("status='exploded' is not known: use one of success, failed"),
    TextfileError(Path("/srv/textfile/fraisier.prom"), "cannot read it"),
    UnexpectedFileError(Path("/srv/textfile/fraisier.prom"), "/srv/textfile/fraisier.prom is a FIFO: remove it"),
    CorruptTextfileError(Path("/srv/textfile/fraisier.prom"), "the file does not end with a newline", 12),
    CorruptTextfileError(Path("/srv/textfile/fraisier.prom"), "a counter is NaN"),
    TextfileWriteError(Path("/srv/textfile/fraisier.prom"), "cannot write it: No space left", errno.ENOSPC),
    LockTimeoutError(Path("/srv/textfile/fraisier.prom.lock"), 0.25),
    WebConfigError(Path("/etc/fraisier/web.yml"), "basic_auth_users must be a mapping"),
    ServerStartError("127.0.0.1", 8001, "cannot listen on 127.0.0.1:8001: address in use"),
]


def every_error_class() -> set[type[FraisierTextfileError]]:
    return {
        value for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, FraisierTextfileError)
    }


def test_every_error_class_has_an_example_and_its_own_reduce() -> None:
    assert {type(example) for example in EXAMPLES} == every_error_class()
    for cls in every_error_class():
        assert "__reduce__" in vars(cls), f"{cls.__name__} does not define __reduce__"


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda error: type(error).__name__)
def test_an_error_survives_pickling_whole(error: FraisierTextfileError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)


def raise_example(position: int) -> None:
    raise EXAMPLES[position]


def test_errors_cross_a_process_boundary() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        for position, error in enumerate(EXAMPLES):
            with pytest.raises(type(error)) as raised:
                pool.submit(raise_example, position).result()
            assert str(raised.value) == str(error)
            assert vars(raised.value) == vars(error)


def test_a_lock_timeout_is_a_timeout_error(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir, lock_timeout=0.1)
    store.merge(Changes())
    with lock_held_elsewhere(store.lock_path), pytest.raises(TimeoutError) as raised:
        store.merge(Changes())
    assert isinstance(raised.value, LockTimeoutError)
    assert raised.value.path == store.lock_path
    assert raised.value.timeout == 0.1


def test_a_write_error_keeps_the_errno_and_the_path(tmp_path: Path) -> None:
    """The textfile directory's place is taken by a regular file: mkdir fails with EEXIST, reported as a
    TextfileWriteError, never as a raw OSError."""
    occupied = tmp_path / "occupied"
    occupied.write_text("a file\n")
    with pytest.raises(TextfileWriteError) as raised:
        TextfileStore(occupied).merge(Changes())
    assert raised.value.errno == errno.EEXIST
    assert raised.value.path == occupied
    assert str(raised.value).startswith(f"cannot create the directory {occupied}: File exists")


def test_a_directory_under_a_file_is_a_write_error_too(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file\n")
    with pytest.raises(TextfileWriteError) as raised:
        TextfileStore(occupied / "textfile").merge(Changes())
    assert raised.value.errno == errno.ENOTDIR
    assert not isinstance(raised.value, OSError)

