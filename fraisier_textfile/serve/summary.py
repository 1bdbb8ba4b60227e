"""How deployments are going, read from a parsed textfile: what ``fraisier textfile summary`` prints and the
landing page of ``fraisier metrics`` shows.

One row per provider and fraise type for what the file keeps by fraise type (deployments by status, success
rate, the last success and failure), and one row per provider (fraise type ``all``) that adds what the file
keeps by provider only: its availability, duration quantiles, deployments active now, rollbacks, health checks.

Read at a glance: the default table fits 100 columns (the statuses summed into failures; ``--wide`` shows each),
the landing page fits a 1,280-pixel window, and a provider reported down stands out in both.

Quantiles are estimated from the histogram buckets as Prometheus' ``histogram_quantile`` does (linear
interpolation inside the bucket that holds the rank), over every deployment since the file began.
"""

from __future__ import annotations

import html
import math
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fraisier_textfile import catalogue as c
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.syntax import parse_series_key

ALL_FRAISE_TYPES = "all"
FAILURE_STATUSES = tuple(status for status in c.DEPLOYMENT_STATUSES if status != "success")


@dataclass
class Row:
    provider: str
    fraise_type: str
    """A fraise type, or ``all`` for the provider as a whole."""
    deployments: dict[str, float] = field(default_factory=dict)
    """Finished deployments by status (every known status, 0 when none)."""
    total: float = 0.0
    success_rate: float | None = None
    """Successes / finished deployments; None when none finished."""
    last_success: float | None = None
    """Unix time of the last success; None when there was none."""
    last_failure: float | None = None
    """Unix time of the last deployment that did not succeed (failed, rolled back, crashed ...); None when there
    was none, or when the only failures have no time (crashes recorded by versions that gave them none)."""
    failures: float = 0.0
    """Finished deployments that did not succeed: every status but success, crashed included."""
    available: bool | None = None
    """The provider's last availability report (provider rows only); None when it never reported."""
    seconds_since_last_success: float | None = None
    seconds_since_last_failure: float | None = None
    duration_p50: float | None = None
    """Estimated median duration in seconds (provider rows only: durations are kept by provider)."""
    duration_p95: float | None = None
    active: float | None = None
    """Deployments in progress (provider rows only)."""
    rollbacks: float | None = None
    health_checks: float | None = None
    health_check_pass_rate: float | None = None


@dataclass
class Summary:
    now: float
    rows: list[Row]

    def at(self, now: float) -> Summary:
        """The same summary as of ``now``: only the ages since the last success and failure depend on the time."""
        rows = [replace(row) for row in self.rows]
        for row in rows:
            _age(row, now)
        return Summary(now, rows)

    def as_json(self) -> dict[str, Any]:
        return {"generated_at": self.now, "rows": [asdict(row) for row in self.rows]}


