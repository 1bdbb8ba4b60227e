"""format/check.py: the problems of a file beyond its syntax, found as promtool and node_exporter find them."""

from __future__ import annotations

from pathlib import Path

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.check import check_text, describe

ERRORS = "fraisier_deployment_errors_total"
HEADER = f"# HELP {ERRORS} Deployment errors.\n# TYPE {ERRORS} counter\n"


def test_a_file_a_merge_wrote_has_no_problem(textfile_dir: Path) -> None:
    changes = Changes()
    events.deployment_complete(changes, "bare_metal", "api", "success", 12.5, now=1_700_000_000.0)
    events.deployment_error(changes, "bare_metal", 'quote"and\\backslash')
    store = TextfileStore(textfile_dir)
    store.merge(changes)
    text = store.path.read_text()
    assert check_text(text, SCHEMA) == []


def test_a_series_written_twice_is_found_on_its_line_naming_the_first() -> None:
    line = f'{ERRORS}{{provider="bare_metal",error_type="timeout"}} 1\n'
    problems = check_text(HEADER + line + line, SCHEMA)
    assert [(problem.line_number, "appears" in problem.problem and "line 3" in problem.problem)
            for problem in problems] == [(4, True)]


def test_a_negative_counter_and_a_histogram_that_is_not_cumulative_are_found() -> None:
    name = "fraisier_deployment_duration_seconds"
    text = HEADER + f'{ERRORS}{{provider="bare_metal",error_type="timeout"}} -1\n'
    text += f"# HELP {name} Deployment duration.\n# TYPE {name} histogram\n"
    bounds = ["1.0", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1200.0", "1800.0", "3600.0", "+Inf"]
    for number, bound in enumerate(bounds):
        count = 2 if number == 0 else 1  # the first bucket holds more than the next: not cumulative
        text += f'{name}_bucket{{provider="bare_metal",status="success",le="{bound}"}} {count}\n'
    text += f'{name}_sum{{provider="bare_metal",status="success"}} 3\n'
    text += f'{name}_count{{provider="bare_metal",status="success"}} 1\n'
    from_text = [problem.problem for problem in check_text(text, SCHEMA)]
    assert any("-1" in problem or "negative" in problem for problem in from_text), from_text
    assert any("cumulative" in problem for problem in from_text), from_text


def test_a_description_names_each_family_of_the_file(textfile_dir: Path) -> None:
    changes = Changes()
    events.deployment_error(changes, "bare_metal", "timeout")
    store = TextfileStore(textfile_dir)
    store.merge(changes)
    described = "\n".join(describe(store.read()))
    assert ERRORS in described
