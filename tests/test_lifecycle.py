"""The series lifecycle in every merge (fraisier_textfile/store/lifecycle.py): expiry, the series bound, bucket
migration.

The CLI runs as real subprocesses on real files; times in the past are written by a store whose clock is set
back, through the same update-time lines every merge writes."""

from __future__ import annotations

import functools
import logging
import math
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.bookkeeping import text_of
from fraisier_textfile.format.reader import parse
from fraisier_textfile.format.schema import format_float
from fraisier_textfile.store.lifecycle import (
    REFUSED_FAMILY,
    UPDATED,
    SeriesTimes,
    migrate_histograms,
)
from fraisier_textfile.store.selection import Selection, forget

from .processes import binary, fraisier, fraisier_metrics, http_get, node_exporter
from .stores import DAY, record, series_with, store_at, two_providers
from .values import canonical_samples, sample_values

FIXTURES = Path(__file__).parent / "fixtures"
HEALTH = c.HEALTH_CHECK_DURATION.name


# Retention


def test_refresh_expires_series_not_updated_for_that_long(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    fresh = {key: value for key, value in sample_values(path).items() if "docker_compose" not in key}
    dry = fraisier("textfile", "forget", "--expire-after", "30d", "--dry-run", textfile_dir=textfile_dir)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1].endswith("would forget 15 series (dry run: nothing written)")
    # 41 days: nothing is that old yet.
    result = fraisier("textfile", "refresh", "--expire-after", "41d", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert len(series_with(path, "docker_compose")) > 0
    result = fraisier("textfile", "refresh", "--expire-after", "30d", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert f'expired {c.DEPLOYMENT_ERRORS.name}{{provider="docker_compose",error_type="timeout"}}' in (
        result.stdout.splitlines()
    )
    assert len(result.stdout.splitlines()) == 15
    assert series_with(path, "docker_compose") == []
    assert sample_values(path) == fresh


def test_every_writer_expires_with_the_environment_variable(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    result = fraisier("record", "error", "--provider", "bare_metal", "--error-type", "oom",
                      textfile_dir=textfile_dir, env={**_environment(), "FRAISIER_EXPIRE_AFTER": "30d"})
    assert result.returncode == 0, result.stderr
    assert series_with(path, "docker_compose") == []
    assert sample_values(path)[f'{c.DEPLOYMENT_ERRORS.name}{{provider="bare_metal",error_type="oom"}}'] == 1


def _environment() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_an_update_keeps_a_series_from_expiring(textfile_dir: Path) -> None:
    now = time.time()
    record(store_at(textfile_dir, now - 40 * DAY), events.deployment_error, "p", "a")
    record(store_at(textfile_dir, now - 40 * DAY), events.deployment_error, "p", "b")
    record(store_at(textfile_dir, now - DAY), events.deployment_error, "p", "a")  # a is updated, b is not
    store = store_at(textfile_dir, now)
    store.lifecycle.expire_after = 30 * DAY
    store.merge(Changes())
    assert store.lifecycle.forgotten == [f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="b"}}']
    assert sample_values(store.path) == {f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="a"}}': 2}


def test_the_zero_series_of_a_pair_in_use_do_not_expire(textfile_dir: Path) -> None:
    """A long-lived recorder creates the other statuses at 0 once, then records only successes: the zero
    series (there for increase() to see a first crash) must live as long as the pair is used."""
    now = time.time()
    record(store_at(textfile_dir, now - 40 * DAY), events.deployment_complete, "p", "api", "success", 1.0)
    changes = Changes()
    changes.add(c.DEPLOYMENTS, ("p", "success", "api"), 1.0)
    changes.observe(c.DEPLOYMENT_DURATION, ("p", "success"), 1.0)
    store_at(textfile_dir, now - DAY).merge(changes)
    store = store_at(textfile_dir, now)
    store.lifecycle.expire_after = 30 * DAY
    store.merge(Changes())
    assert store.lifecycle.forgotten == [
        f'{c.LAST_DEPLOYMENT.name}{{provider="p",fraise_type="api",status="success"}}'
    ]
    crashed = f'{c.DEPLOYMENTS.name}{{provider="p",status="crashed",fraise_type="api"}}'
    assert sample_values(store.path)[crashed] == 0
    assert sample_values(store.path)[f'{c.DEPLOYMENT_DURATION.name}_count{{provider="p",status="crashed"}}'] == 0


def _update_times(path: Path, family: c.Family) -> dict[str, int]:
    meta = parse(path.read_text(), SCHEMA).meta
    return SeriesTimes(text_of(meta[UPDATED.at(family.name).key])).entries()


def _errors_a_and_b_recorded(textfile_dir: Path, now: float) -> TextfileStore:
    """A store at ``now`` that recorded errors ``a`` and ``b`` of provider ``p``, each in a merge of its own."""
    store = store_at(textfile_dir, now)
    record(store, events.deployment_error, "p", "a")
    record(store, events.deployment_error, "p", "b")
    return store


def test_one_store_merging_within_a_minute_notes_the_times_of_series_it_had_not_touched(
    textfile_dir: Path,
) -> None:
    """A long-lived store leaves the times of series it noted this minute alone: not those of series new to it."""
    now = time.time()
    store = _errors_a_and_b_recorded(textfile_dir, now)
    record(store, events.deployment_error, "p", "a")
    assert _update_times(store.path, c.DEPLOYMENT_ERRORS) == {"p,a": int(now // 60), "p,b": int(now // 60)}


def test_one_store_merging_a_minute_later_moves_the_times_on(textfile_dir: Path) -> None:
    now = time.time()
    store = _errors_a_and_b_recorded(textfile_dir, now)
    store.lifecycle.clock = lambda: now + 60
    record(store, events.deployment_error, "p", "a")
    minute = int(now // 60)
    assert _update_times(store.path, c.DEPLOYMENT_ERRORS) == {"p,a": minute + 1, "p,b": minute}


def test_a_series_forgotten_and_recorded_again_within_the_minute_by_one_store_gets_its_time_back(
    textfile_dir: Path,
) -> None:
    now = time.time()
    store = _errors_a_and_b_recorded(textfile_dir, now)
    assert forget(store, Selection([("error_type", "a")], schema=SCHEMA)) == [
        f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="a"}}'
    ]
    record(store, events.deployment_error, "p", "a")
    assert _update_times(store.path, c.DEPLOYMENT_ERRORS) == {"p,b": int(now // 60), "p,a": int(now // 60)}
    assert sample_values(store.path)[f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="a"}}'] == 1


def test_a_store_keeps_nothing_of_a_document_another_process_replaced(textfile_dir: Path) -> None:
    """What a long-lived store notes of its last merge of a family (its update-time line, spans of the file read)
    must not keep a file that another process's merge replaced alive, whichever families it merges next."""
    now = time.time()
    store = _errors_a_and_b_recorded(textfile_dir, now)
    record(store, events.rollback, "p", "health", 1.0)
    record(store_at(textfile_dir, now), events.deployment_error, "q", "a")  # another process's merge
    record(store, events.deployment_error, "p", "a")
    cached = store.transaction._cached
    assert cached is not None
    lines = list(cached[1].meta.values())
    noted = store.lifecycle._times_noted
    assert noted and all(any(line is kept for kept in lines) for line, _, _ in noted.values())


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["complete", "error", "health", "forget", "elsewhere"]),
        st.sampled_from(["p", "q"]),
        st.sampled_from(["success", "failed"]),  # a status, or an error type
        st.integers(-1, 2),  # minutes the clock moves before the step (back too)
    ),
    min_size=1, max_size=12,
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS)
@example(steps=[("complete", "p", "success", 0), ("forget", "p", "success", 0), ("complete", "p", "success", 0)])
def test_a_long_lived_store_notes_the_times_a_new_store_at_each_merge_notes(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, str, int]]
) -> None:
    """The update times a store skips noting again within a minute (what its last merge noted) must be the times
    that a store made afresh for each merge, which notes them all, writes: whatever the events, forgets, merges
    of other processes and clock steps (back too)."""
    warm_dir, fresh_dir = tmp_path_factory.mktemp("warm"), tmp_path_factory.mktemp("fresh")
    now = 1_700_000_000.0
    warm = store_at(warm_dir, now)
    for action, provider, word, minutes in steps:
        now += 60 * minutes
        warm.lifecycle.clock = functools.partial(float, now)
        for directory in (warm_dir, fresh_dir):
            store = warm if directory == warm_dir else store_at(directory, now)
            if action == "complete":
                record(store, events.deployment_complete, provider, "api", word, 1.0)
            elif action == "error":
                record(store, events.deployment_error, provider, word)
            elif action == "health":
                record(store, events.health_check, provider, "http", "pass", 0.5)
            elif action == "forget":
                forget(store, Selection([("provider", provider)], schema=SCHEMA))
            else:  # another process's merge, of the same series
                record(store_at(directory, now), events.deployment_error, provider, "elsewhere")
        for family in (c.DEPLOYMENTS, c.DEPLOYMENT_DURATION, c.LAST_DEPLOYMENT, c.DEPLOYMENT_ERRORS,
                       c.HEALTH_CHECKS):
            assert _times_or_none(warm_dir, family) == _times_or_none(fresh_dir, family), (family.name, steps)