def histogram_quantile(quantile: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``quantile`` (0..1) estimated from cumulative ``(upper bound, count)`` buckets, ``+Inf`` included,
    as Prometheus estimates it: the rank's bucket found, then a linear interpolation between its bounds (the
    first bucket starts at 0; a rank in the ``+Inf`` bucket gives the highest finite bound). None without
    observations."""
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    observations = ordered[-1][1]
    if observations <= 0 or math.isnan(observations):
        return None
    rank = quantile * observations
    index = next(number for number, (_, count) in enumerate(ordered) if count >= rank or number == len(ordered) - 1)
    if index == len(ordered) - 1:
        return ordered[-2][0] if len(ordered) > 1 else None
    upper, count = ordered[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = ordered[index - 1]
    in_bucket = count - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def _age(row: Row, now: float) -> None:
    row.seconds_since_last_success = None if row.last_success is None else now - row.last_success
    row.seconds_since_last_failure = None if row.last_failure is None else now - row.last_failure


def _series(document: Document, family: c.Family) -> Iterable[tuple[str, dict[str, str], float]]:
    block = document.blocks.get(family.name)
    if block is None or block.owned is None:
        return
    for key, value in block.samples():
        name, labels = parse_series_key(key)
        yield name, labels, value


def summarize(document: Document, now: float | None = None) -> Summary:
    """The summary of a parsed textfile at time ``now`` (default: the current time)."""
    now = time.time() if now is None else now
    rows: dict[tuple[str, str], Row] = {}

    def row(provider: str, fraise_type: str) -> Row:
        found = rows.get((provider, fraise_type))
        if found is None:
            found = rows[(provider, fraise_type)] = Row(provider, fraise_type,
                                                         dict.fromkeys(c.DEPLOYMENT_STATUSES, 0.0))
        return found

    for _, labels, value in _series(document, c.DEPLOYMENTS):
        provider, status, fraise_type = labels.get("provider", ""), labels.get("status", ""), labels.get(
            "fraise_type", "")
        for target in (row(provider, fraise_type), row(provider, ALL_FRAISE_TYPES)):
            target.deployments[status] = target.deployments.get(status, 0.0) + value
    for _, labels, value in _series(document, c.LAST_DEPLOYMENT):
        provider, status = labels.get("provider", ""), labels.get("status", "")
        if value <= 0:
            continue  # a pre-initialised series: no deployment of that status yet
        for target in (row(provider, labels.get("fraise_type", "")), row(provider, ALL_FRAISE_TYPES)):
            if status == "success":
                target.last_success = max(target.last_success or value, value)
            else:
                target.last_failure = max(target.last_failure or value, value)

    buckets: dict[str, dict[float, float]] = {}
    for name, labels, value in _series(document, c.DEPLOYMENT_DURATION):
        if name.endswith("_bucket"):
            bounds = buckets.setdefault(labels.get("provider", ""), {})
            bound = float(labels.get("le", "nan"))
            bounds[bound] = bounds.get(bound, 0.0) + value  # summed over statuses, as sum by (le, provider)
    for provider, bounds in buckets.items():
        target = row(provider, ALL_FRAISE_TYPES)
        target.duration_p50 = histogram_quantile(0.5, bounds.items())
        target.duration_p95 = histogram_quantile(0.95, bounds.items())
    for _, labels, value in _series(document, c.PROVIDER_AVAILABILITY):
        # A file edited by hand may say NaN: that reports nothing, neither up nor down.
        row(labels.get("provider", ""), ALL_FRAISE_TYPES).available = None if math.isnan(value) else value != 0
    for _, labels, value in _series(document, c.ACTIVE_DEPLOYMENTS):
        target = row(labels.get("provider", ""), ALL_FRAISE_TYPES)
        target.active = (target.active or 0.0) + value
    for _, labels, value in _series(document, c.ROLLBACKS):
        target = row(labels.get("provider", ""), ALL_FRAISE_TYPES)
        target.rollbacks = (target.rollbacks or 0.0) + value
    passed: dict[str, float] = {}
    for _, labels, value in _series(document, c.HEALTH_CHECKS):
        provider = labels.get("provider", "")
        target = row(provider, ALL_FRAISE_TYPES)
        target.health_checks = (target.health_checks or 0.0) + value
        if labels.get("status") == "pass":
            passed[provider] = passed.get(provider, 0.0) + value

    for target in rows.values():
        target.total = sum(target.deployments.values())
        target.failures = sum(target.deployments.get(status, 0.0) for status in FAILURE_STATUSES)
        if target.total > 0:
            target.success_rate = target.deployments.get("success", 0.0) / target.total
        _age(target, now)
        if target.fraise_type == ALL_FRAISE_TYPES:
            if target.health_checks:
                target.health_check_pass_rate = passed.get(target.provider, 0.0) / target.health_checks
            target.active = target.active or 0.0
            target.rollbacks = target.rollbacks or 0.0
            target.health_checks = target.health_checks or 0.0
    # Each provider's own row first, then its fraise types.
    ordered = sorted(rows.values(), key=lambda r: (r.provider, r.fraise_type != ALL_FRAISE_TYPES, r.fraise_type))
    return Summary(now, ordered)


# Presentation

NAME = "name"
"""The default table's first column: the provider on its own row, each fraise type indented below it."""
COLUMNS: tuple[tuple[str, str], ...] = (
    ("PROVIDER / TYPE", NAME),
    ("AVAILABLE", "available"),
    ("DEPLOYS", "total"),
    ("SUCCESS", "success_rate"),
    ("FAILURES", "failures"),
    ("P95", "duration_p95"),
    ("LAST SUCCESS", "seconds_since_last_success"),
    ("LAST FAILURE", "seconds_since_last_failure"),
    ("ACTIVE", "active"),
)
"""``fraisier textfile summary``: what to read at a glance, in 100 columns."""
_EACH_ROW: tuple[tuple[str, str], ...] = (
    ("PROVIDER", "provider"),
    ("FRAISE TYPE", "fraise_type"),
    ("AVAILABLE", "available"),
    ("DEPLOYMENTS", "total"),
)
_DURATIONS_AND_SINCE: tuple[tuple[str, str], ...] = (
    ("P50", "duration_p50"),
    ("P95", "duration_p95"),
    ("LAST SUCCESS", "seconds_since_last_success"),
    ("LAST FAILURE", "seconds_since_last_failure"),
    ("ACTIVE", "active"),
    ("ROLLBACKS", "rollbacks"),
    ("HEALTH PASS", "health_check_pass_rate"),
)
WIDE_COLUMNS: tuple[tuple[str, str], ...] = (
    *_EACH_ROW,
    *((status.upper().replace("_", " "), f"status:{status}") for status in c.DEPLOYMENT_STATUSES),
    ("SUCCESS RATE", "success_rate"),
    *_DURATIONS_AND_SINCE,
)
"""``fraisier textfile summary --wide``: every number, each status in its own column."""
PAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    *_EACH_ROW,
    ("SUCCESS RATE", "success_rate"),
    ("FAILURES", "failures"),
    *_DURATIONS_AND_SINCE,
)
"""The landing page: the failures by status in each FAILURES cell's title."""
LEFT_ALIGNED = {NAME, "provider", "fraise_type"}
DEFAULT_WIDTH = 100
SHORTEST_NAME = 8
"""How far the default table shortens a long provider or fraise type (with an ellipsis) to fit its width."""


