"""Fraisier's words, as this reader's labels: the statuses of its deployments, its error messages turned into a
bounded ``error_type``, and the times it stores.

Fraisier stores the message of a failure only (no class or code), in ``error_message``; a label must stay
bounded, so never the message itself: the first of ERROR_TYPES found in it names it.
"""

from __future__ import annotations

import re
from datetime import datetime

FAILED = ("failed", "rolled_back", "rollback_failed")
IN_PROGRESS = ("in_progress", "pending")

ERROR_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("health_check", re.compile(r"health.?check", re.IGNORECASE)),
    ("timeout", re.compile(r"timed? ?out|timeout", re.IGNORECASE)),
    ("install", re.compile(r"install", re.IGNORECASE)),
    ("migration", re.compile(r"migrat", re.IGNORECASE)),
    ("git", re.compile(r"\bgit\b|fetch|checkout|rev-parse|clone", re.IGNORECASE)),
    ("lock", re.compile(r"\block", re.IGNORECASE)),
    ("command", re.compile(r"exit (code|status)|non-zero|returned", re.IGNORECASE)),
)
UNKNOWN_ERROR = "unknown"
"""A failure without a message."""
OTHER_ERROR = "other"
"""A message none of ERROR_TYPES matches."""


def error_type(message: object) -> str:
    """The bounded ``error_type`` of a failed row's ``error_message`` (see ERROR_TYPES)."""
    if isinstance(message, bytes):
        # SQLite keeps any value in a TEXT column: a BLOB comes back as bytes, which a str pattern refuses.
        message = message.decode("utf-8", "replace")
    if not message:
        return UNKNOWN_ERROR
    message = str(message)
    for name, pattern in ERROR_TYPES:
        if pattern.search(message):
            return name
    return OTHER_ERROR


def rollback_reason(message: object) -> str:
    """Why a rolled-back row was rolled back: its error type (``health_check``, ``timeout``, ...)."""
    return error_type(message)


def timestamp(text: object) -> float | None:
    """A time Fraisier stored: ``datetime.now().isoformat()``, naive local time, read in this process's local
    time zone (the host's: run the reader with Fraisier's TZ), or an ISO time with an offset."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
