"""Which series go: forgetting by matchers and families, durations, and expiry narrowed by matchers
(fraisier_textfile/store/selection.py), through the CLI run as real subprocesses on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile.recorder.recorder import MetricsRecorder
from fraisier_textfile.store.selection import parse_duration

from .processes import fraisier, lock_held_elsewhere, start_together
from .stores import DAY, directory_state, series_with, two_providers
from .values import sample_values

WORKERS = Path(__file__).parent / "workers.py"
HEALTH = c.HEALTH_CHECK_DURATION.name


def test_forget_dry_run_lists_what_would_go_and_writes_nothing(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    before = directory_state(textfile_dir)
    result = fraisier("textfile", "forget", "--fraise-type", "old_etl", "--dry-run", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    series = f'{c.DEPLOYMENTS.name}{{provider="docker_compose",status="success",fraise_type="old_etl"}}'
    assert f"would forget {series}" in lines
    assert lines[-1] == f"{textfile_dir / 'fraisier.prom'}: would forget 6 series (dry run: nothing written)"
    assert directory_state(textfile_dir) == before


def test_forget_a_provider_removes_every_series_of_it_and_nothing_else(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    kept_before = {key: value for key, value in sample_values(path).items() if "docker_compose" not in key}
    result = fraisier("textfile", "forget", "--provider", "docker_compose", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # A histogram series is listed once and goes whole: buckets, _sum and _count.
    assert f'forgot {HEALTH}{{provider="docker_compose",check_type="tcp"}}' in result.stdout.splitlines()
    assert series_with(path, "docker_compose") == []
    assert "docker_compose" not in path.read_text()  # its update times went too
    assert sample_values(path) == kept_before
    assert fraisier("textfile", "check", textfile_dir=textfile_dir).returncode == 0


def test_matchers_and_together_and_family_narrows(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    result = fraisier(
        "textfile", "forget", "--provider", "bare_metal", "--match", "error_type=timeout",
        "--family", c.DEPLOYMENT_ERRORS.name, textfile_dir=textfile_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f'forgot {c.DEPLOYMENT_ERRORS.name}{{provider="bare_metal",error_type="timeout"}}',
        f"{path}: forgot 1 series",
    ]
    assert len(series_with(path, 'provider="bare_metal"')) > 10
    assert series_with(path, 'error_type="timeout"') == [
        f'{c.DEPLOYMENT_ERRORS.name}{{provider="docker_compose",error_type="timeout"}} 1.0'
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--match", "fraise_type"], "Error: --match 'fraise_type' is not LABEL=VALUE: write e.g."),
        (["--match", "=old"], "Error: --match '=old' is not LABEL=VALUE"),
        (["--match", "fraise_type="], "Error: --match 'fraise_type=' is not LABEL=VALUE"),
        (["--match", "fraisetype=old"], "Error: no family has a label 'fraisetype', so --match fraisetype=... matches"),
        (["--family", "fraisier_nope", "--provider", "x"], "Error: --family 'fraisier_nope' is not one of fraisier's"),
        ([], "Error: say which series to forget: give --provider, --fraise-type, --match"),
        (["--expire-after", "30"], "Error: --expire-after='30' is not a duration: give a positive number and a unit"),
        (["--expire-after", "-3d"], "Error: --expire-after='-3d' is not a duration"),
    ],
    ids=["no-equals", "no-label", "no-value", "unknown-label", "unknown-family", "nothing", "no-unit", "negative"],
)
def test_bad_input_is_one_line_exit_2_and_the_file_untouched(
    textfile_dir: Path, arguments: list[str], message: str
) -> None:
    two_providers(textfile_dir)
    before = directory_state(textfile_dir)
    result = fraisier("textfile", "forget", *arguments, textfile_dir=textfile_dir)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert directory_state(textfile_dir) == before


def test_forget_in_a_directory_without_a_file_creates_nothing(tmp_path: Path) -> None:
    result = fraisier("textfile", "forget", "--provider", "x", textfile_dir=tmp_path / "typo")
    assert result.returncode == 1
    assert result.stderr == f"Error: {tmp_path / 'typo' / 'fraisier.prom'} does not exist: check --textfile-dir\n"
    assert not (tmp_path / "typo").exists()


def test_forget_waits_for_the_lock_like_a_merge(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    before = directory_state(textfile_dir)
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        result = fraisier("--lock-timeout", "0.2", "textfile", "forget", "--provider", "docker_compose",
                          textfile_dir=textfile_dir)
    assert result.returncode == 1
    assert "could not lock" in result.stderr
    assert directory_state(textfile_dir) == before


def test_a_deployment_in_flight_brings_its_forgotten_series_back(textfile_dir: Path) -> None:
    """The documented rule: markers are kept; the active gauge is recounted from them at each merge, and the
    deployment is counted when it ends, its series created again from 0."""
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("old", "api", "success", 5.0)
    recorder.record_deployment_start("old", "api")
    path = textfile_dir / "fraisier.prom"
    active = f'{c.ACTIVE_DEPLOYMENTS.name}{{provider="old"}}'
    success = f'{c.DEPLOYMENTS.name}{{provider="old",status="success",fraise_type="api"}}'
    assert sample_values(path)[active] == 1
    result = fraisier("textfile", "forget", "--provider", "old", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert active not in sample_values(path)
    assert success not in sample_values(path)
    assert fraisier("textfile", "refresh", textfile_dir=textfile_dir).returncode == 0
    assert sample_values(path)[active] == 1  # recounted from the live marker
    assert success not in sample_values(path)
    recorder.record_deployment_complete("old", "api", "success", 5.0)
    assert sample_values(path)[success] == 1  # counted from 0 again, not 2
    assert sample_values(path)[active] == 0


def test_forget_racing_writers_loses_none_of_their_events(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("docker_compose", "old_etl", "success", 5.0)
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "flush_many", str(textfile_dir), "60", str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for n in range(3)
    ]
    start_together(workers)
    forgotten = 0
    while any(worker.poll() is None for worker in workers) or forgotten == 0:
        recorder.record_deployment_error("docker_compose", "timeout")
        result = fraisier("textfile", "forget", "--provider", "docker_compose", textfile_dir=textfile_dir)
        assert result.returncode == 0, result.stderr
        forgotten += 1
    assert all(worker.wait() == 0 for worker in workers)
    values = sample_values(textfile_dir / "fraisier.prom")
    assert values[f'{c.DEPLOYMENTS.name}{{provider="bare_metal",status="success",fraise_type="api"}}'] == 180
    assert values[f'{c.HEALTH_CHECKS.name}{{provider="bare_metal",check_type="http",status="pass"}}'] == 90
    assert not any("docker_compose" in key for key in values)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("1.5d", 1.5 * DAY)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--expire-after", text) == seconds


def test_forget_with_expire_after_only_takes_the_old_series_that_match(textfile_dir: Path) -> None:
    two_providers(textfile_dir)
    path = textfile_dir / "fraisier.prom"
    result = fraisier("textfile", "forget", "--expire-after", "30d", "--match", "check_type=tcp",
                      textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{path}: forgot 3 series"  # 2 counters, 1 histogram
    assert series_with(path, "tcp") == []
    assert len(series_with(path, "docker_compose")) > 0