def _times_or_none(directory: Path, family: c.Family) -> dict[str, int] | None:
    path = directory / "fraisier.prom"
    if not path.exists() or UPDATED.at(family.name).key not in parse(path.read_text(), SCHEMA).meta:
        return None
    return _update_times(path, family)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FRAISIER_MAX_SERIES_PER_FAMILY", "lots", "FRAISIER_MAX_SERIES_PER_FAMILY='lots' is not"),
        ("FRAISIER_EXPIRE_AFTER", "30 days", "FRAISIER_EXPIRE_AFTER='30 days' is not a duration"),
    ],
)
def test_a_bad_setting_in_the_environment_is_one_warning_line_and_its_default(
    textfile_dir: Path, variable: str, value: str, message: str
) -> None:
    """A typo in a metrics-only setting must not lose the event: reported, and the default used."""
    two_providers(textfile_dir)
    result = fraisier("record", "error", "--provider", "p", "--error-type", "e", textfile_dir=textfile_dir,
                      env={**_environment(), variable: value})
    assert result.returncode == 0
    [line] = result.stderr.splitlines()
    assert message in line and "using the default" in line
    errors = 'fraisier_deployment_errors_total{provider="p",error_type="e"}'
    assert sample_values(textfile_dir / "fraisier.prom")[errors] == 1


