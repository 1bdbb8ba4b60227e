"""format/model.py: a textfile as blocks of families and bookkeeping lines, written back byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.model import Block, Document, check_buckets
from fraisier_textfile.format.reader import parse, parse_bytes
from fraisier_textfile.format.syntax import ParseError

from .values import sample_values


def test_a_file_written_by_a_merge_is_written_back_unchanged_byte_for_byte(textfile_dir: Path) -> None:
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 12.5, now=1_700_000_000.0)
    events.deployment_error(changes, "docker_compose", "timeout")
    store = TextfileStore(textfile_dir)
    store.merge(changes)
    data = store.path.read_bytes()
    assert b"".join(parse_bytes(data, SCHEMA).parts()) == data


def test_families_we_do_not_own_keep_their_exact_text_after_ours() -> None:
    """Another exporter's families (here prometheus_client's own output) pass through untouched."""
    registry = CollectorRegistry()
    Counter("other_jobs", "Jobs of another exporter.", ["kind"], registry=registry).labels("a\\b").inc(3)
    Gauge("other_temperature", "Someone else's gauge.", registry=registry).set(21.5)
    theirs = generate_latest(registry).decode()
    document = parse(theirs, SCHEMA)
    document.block(c.DEPLOYMENT_ERRORS).set('fraisier_deployment_errors_total{provider="bare_metal",'
                                            'error_type="timeout"}', 1.0)
    written = document.render()
    assert theirs in written
    assert written.index("fraisier_deployment_errors_total") < written.index("other_jobs")
    assert sample_values(written)['other_jobs_total{kind="a\\\\b"}'] == 3


def test_a_block_sets_reads_and_removes_series() -> None:
    block = Block(c.DEPLOYMENT_ERRORS.name, owned=c.DEPLOYMENT_ERRORS)
    key = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
    assert block.value(key) is None
    block.set(key, 2.0)
    block.set(key, 3.0)
    assert block.value(key) == 3.0
    assert list(block.samples()) == [(key, 3.0)]
    assert block.remove(key) and not block.remove(key)
    assert list(block.samples()) == []


def test_a_histogram_without_the_catalogues_buckets_is_named_with_both_sets() -> None:
    document = Document(SCHEMA)
    block = document.block(c.DEPLOYMENT_DURATION)
    block.set('fraisier_deployment_duration_seconds_bucket{provider="bare_metal",status="success",le="7.0"}', 1)
    block.set('fraisier_deployment_duration_seconds_bucket{provider="bare_metal",status="success",le="+Inf"}', 1)
    with pytest.raises(ParseError, match=r"le=7\.0,\+Inf but the catalogue's are le=1\.0,"):
        check_buckets(block, c.DEPLOYMENT_DURATION)