def format_duration(seconds: float) -> str:
    """``0.25s``, ``42.5s``, ``3m10s``, ``2h05m``, ``3d04h``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_age(seconds: float) -> str:
    if seconds < 0:  # the timestamp is ahead of this machine's clock
        return f"in {format_duration(-seconds)}"
    return f"{format_duration(seconds)} ago"


def _count(value: float) -> str:
    if not math.isfinite(value):  # a file edited by hand may say NaN or +Inf: shown as it is
        return str(value)
    # Whole numbers as such, up to where a float still counts by ones (beyond, 1e+300 rather than 301 digits).
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else f"{value:g}"


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``): a label value from a file anyone may have
    written must not drive the terminal that shows it (clear it, ring it, recolour what follows)."""
    return "".join(
        f"\\x{ord(character):02x}" if unicodedata.category(character) == "Cc" else character for character in text
    )


def is_provider_row(row: Row) -> bool:
    return row.fraise_type == ALL_FRAISE_TYPES


def cell(row: Row, column: str) -> str:
    """One cell's text; ``-`` for what the file does not say."""
    if column.startswith("status:"):
        return _count(row.deployments.get(column[len("status:"):], 0.0))
    if column == NAME:
        return printable(row.provider) if is_provider_row(row) else f"  {printable(row.fraise_type)}"
    if column == "available":
        if not is_provider_row(row):
            return ""  # availability is the provider's: said once, on its row
        return "-" if row.available is None else ("up" if row.available else "DOWN")
    value: Any = getattr(row, column)
    if value is None:
        if column == "seconds_since_last_failure" and row.failures > 0:
            return "unknown"  # failures whose time nobody wrote down (crashes, before they had one)
        return "-"
    if column in LEFT_ALIGNED:
        return printable(str(value))
    if column.endswith("rate"):
        return f"{value * 100:.1f}%"
    if column.startswith("duration_"):
        return format_duration(value)
    if column.startswith("seconds_since_"):
        return format_age(value)
    return _count(value)