def test_a_series_without_a_time_counts_as_updated_when_first_seen(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    name = c.DEPLOYMENT_ERRORS.name
    path.write_text(f"# TYPE {name} counter\n{name}{{provider=\"p\",error_type=\"legacy\"}} 3.0\n")
    now = time.time()
    store = store_at(textfile_dir, now)
    store.lifecycle.expire_after = DAY
    store.merge(Changes())
    assert store.lifecycle.forgotten == []
    later = store_at(textfile_dir, now + 2 * DAY)
    later.lifecycle.expire_after = DAY
    later.merge(Changes())
    assert later.lifecycle.forgotten == [f'{name}{{provider="p",error_type="legacy"}}']


# The series bound


def test_new_series_past_the_bound_are_refused_logged_and_counted(textfile_dir: Path) -> None:
    environment = {**_environment(), "FRAISIER_MAX_SERIES_PER_FAMILY": "3"}
    path = textfile_dir / "fraisier.prom"
    for number in range(5):
        result = fraisier("record", "error", "--provider", "p", "--error-type", f"e{number}",
                          textfile_dir=textfile_dir, env=environment)
        assert result.returncode == 0, result.stderr
        if number < 3:
            assert result.stderr == ""
        else:
            [line] = result.stderr.splitlines()
            assert " level=warn " in line
            assert line.endswith(
                f'msg="{path}: {c.DEPLOYMENT_ERRORS.name} has reached its bound of 3 series: changes '
                f"to new series of it are refused and counted in {REFUSED_FAMILY}; forget unused series "
                '(fraisier textfile forget) or raise FRAISIER_MAX_SERIES_PER_FAMILY"'
            )
    # Existing series keep counting.
    result = fraisier("record", "error", "--provider", "p", "--error-type", "e0", textfile_dir=textfile_dir,
                      env=environment)
    assert result.returncode == 0 and result.stderr == ""
    values = sample_values(path)
    errors = {key: value for key, value in values.items() if key.startswith(c.DEPLOYMENT_ERRORS.name)}
    assert errors == {
        f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="e0"}}': 2,
        f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="e1"}}': 1,
        f'{c.DEPLOYMENT_ERRORS.name}{{provider="p",error_type="e2"}}': 1,
    }
    assert values[f'{REFUSED_FAMILY}{{family="{c.DEPLOYMENT_ERRORS.name}"}}'] == 2
    assert fraisier("textfile", "check", textfile_dir=textfile_dir).returncode == 0


