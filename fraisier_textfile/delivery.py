"""Getting changes into the textfile without waiting long: merge within a wait, else hand them over.

The store owns the protocol (``TextfileStore.merge_or_hand_over``: events handed over are written exactly once
by the next merge of any process). This module is the one place the recorder and ``fraisier exec`` reach it
through, so that both say the same thing about what happened to their changes.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from fraisier_textfile.errors import LockTimeoutError

if TYPE_CHECKING:
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.textfile import TextfileStore


class Delivery(enum.Enum):
    MERGED = "merged"
    """In the textfile now."""
    HANDED_OVER = "handed over"
    """Written durably beside the textfile; the next merge by any process applies them exactly once."""
    KEPT = "kept"
    """Still only in this process's memory: the lock stayed busy and the store cannot hand over."""


def merge_or_hand_over(store: TextfileStore, changes: Changes, wait: float) -> Delivery:
    """Merge ``changes``, waiting at most ``wait`` seconds for the lock; if it stays busy, hand them over.
    MERGED and HANDED_OVER leave ``changes`` empty. Raises the store's errors (unwritable directory, corrupt
    file, ...) with ``changes`` untouched."""
    method = getattr(store, "merge_or_hand_over", None)
    if method is not None:
        return Delivery.MERGED if method(changes, wait) else Delivery.HANDED_OVER
    # Until the store's hand-over is there: a merge that waits at most `wait`, and a busy lock keeps the
    # events in memory (retried at the next call and at exit).
    from fraisier_textfile.textfile import TextfileStore

    timed = store if wait == store.lock_timeout else TextfileStore(store.directory, wait)
    try:
        timed.merge(changes)
    except LockTimeoutError:
        return Delivery.KEPT
    _empty(changes)
    return Delivery.MERGED


def hand_over(store: TextfileStore, changes: Changes) -> bool:
    """Hand ``changes`` over without taking the lock (for a merge that failed for another reason than a busy
    lock: the events then outlive this process). False if the store cannot hand over."""
    method = getattr(store, "hand_over", None)
    if method is None:
        return False
    method(changes)
    return True


def _empty(changes: Changes) -> None:
    # The store's merge empties the changes in place (Changes.clear()); an older store did not.
    if changes:
        changes.__init__()  # type: ignore[misc]