def is_alarming(row: Row, column: str) -> bool:
    """Whether a cell says something is wrong now (a provider down): shown so that it stands out."""
    return column == "available" and is_provider_row(row) and row.available is False


def table_lines(
    summary: Summary, wide: bool = False, width: int = DEFAULT_WIDTH, emphasize: Callable[[str], str] | None = None
) -> list[str]:
    """The summary as an aligned text table: a header line, then one line per row. The default columns fit
    ``width`` (names too long for it are shortened with an ellipsis); ``wide`` gives every column, whole.
    ``emphasize`` wraps the aligned text of alarming cells (a terminal colour: it takes no columns)."""
    columns = WIDE_COLUMNS if wide else COLUMNS
    cells = [[title for title, _ in columns]] + [[cell(row, column) for _, column in columns] for row in summary.rows]
    widths = [max(len(line[number]) for line in cells) for number in range(len(columns))]
    if not wide:
        # Only the name gives way: numbers and ages are what the table is read for.
        overflow = sum(widths) + 2 * (len(columns) - 1) - width
        if overflow > 0:
            widths[0] = max(len(columns[0][0]), SHORTEST_NAME, widths[0] - overflow)
            for line in cells:
                if len(line[0]) > widths[0]:
                    line[0] = line[0][: widths[0] - 1] + "…"
    lines = []
    for number, line in enumerate(cells):
        row = summary.rows[number - 1] if number else None
        parts = []
        for text, size, (_, column) in zip(line, widths, columns):
            aligned = text.ljust(size) if column in LEFT_ALIGNED else text.rjust(size)
            if row is not None and emphasize is not None and is_alarming(row, column):
                aligned = emphasize(aligned)
            parts.append(aligned)
        lines.append("  ".join(parts).rstrip())
    return lines


def html_table(summary: Summary) -> str:
    """The summary as an HTML table (every value escaped), or a paragraph when there is nothing yet."""
    if not summary.rows:
        return '<p id="summary">No deployments recorded yet.</p>\n'
    head = "".join(f'<th class="{"text" if column in LEFT_ALIGNED else "number"}">{html.escape(title)}</th>'
                   for title, column in PAGE_COLUMNS)
    body = []
    for row in summary.rows:
        kind = "provider" if is_provider_row(row) else "fraise-type"
        cells = "".join(_html_cell(row, column) for _, column in PAGE_COLUMNS)
        body.append(f'<tr class="{kind}">{cells}</tr>')
    rows = "\n".join(body)
    return f'<table id="summary">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n'


def _html_cell(row: Row, column: str) -> str:
    classes = ["text" if column in LEFT_ALIGNED else "number"]
    if is_alarming(row, column):
        classes.append("down")
    title = ""
    if column == "failures" and row.failures:
        by_status = ", ".join(
            f"{status.replace('_', ' ')} {_count(row.deployments.get(status, 0.0))}" for status in FAILURE_STATUSES
        )
        title = f' title="{html.escape(by_status)}"'
    return f'<td class="{" ".join(classes)}"{title}>{html.escape(cell(row, column))}</td>'


def as_json_text(summary: Summary) -> str:
    import json

    # NaN and infinities (from a file edited by hand) are not JSON: jq and most parsers refuse them.
    return json.dumps(_finite_or_null(summary.as_json()), indent=2, sort_keys=False, allow_nan=False)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value

