"""How one log record becomes one line, in node_exporter's two formats (``logs`` says which, and where).

    logfmt:  time=2026-11-25T16:54:08.123Z level=info logger=fraisier_textfile.serve.server msg="request" method=GET
    json:    {"time": "2026-11-25T16:54:08.123Z", "level": "info", "logger": "...", "msg": "request", "method": "GET"}

One line per record, UTC times with milliseconds, levels named as ``--log-level`` takes them; structured details
come from ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any


def level_name(levelno: int) -> str:
    """``debug``, ``info``, ``warn`` or ``error`` (critical counts as error)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, as node_exporter writes it."""
    seconds = int(created)
    milliseconds = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milliseconds:03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ordered fields of one record: time, level, logger, msg, then the record's own fields, then the
    exception if there is one."""
    fields: dict[str, Any] = {
        "time": timestamp(record.created),
        "level": level_name(record.levelno),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            name = str(key)
            fields[name if name not in fields else f"field_{name}"] = value
    if record.exc_info and record.exc_info[1] is not None:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


_NAMED_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(character: str) -> str:
    """``\\u001b`` for ESC: JSON's escape, which logfmt readers (go-logfmt) also take. A character beyond the
    Basic Multilingual Plane becomes a surrogate pair, as JSON spells it."""
    code = ord(character)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _is_hidden(character: str) -> bool:
    """Whether a terminal or an editor could act on ``character`` or not show it: C0 and C1 controls (ESC
    starts a terminal's escape sequences, U+009B is CSI), DEL, line and paragraph separators, format characters
    (a right-to-left override reorders what follows), lone surrogates (a file name that is not UTF-8),
    unassigned and private-use code points: whatever str.isprintable refuses."""
    return not character.isprintable()


def _escape_hidden(text: str) -> str:
    """``text`` with every hidden character (see _is_hidden) written as a JSON escape; printable text outside
    ASCII (``é``) is kept as it is, to stay readable."""
    if text.isprintable():
        return text
    return "".join(_escape_character(character) if _is_hidden(character) else character for character in text)


def _logfmt_value(value: object) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text and not any(character in text for character in ' ="\\') and text.isprintable():
        return text
    # Escaped as a JSON string is, so that a value from a client (a request path) or a file name can never
    # put a raw ESC, CR or NUL on an operator's terminal, nor break the line in two.
    escaped = "".join(
        _NAMED_ESCAPES.get(character) or (_escape_character(character) if _is_hidden(character) else character)
        for character in text
    )
    return f'"{escaped}"'


def _logfmt_key(key: str) -> str:
    cleaned = "".join(character if character.isprintable() and character not in ' ="' else "_" for character in key)
    return cleaned or "_"


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs; values with spaces, quotes, ``=`` or control characters are quoted and escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in record_fields(record).items())


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        # json.dumps escapes only C0 (below U+0020): DEL, C1 and the other hidden characters go through raw
        # unless escaped here. They can only be inside strings of its output, where a JSON escape is valid.
        return _escape_hidden(json.dumps(record_fields(record), default=str, ensure_ascii=False))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (as logging's last-resort handler does),
    not to the stream it was when configured: click's test runner, for one, swaps it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass
