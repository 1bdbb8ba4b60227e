"""Schemas (fraisier_textfile/format/schema.py): the store merges families it is handed, not only Fraisier's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile.changes import Changes
from fraisier_textfile.format.reader import parse, read_vouched
from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store.textfile import TextfileStore

from .processes import binary, http_get, node_exporter
from .values import sample_values

JOBS = Family("app_jobs_total", Kind.COUNTER, ("job", "result"), "Jobs run, by job and result.",
              zero_series=("result", ("ok", "failed")))
LAST_RUN = Family("app_last_run_timestamp_seconds", Kind.GAUGE, ("job",), "When each job last ran.")
QUEUE = Family("app_queue_depth", Kind.GAUGE, ("queue",), "Items waiting, as last reported.")
DURATION = Family("app_job_duration_seconds", Kind.HISTOGRAM, ("job",), "Job durations.", (1, 10, 100))
APP = Schema([JOBS, LAST_RUN, QUEUE, DURATION])

# A process that cannot load Fraisier's knowledge at all: the catalogue, its events, its store are refused.
WORKER = """
import importlib.abc, sys

REFUSED = {"fraisier_textfile.catalogue", "fraisier_textfile.changes", "fraisier_textfile.fraisier_store"}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in REFUSED:
            raise ImportError(f"{name} is refused in this process")
        return None


sys.meta_path.insert(0, Refuse())

from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.textfile import TextfileStore

jobs = Family("app_jobs_total", Kind.COUNTER, ("job", "result"), "Jobs run, by job and result.",
              zero_series=("result", ("ok", "failed")))
last = Family("app_last_run_timestamp_seconds", Kind.GAUGE, ("job",), "When each job last ran.")
queue = Family("app_queue_depth", Kind.GAUGE, ("queue",), "Items waiting, as last reported.")
duration = Family("app_job_duration_seconds", Kind.HISTOGRAM, ("job",), "Job durations.", (1, 10, 100))
store = TextfileStore(sys.argv[1], schema=Schema([jobs, last, queue, duration]))
for number in range(int(sys.argv[2])):
    changes = Changes()
    changes.add(jobs, ("backup", "ok"), 1)
    changes.observe(duration, ("backup",), 5.0)
    changes.set_maximum(last, ("backup",), 1700000000.0 + number)
    changes.set_latest(queue, ("mail",), number)
    store.merge_or_hand_over(changes, wait=0.05)
store.merge_backlog()
print(" ".join(sorted(name for name in sys.modules if name.startswith("fraisier_textfile"))))
"""


@pytest.mark.integration
def test_families_the_catalogue_does_not_know_merge_by_their_rules_across_processes_that_cannot_load_it(
    tmp_path: Path,
) -> None:
    """The store knows merge rules, not Fraisier: processes that cannot import Fraisier's catalogue, events or
    store merge an application's counter, gauges and histogram into one file, racing, and node_exporter serves
    the sums."""
    directory = tmp_path / "textfile"
    store = TextfileStore(directory, schema=APP)
    directory.mkdir()
    (directory / "fraisier.prom").write_text(
        "# HELP other_metric Someone else's.\n# TYPE other_metric gauge\nother_metric 7\n"
    )
    changes = Changes()
    changes.add(JOBS, ("backup", "failed"), 2)
    changes.set_latest(QUEUE, ("mail",), 40)
    changes.observe(DURATION, ("backup",), 50.0)
    store.merge(changes)
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(directory), "25"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [error for _, error in outputs]
    for loaded, _ in outputs:
        assert "fraisier_textfile.store.textfile" in loaded.split()
        assert not {"fraisier_textfile.catalogue", "fraisier_textfile.changes"} & set(loaded.split())
    later = Changes()
    later.set_latest(QUEUE, ("mail",), 3)
    store.merge(later)

    text = store.path.read_text()
    # None of Fraisier's families appear (the store's own, fraisier_textfile_*, count its hand-overs).
    assert "fraisier_" not in text.replace("fraisier_textfile", "")
    with node_exporter(directory) as url:
        values = sample_values(http_get(url))
    assert values["node_textfile_scrape_error"] == 0
    assert values['app_jobs_total{job="backup",result="ok"}'] == 50  # summed over 2 processes
    assert values['app_jobs_total{job="backup",result="failed"}'] == 2
    assert values['app_queue_depth{queue="mail"}'] == 3  # the latest report
    assert values['app_last_run_timestamp_seconds{job="backup"}'] == 1700000024.0  # the largest
    assert values['app_job_duration_seconds_bucket{job="backup",le="1"}'] == 0
    assert values['app_job_duration_seconds_bucket{job="backup",le="10"}'] == 50
    assert values['app_job_duration_seconds_bucket{job="backup",le="100"}'] == 51
    assert values['app_job_duration_seconds_count{job="backup"}'] == 51
    assert values['app_job_duration_seconds_sum{job="backup"}'] == 300
    assert values["other_metric"] == 7  # a family the schema does not own is kept as it came
    # What node_exporter's parser accepts, promtool accepts too.
    linted = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_a_file_vouched_for_under_one_schema_is_read_line_by_line_under_another(tmp_path: Path) -> None:
    store = TextfileStore(tmp_path, schema=APP)
    changes = Changes()
    changes.add(JOBS, ("backup", "ok"), 1)
    store.merge(changes)
    data = store.path.read_bytes()
    assert b"# fraisier_textfile layout: " + APP.fingerprint.encode() in data
    assert read_vouched(data, APP) is not None
    other = Schema([JOBS, QUEUE])  # another schema: the layout's fingerprint does not match
    assert read_vouched(data, other) is None
    document = parse(data.decode(), schema=other)  # so every line is checked
    assert document.blocks["app_jobs_total"].owned is JOBS
    assert parse(data.decode(), schema=Schema([QUEUE])).blocks["app_jobs_total"].owned is None  # kept as text


def test_a_schema_that_names_a_family_twice_or_a_zero_series_label_it_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Schema([JOBS, JOBS])
    with pytest.raises(ValueError, match="does not have"):
        Family("x_total", Kind.COUNTER, ("job",), "x", zero_series=("result", ("ok",)))


@pytest.mark.parametrize("value", [-1.0, 0.0, 0.05, 0.1, 0.2, 1.0, 9.99, 10.0, 10.5, 1e300, float("inf"),
                                   float("-inf"), float("nan")])
def test_the_bucket_a_value_falls_in_is_the_first_bound_not_below_it(value: float) -> None:
    """``le`` is inclusive: a value on a bound counts in that bound's bucket; above every bound, in +Inf's (the
    last); NaN in the first, as bisect.bisect_left places it (the order the recorder's registry, prometheus_client,
    never gets to: it is said here once for the store and the recorder)."""
    import bisect

    family = Family("h", Kind.HISTOGRAM, ("provider",), "A histogram.", buckets=(0.1, 0.5, 1.0, 10.0))
    assert family.bucket_of(value) == bisect.bisect_left(family.buckets, value)
