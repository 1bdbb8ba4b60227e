"""Log lines for the ``fraisier`` command: the levels and formats its options take, and ``configure``, which
sends every record to stderr in node_exporter's logfmt or JSON lines (``log_lines``).

The library only logs through ``logging`` and installs no handler: only the CLI calls ``configure``. A
``fraisier record`` run sets its handler up at the first record (``configure_at_first_record``): a run with
nothing to say does not import ``logging`` at all (``fraisier_textfile.logger``).
"""

from __future__ import annotations

from typing import IO

from fraisier_textfile import logger

LEVELS: dict[str, int] = {"debug": logger.DEBUG, "info": logger.INFO, "warn": logger.WARNING, "error": logger.ERROR}
FORMATS = ("logfmt", "json")
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "logfmt"
LEVEL_ENVIRONMENT = "FRAISIER_LOG_LEVEL"
FORMAT_ENVIRONMENT = "FRAISIER_LOG_FORMAT"

_HANDLER_NAME = "fraisier-cli"


def configure(level: str = DEFAULT_LEVEL, format: str = DEFAULT_FORMAT, stream: IO[str] | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``format``. Called again, it
    replaces its own handler rather than adding a second one."""
    _check(level, format)
    import logging

    from fraisier_textfile.cli.log_lines import JSONFormatter, LogfmtFormatter, StderrHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(LogfmtFormatter() if format == "logfmt" else JSONFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


def configure_at_first_record(level: str = DEFAULT_LEVEL, format: str = DEFAULT_FORMAT) -> None:
    """``configure``, done just before the first record of this package's loggers (or now, where ``logging`` is
    imported already): for a command whose modules all log through ``fraisier_textfile.logger``."""
    _check(level, format)
    logger.at_first_use(lambda: configure(level, format))


def _check(level: str, format: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}: use one of {', '.join(FORMATS)}")
