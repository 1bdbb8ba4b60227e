"""The page at ``/`` (fraisier_textfile/serve/landing.py): the summary of what a scrape serves now, its ages as of
each request, its counts as of the file's last change, and an error named instead of a table."""

from __future__ import annotations

import re
from pathlib import Path

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.serve.landing import LandingPage
from fraisier_textfile.serve.sources import TextfileSource
from fraisier_textfile.serve.summary import html_table, summarize

LAST_SUCCESS = 1_790_000_000.0


def deploy(store: TextfileStore, status: str = "success", when: float = LAST_SUCCESS) -> None:
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", status, 12.0, now=when)
    store.merge(changes)


def table_of(page: str) -> str:
    found = re.search(r'<table id="summary">.*?</table>\n', page, re.DOTALL)
    assert found is not None, page
    return found.group(0)


def test_the_page_is_the_summary_of_the_file_as_of_each_request(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    deploy(store)
    page = LandingPage(TextfileSource(store))
    for now in (LAST_SUCCESS + 5, LAST_SUCCESS + 5.5, LAST_SUCCESS + 7200, LAST_SUCCESS + 90_000):
        assert table_of(page.render(now=now)) == html_table(summarize(store.read(), now=now))
    assert table_of(page.render(now=LAST_SUCCESS + 5)) != table_of(page.render(now=LAST_SUCCESS + 7200))


def test_a_changed_file_is_summarized_anew(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    deploy(store)
    page = LandingPage(TextfileSource(store))
    now = LAST_SUCCESS + 60
    before = table_of(page.render(now=now))
    deploy(store, "failed", when=LAST_SUCCESS + 30)
    after = table_of(page.render(now=now))  # the same second: only the file changed
    assert after != before
    assert after == html_table(summarize(store.read(), now=now))


def test_a_file_that_cannot_be_served_is_named_instead_of_a_table(textfile_dir: Path) -> None:
    store = TextfileStore(textfile_dir)
    deploy(store)
    page = LandingPage(TextfileSource(store))
    assert '<table id="summary">' in page.render()
    store.path.write_text("not a metric line\n")
    shown = page.render()
    assert '<p id="summary">No summary: cannot serve ' in shown and '<table id="summary">' not in shown
