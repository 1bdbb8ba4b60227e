"""The page at ``/``: a link to ``/metrics`` (the exporters' convention) and the deployments summary of what a scrape
serves now, for a person who opens the address in a browser."""

from __future__ import annotations

import html
import math
import threading
import time

from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.errors import FraisierTextfileError
from fraisier_textfile.format.reader import parse
from fraisier_textfile.serve.sources import MetricsSource, Payload
from fraisier_textfile.serve.summary import Summary, html_table, summarize

LANDING_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Fraisier metrics</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1d1d1d; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ padding: 0.3em 0.5em; border-bottom: 1px solid #ddd; white-space: nowrap; }}
th {{ text-align: left; background: #f3f3f3; white-space: normal; vertical-align: bottom; font-size: 0.8em; }}
th.number, td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.provider td {{ font-weight: 600; border-top: 2px solid #bbb; }}
td.text {{ white-space: normal; overflow-wrap: anywhere; min-width: 6em; }}
td.down {{ background: #c62828; color: #fff; font-weight: 700; }}
.note {{ color: #555; font-size: 0.85em; }}
</style>
</head>
<body>
<h1>Fraisier metrics</h1>
<p>Fraisier's deployment metrics, for Prometheus, from {source}.</p>
<p><a href="metrics">Metrics</a></p>
<h2>Deployments</h2>
{summary}<p class="note">Per provider and fraise type; availability, durations, active deployments, rollbacks and health
checks are kept per provider, on its "all" row. Failures are every deployment that did not succeed (failed,
rolled back, rollback failed, crashed: hover for each). Quantiles are estimated from the histogram buckets, over
every deployment since the file began.</p>
</body>
</html>
"""


class LandingPage:
    """The page at ``/`` for one source. Summarizing a file costs hundreds of times what serving it does (a parse,
    then every series read): any client may request the page in a loop, and that must not take the time of the
    scrapes. So the summary is made once per body the source serves (it hands out the same payload while nothing
    changed) and brought to each request's time, and the page is rendered at most once per tenth of a second,
    the finest step its ages show."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._summarized: tuple[Payload, Summary | str] | None = None
        """The last payload summarized, and its summary (or why there is none: HTML)."""
        self._rendered: tuple[Payload, int, str] | None = None
        """The last page: its payload, the tenth of a second it was rendered for, and the page."""

    def render(self, now: float | None = None) -> str:
        """The page as of ``now`` (default: the current time)."""
        now = time.time() if now is None else now
        try:
            payload = self.source.scrape()
        except FraisierTextfileError as error:
            return self._page(_no_summary(error))
        tenth = math.floor(now * 10)
        with self._lock:  # one request summarizes a new payload; the others wait for it, not the scrapes
            rendered = self._rendered
            if rendered is not None and rendered[0] is payload and rendered[1] == tenth:
                return rendered[2]
            summarized = self._summarized
            if summarized is None or summarized[0] is not payload:
                summarized = self._summarized = (payload, _summarize(payload))
            summary = summarized[1]
            page = self._page(summary if isinstance(summary, str) else html_table(summary.at(now)))
            self._rendered = (payload, tenth, page)
            return page

    def _page(self, summary: str) -> str:
        return LANDING_PAGE.format(source=html.escape(self.source.describe()), summary=summary)


def _summarize(payload: Payload) -> Summary | str:
    try:
        # Only the labels are read: a registry may write them in another order than the textfile does.
        return summarize(parse(payload.plain.decode("utf-8"), SCHEMA, check_histograms=False))
    except (FraisierTextfileError, ValueError) as error:  # ParseError and UnicodeDecodeError are ValueErrors
        return _no_summary(error)


def _no_summary(error: Exception) -> str:
    return f'<p id="summary">No summary: {html.escape(str(error))}</p>\n'