@pytest.mark.parametrize("tail", ["  # an indented note\n", "\t\n", "# HELP other\n"], ids=["comment", "blank", "help"])
def test_the_refused_counter_is_read_as_the_text_format_reads_it_whatever_follows_it(
    textfile_dir: Path, tail: str
) -> None:
    """Comments and blank lines at the end of the file belong to the family read last, here the refused
    counter: they are not samples (a merge that counted a refusal failed with a bare ValueError)."""
    store = TextfileStore(textfile_dir)
    store.lifecycle.max_series = 1
    for provider in ("p", "q"):
        record(store, events.deployment_error, provider, "e")
    path = textfile_dir / "fraisier.prom"
    assert path.read_text().rstrip("\n").rsplit("\n", 1)[1].startswith(REFUSED_FAMILY)  # the family read last
    path.write_text(path.read_text() + tail)
    store = TextfileStore(textfile_dir)
    store.lifecycle.max_series = 1
    record(store, events.deployment_error, "z", "e")
    assert sample_values(path)[f'{REFUSED_FAMILY}{{family="{c.DEPLOYMENT_ERRORS.name}"}}'] == 2


def test_the_bound_logs_once_per_family_per_process(
    textfile_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraisier_textfile.store import process

    monkeypatch.setattr(process, "_met", set())
    store = TextfileStore(textfile_dir)
    store.lifecycle.max_series = 2
    with caplog.at_level(logging.WARNING, logger="fraisier_textfile.store.lifecycle"):
        for number in range(6):
            record(store, events.rollback, "p", f"reason{number}", 1.0)
            record(store, events.rollback, f"provider{number}", "manual", 1.0)  # 2 families: rollbacks, durations
    assert sorted(record.getMessage().split(": ")[1].split()[0] for record in caplog.records) == [
        c.ROLLBACK_DURATION.name, c.ROLLBACKS.name
    ]
    values = sample_values(store.path)
    assert values[f'{REFUSED_FAMILY}{{family="{c.ROLLBACKS.name}"}}'] == 10
    assert values[f'{REFUSED_FAMILY}{{family="{c.ROLLBACK_DURATION.name}"}}'] == 5
    assert sum(1 for key in values if key.startswith(c.ROLLBACK_DURATION.name + "_count")) == 2


# Bucket migration


def health_buckets(*bounds: float) -> c.Family:
    return c.Family(HEALTH, c.Kind.HISTOGRAM, c.HEALTH_CHECK_DURATION.labels, c.HEALTH_CHECK_DURATION.help, bounds)


TODAY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@pytest.mark.parametrize(
    ("case", "target"),
    [
        ("migrate-health-buckets", health_buckets(*sorted((*TODAY, 2)))),  # the bound the api branch adds
        ("migrate-health-buckets-removed", health_buckets(0.1, 0.5, 1, 2, 5, 10)),  # Fraisier 0.84.2's
    ],
)
def test_migration_golden(case: str, target: c.Family) -> None:
    document = parse((FIXTURES / case / "before.prom").read_text(), SCHEMA, check_histograms=False)
    notes = migrate_histograms(document, targets=[target])
    assert document.render() == (FIXTURES / case / "after.prom").read_text()
    assert len(notes) == 1 and notes[0].startswith(f"{HEALTH}: buckets le=2.0 added")


bounds_strategy = st.lists(
    st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 300]), min_size=1, unique=True
).map(sorted)


