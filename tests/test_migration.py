"""store/migration.py: a histogram written with other buckets than the catalogue's gets the catalogue's, its
totals kept exactly and no bucket claiming observations it cannot know were below it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.check import check_text
from fraisier_textfile.format.reader import parse
from fraisier_textfile.store.migration import migrate_histograms, migration_notes

from .values import sample_values

NAME = c.DEPLOYMENT_DURATION.name
SERIES = 'provider="bare_metal",status="success"'


def written_by_prometheus_client() -> str:
    """The duration histogram as prometheus_client writes it with its own default buckets."""
    registry = CollectorRegistry()
    histogram = Histogram(NAME, c.DEPLOYMENT_DURATION.help, ["provider", "status"], registry=registry)
    for duration in (0.2, 4.0, 7.0, 200.0, 4000.0):
        histogram.labels("bare_metal", "success").observe(duration)
    return generate_latest(registry).decode()


def bucket(values: dict[str, float], le: str) -> float:
    return values[f'{NAME}_bucket{{{SERIES},le="{le}"}}']


def test_a_histogram_with_other_buckets_gets_the_catalogues_and_keeps_its_totals() -> None:
    document = parse(written_by_prometheus_client(), SCHEMA, check_histograms=False)
    assert len(migration_notes(document)) == 1
    notes = migrate_histograms(document)
    assert len(notes) == 1 and NAME in notes[0]
    text = document.render()
    assert check_text(text, SCHEMA) == []
    values = sample_values(text)
    assert bucket(values, "+Inf") == values[f"{NAME}_count{{{SERIES}}}"] == 5
    assert values[f"{NAME}_sum{{{SERIES}}}"] == 4211.2
    assert bucket(values, "5.0") == 2  # a bound both have keeps its count (0.2 and 4.0)
    assert bucket(values, "1.0") == 1  # both have it: 0.2
    # 30 is new: it starts from the largest old bound below it (10: 0.2, 4, 7), never claiming more.
    assert bucket(values, "30.0") == 3
    assert migration_notes(document) == []


def test_a_merge_migrates_the_file_and_counts_on_in_the_catalogues_buckets(textfile_dir: Path) -> None:
    textfile_dir.mkdir(exist_ok=True)
    (textfile_dir / "fraisier.prom").write_text(written_by_prometheus_client())
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 20.0, now=1_700_000_000.0)
    TextfileStore(textfile_dir).merge(changes)
    text = (textfile_dir / "fraisier.prom").read_text()
    assert check_text(text, SCHEMA) == []
    values = sample_values(text)
    assert bucket(values, "+Inf") == 6
    assert bucket(values, "30.0") == 4
