"""Golden files, as node_exporter tests its textfile collector: ``fixtures/<case>/before.prom`` as other writers
write it, the events of ``events.json`` merged through the store, and ``after.prom`` compared byte for byte.
A case with ``error.txt`` is refused: the merge names its first problem, ``fraisier textfile check`` lists every
one (the lines of ``error.txt``), and the file is left as it was.

``FRAISIER_REGENERATE_GOLDEN=1 pytest tests/test_golden.py`` rewrites the ``after.prom`` files; read the diff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import changes as events
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.check import check_text
from fraisier_textfile.format.reader import parse

from .processes import binary, fraisier, http_get, node_exporter

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_NOW = 1_700_000_000.0
# A case is a folder with before.prom and events.json (tests/test_lifecycle.py's migration cases have no events).
CASES = sorted(path.name for path in FIXTURES.iterdir() if (path / "events.json").exists())
ACCEPTED = [case for case in CASES if not (FIXTURES / case / "error.txt").exists()]
REFUSED_CASES = [case for case in CASES if (FIXTURES / case / "error.txt").exists()]


def case_changes(case: str) -> Changes:
    changes = Changes()
    for name, *arguments in json.loads((FIXTURES / case / "events.json").read_text()):
        getattr(events, name)(changes, *arguments)
    return changes


def directory_with_before(case: str, tmp_path: Path) -> TextfileStore:
    directory = tmp_path / "textfile"
    directory.mkdir()
    shutil.copyfile(FIXTURES / case / "before.prom", directory / "fraisier.prom")
    store = TextfileStore(directory)
    store.lifecycle.clock = lambda: GOLDEN_NOW  # the series' update times it writes are part of the golden file
    return store


@pytest.mark.parametrize("case", ACCEPTED)
def test_events_merged_into_another_writers_file_give_the_golden_file(case: str, tmp_path: Path) -> None:
    store = directory_with_before(case, tmp_path)
    store.merge(case_changes(case))
    after = store.path.read_bytes()
    golden = FIXTURES / case / "after.prom"
    if os.environ.get("FRAISIER_REGENERATE_GOLDEN") == "1":
        golden.write_bytes(after)
    assert after == golden.read_bytes()


@pytest.mark.parametrize("case", ACCEPTED)
def test_a_golden_file_is_sound_canonical_and_stable(case: str) -> None:
    after = (FIXTURES / case / "after.prom").read_text()
    assert check_text(after, SCHEMA) == []
    assert parse(after, SCHEMA).render() == after
    # Merging nothing into it again changes nothing: the file is already in our format.
    assert parse(after, SCHEMA).render().encode() == (FIXTURES / case / "after.prom").read_bytes()


@pytest.mark.parametrize("case", REFUSED_CASES)
def test_a_refused_file_names_its_problems_and_is_left_as_it_was(case: str, tmp_path: Path) -> None:
    store = directory_with_before(case, tmp_path)
    before = store.path.read_bytes()
    expected = (FIXTURES / case / "error.txt").read_text().splitlines()
    with pytest.raises(CorruptTextfileError) as raised:
        store.merge(case_changes(case))
    assert str(raised.value).startswith(f"{store.directory}/{expected[0]}; fix or remove the file")
    assert store.path.read_bytes() == before
    checked = fraisier("textfile", "check", textfile_dir=store.directory)
    assert checked.returncode == 1
    # (A warning follows when node_exporter's user could not read the file: tmp_path is private.)
    errors = [line for line in checked.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == [f"Error: {store.directory}/{line}" for line in expected]
    assert checked.stdout == ""


def test_check_says_ok_for_a_sound_file(tmp_path: Path) -> None:
    store = directory_with_before("our_own_format", tmp_path)
    checked = fraisier("textfile", "check", textfile_dir=store.directory)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{store.path}: OK, 9 families, 181 samples")


def test_there_are_enough_cases() -> None:
    assert len(ACCEPTED) >= 8 and REFUSED_CASES


# The real readers agree, on both sides: node_exporter serves every golden file and drops every refused input;
# promtool refuses what we refuse, with our words.

NOT_GO_RULES = {"wrong type"}  # our rule (a family of ours with another type): Go's parser accepts the file
NODE_EXPORTER_ONLY = {"timestamp", "bare timestamp"}  # Go's parser reads timestamps; node_exporter drops the file


def _scrape_error(url: str) -> float:
    from .values import sample_values

    return sample_values(http_get(url))["node_textfile_scrape_error"]


@pytest.mark.integration
def test_node_exporter_serves_every_golden_file_and_drops_every_refused_input(tmp_path: Path) -> None:
    from .test_reader import REFUSED

    directory = tmp_path / "collector"
    directory.mkdir()
    target = directory / "fraisier.prom"
    refused = {name: text for name, (text, _) in REFUSED.items() if name not in NOT_GO_RULES}
    refused |= {case: (FIXTURES / case / "before.prom").read_text() for case in REFUSED_CASES}
    with node_exporter(directory) as url:
        for case in ACCEPTED:
            shutil.copyfile(FIXTURES / case / "after.prom", target)
            assert _scrape_error(url) == 0, case
            shutil.copyfile(FIXTURES / case / "before.prom", target)
            assert _scrape_error(url) == 0, f"{case}: before.prom"
        for name, text in refused.items():
            target.write_text(text)
            assert _scrape_error(url) == 1, name


@pytest.mark.integration
def test_promtool_refuses_what_we_refuse_in_the_same_words() -> None:
    from .test_reader import REFUSED

    for name, (text, _) in REFUSED.items():
        if name in NOT_GO_RULES | NODE_EXPORTER_ONLY:
            continue
        ours = check_text(text, SCHEMA)[0]
        result = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert result.returncode == 1, name
        prefix = "error while linting: text format parsing error in line "
        theirs = (result.stdout + result.stderr).strip().replace("\n", "")
        assert theirs.startswith(f"{prefix}{ours.line_number}: "), (name, theirs)
        message = theirs[len(f"{prefix}{ours.line_number}: ") :]
        if name == "truncated":
            assert ours.problem.endswith(message)
        else:
            assert message == ours.problem, name
