"""The page at ``/``: a link to ``/metrics`` (the exporters' convention) and the deployments summary of what a scrape
serves now, for a person who opens the address in a browser."""

from __future__ import annotations

import html

from fraisier_textfile.errors import FraisierTextfileError
from fraisier_textfile.serve.sources import MetricsSource

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


def landing_page(source: MetricsSource) -> str:
    """The page at ``/``: a link to the metrics and the deployments summary of what a scrape serves now."""
    from fraisier_textfile.format.reader import parse
    from fraisier_textfile.serve.summary import html_table, summarize

    try:
        # Only the labels are read: a registry may write them in another order than the textfile does.
        summary = html_table(summarize(parse(source.scrape().plain.decode("utf-8"), check_histograms=False)))
    except (FraisierTextfileError, ValueError) as error:  # ParseError and UnicodeDecodeError are ValueErrors
        summary = f'<p id="summary">No summary: {html.escape(str(error))}</p>\n'
    return LANDING_PAGE.format(source=html.escape(source.describe()), summary=summary)