@given(
    observations=st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), max_size=40),
    old=bounds_strategy,
    new=bounds_strategy,
)
def test_a_migration_keeps_totals_and_never_claims_an_observation_it_cannot_place(
    observations: list[float], old: list[float], new: list[float]
) -> None:
    name = c.ROLLBACK_DURATION.name
    lines = [f"# TYPE {name} histogram"]
    for bound in [*old, math.inf]:
        count = sum(1 for value in observations if value <= bound)
        lines.append(f'{name}_bucket{{provider="p",le="{format_float(bound)}"}} {float(count)}')
    lines.append(f'{name}_sum{{provider="p"}} {format_float(sum(observations))}')
    lines.append(f'{name}_count{{provider="p"}} {float(len(observations))}')
    document = parse("\n".join(lines) + "\n", SCHEMA, check_histograms=False)
    target = c.Family(name, c.Kind.HISTOGRAM, ("provider",), c.ROLLBACK_DURATION.help, tuple(new))
    migrate_histograms(document, targets=[target])
    values = dict(document.blocks[name].samples())
    assert values[f'{name}_count{{provider="p"}}'] == len(observations)
    assert values[f'{name}_bucket{{provider="p",le="+Inf"}}'] == len(observations)
    assert values[f'{name}_sum{{provider="p"}}'] == float(format_float(sum(observations)))
    counts = [values[f'{name}_bucket{{provider="p",le="{bound}"}}'] for bound in target.bucket_bounds]
    assert counts == sorted(counts)  # still cumulative
    for bound, count in zip(new, counts):  # type: ignore[assignment]
        known = [b for b in old if b <= bound]
        assert count <= sum(1 for value in observations if value <= bound)  # never more than the truth
        assert count == (sum(1 for value in observations if value <= known[-1]) if known else 0)


def write_fraisier_084_health_file(directory: Path) -> Path:
    """A file whose health-check histogram has Fraisier 0.84.2's buckets (0.1 0.5 1 2 5 10)."""
    directory.mkdir()
    path = directory / "fraisier.prom"
    before = (FIXTURES / "migrate-health-buckets-removed" / "after.prom").read_text()
    path.write_text(before)
    return path


def test_check_notes_a_migration_and_the_next_merge_does_it_keeping_totals(textfile_dir: Path) -> None:
    path = write_fraisier_084_health_file(textfile_dir)
    before = path.read_bytes()
    result = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    note = result.stdout.splitlines()[0]
    assert note.startswith(f"{path}: note: {HEALTH}: buckets le=")
    # Our buckets hold every bound of Fraisier's: a migration from its file only adds bounds.
    assert "added" in note and "removed" not in note and "the next merge migrates it, keeping its totals" in note
    assert path.read_bytes() == before
    old = sample_values(path)
    result = fraisier("record", "health-check", "--provider", "bare_metal", "--check-type", "http",
                      "--status", "pass", "--duration", "0.07", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    new = sample_values(path)
    series = 'provider="bare_metal",check_type="http"'
    assert new[f"{HEALTH}_count{{{series}}}"] == old[f"{HEALTH}_count{{{series}}}"] + 1
    assert new[f"{HEALTH}_sum{{{series}}}"] == pytest.approx(old[f"{HEALTH}_sum{{{series}}}"] + 0.07)
    assert new[f'{HEALTH}_bucket{{{series},le="+Inf"}}'] == old[f'{HEALTH}_bucket{{{series},le="+Inf"}}'] + 1
    # le=0.05 is new: it starts at 0 (no old bound below it) and holds the new observation only.
    assert new[f'{HEALTH}_bucket{{{series},le="0.05"}}'] == 0
    assert new[f'{HEALTH}_bucket{{{series},le="0.1"}}'] == old[f'{HEALTH}_bucket{{{series},le="0.1"}}'] + 1
    # le=2.5 is new: from le=2 (15), plus the new observation.
    assert new[f'{HEALTH}_bucket{{{series},le="2.5"}}'] == 16
    assert new[f'{HEALTH}_bucket{{{series},le="2.0"}}'] == old[f'{HEALTH}_bucket{{{series},le="2.0"}}'] + 1
    # The other series, untouched by the event, is migrated too.
    other = 'provider="docker_compose",check_type="tcp"'
    assert new[f'{HEALTH}_bucket{{{other},le="30.0"}}'] == 3
    assert new[f"{HEALTH}_count{{{other}}}"] == 3
    checked = fraisier("textfile", "check", textfile_dir=textfile_dir)
    assert checked.returncode == 0 and ": note: " not in checked.stdout


def test_a_migrated_histogram_stays_cumulative(textfile_dir: Path) -> None:
    write_fraisier_084_health_file(textfile_dir)
    store = TextfileStore(textfile_dir)
    store.merge(Changes())
    block = store.read().blocks[HEALTH]
    counts: dict[str, list[float]] = {}
    for key, value in block.samples():
        if "_bucket" in key:
            counts.setdefault(key[: key.rindex(",le=")], []).append(value)
    assert counts
    for values in counts.values():
        assert values == sorted(values) and len(values) == len(c.HEALTH_CHECK_DURATION.bucket_bounds)
    assert not math.isnan(sum(sum(v) for v in counts.values()))


@pytest.mark.integration
def test_node_exporter_serves_the_migrated_file(textfile_dir: Path) -> None:
    binary("prometheus-node-exporter")
    write_fraisier_084_health_file(textfile_dir)
    result = fraisier("textfile", "refresh", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    ours = canonical_samples((textfile_dir / "fraisier.prom").read_text())
    with node_exporter(textfile_dir) as url:
        scraped = http_get(url)
    assert sample_values(scraped)["node_textfile_scrape_error"] == 0
    served = canonical_samples(scraped)
    assert {key: value for key, value in served.items() if key in ours} == ours
    bucket = (f"{HEALTH}_bucket", frozenset({"provider": "bare_metal", "check_type": "http", "le": "30.0"}.items()))
    assert served[bucket] == 20  # a bound the file did not have, from the count of le=10


@pytest.mark.integration
def test_promtool_accepts_a_file_with_update_times_and_the_refused_counter(textfile_dir: Path) -> None:
    promtool = binary("promtool")
    write_fraisier_084_health_file(textfile_dir)
    store = TextfileStore(textfile_dir)
    store.lifecycle.max_series = 1
    record(store, events.deployment_error, "p", "first")
    record(store, events.deployment_error, "p", "second")
    text = (textfile_dir / "fraisier.prom").read_text()
    assert f'{REFUSED_FAMILY}{{family="{c.DEPLOYMENT_ERRORS.name}"}} 1.0' in text
    assert "# fraisier_textfile updated-fraisier_deployment_errors_total: " in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readers_take_a_file_with_other_buckets_as_it_is(textfile_dir: Path) -> None:
    """Until a merge migrates it, a file written with other bounds is still served, shown and summarised:
    node_exporter serves it too, and an upgrade must not turn `fraisier metrics` into 500s."""
    family = c.HEALTH_CHECK_DURATION
    bounds = [bound for bound in family.bucket_bounds if bound != family.bucket_bounds[1]]
    key = 'provider="bare_metal",check_type="http"'
    lines = [f"# TYPE {family.name} histogram"]
    lines += [f'{family.name}_bucket{{{key},le="{bound}"}} 3.0' for bound in bounds]
    lines += [f"{family.name}_sum{{{key}}} 1.5", f"{family.name}_count{{{key}}} 3.0"]
    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    for command in (("textfile", "show"), ("textfile", "summary"), ("textfile", "check")):
        result = fraisier(*command, textfile_dir=textfile_dir)
        assert result.returncode == 0, (command, result.stderr)
    with fraisier_metrics(textfile_dir) as url:
        assert f"{family.name}_count{{{key}}} 3.0" in http_get(url)
    assert path.read_bytes() == before
