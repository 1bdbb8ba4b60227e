"""``fraisier textfile summary`` and the landing page's table: numbers checked against a file built from known
events, quantiles against Prometheus' own histogram_quantile (promtool), the page in a real headless Chromium."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fraisier_textfile import TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile import changes as events
from fraisier_textfile.changes import Changes
from fraisier_textfile.serve.summary import Row, histogram_quantile, summarize, table_lines
from fraisier_textfile.store import markers

from .processes import binary, fraisier, free_port, running

# provider, fraise type, status, duration: the events the file is built from
DEPLOYMENTS = [
    ("bare_metal", "api", "success", 3.0),
    ("bare_metal", "api", "success", 8.0),
    ("bare_metal", "api", "success", 20.0),
    ("bare_metal", "api", "success", 45.0),
    ("bare_metal", "api", "failed", 200.0),
    ("bare_metal", "etl", "rolled_back", 100.0),
    ("docker_compose", "backup", "success", 700.0),
]
# Durations 3 8 20 45 100 200 in the buckets 1 5 10 30 60 120 300 (+Inf) give the cumulative counts
# le=5:1 le=10:2 le=30:3 le=60:4 le=120:5 le=300:6 (the list in test_quantiles_follow_histogram_quantile).
# p50: rank 3 falls in (10, 30], holding 1 of the 3 -> 10 + 20 * (3 - 2) / 1 = 30
# p95: rank 5.7 falls in (120, 300] -> 120 + 180 * (5.7 - 5) / 1 = 246
EXPECTED_P50, EXPECTED_P95 = 30.0, 246.0
# docker_compose: one deployment of 700 s, in (600, 1200]: p50 rank 0.5 -> 600 + 600 * 0.5 = 900
EXPECTED_DOCKER_P50 = 900.0
LAST_SUCCESS_API = 1_790_000_000.0  # the time given to the last api success
NOW = 1_790_000_600.0


def build(directory: Path) -> TextfileStore:
    store = TextfileStore(directory)
    changes = Changes()
    for number, (provider, fraise_type, status, duration) in enumerate(DEPLOYMENTS):
        when = LAST_SUCCESS_API - 60 + number
        events.deployment_complete(changes, provider, fraise_type, status, duration, now=when)
    events.deployment_complete(changes, "bare_metal", "api", "success", 45.0, now=LAST_SUCCESS_API)
    events.rollback(changes, "bare_metal", "timeout", 30.0)
    events.rollback(changes, "bare_metal", "manual", 12.0)
    for status in ("pass", "pass", "pass", "fail"):
        events.health_check(changes, "bare_metal", "http", status, 0.2)
    events.health_check(changes, "docker_compose", "tcp", "fail", 0.1)
    store.merge(changes)
    return store


# The numbers


def rows_by_key(rows: list[Row]) -> dict[tuple[str, str], Row]:
    return {(row.provider, row.fraise_type): row for row in rows}


def test_a_summary_brought_to_a_later_time_is_the_summary_made_then(textfile_dir: Path) -> None:
    """The landing page summarizes a file once and brings the ages to each request's time: the same as
    summarizing it again then."""
    document = build(textfile_dir).read()
    earlier = summarize(document, now=NOW)
    later = earlier.at(NOW + 3600)
    assert later == summarize(document, now=NOW + 3600)
    assert rows_by_key(later.rows)[("bare_metal", "api")].seconds_since_last_success == NOW + 3600 - LAST_SUCCESS_API
    assert rows_by_key(earlier.rows)[("bare_metal", "api")].seconds_since_last_success == NOW - LAST_SUCCESS_API


def test_the_numbers_match_the_events(textfile_dir: Path) -> None:
    rows = rows_by_key(summarize(build(textfile_dir).read(), now=NOW).rows)
    assert list(rows) == [("bare_metal", "all"), ("bare_metal", "api"), ("bare_metal", "etl"),
                          ("docker_compose", "all"), ("docker_compose", "backup")]
    api = rows[("bare_metal", "api")]
    assert api.deployments == {"success": 5, "failed": 1, "rolled_back": 0, "rollback_failed": 0, "crashed": 0}
    assert api.total == 6 and api.success_rate == pytest.approx(5 / 6)
    assert api.last_success == LAST_SUCCESS_API and api.seconds_since_last_success == 600.0
    assert api.last_failure == LAST_SUCCESS_API - 60 + 4 and api.seconds_since_last_failure == 656.0
    assert (api.duration_p50, api.active, api.rollbacks, api.health_check_pass_rate) == (None, None, None, None)
    etl = rows[("bare_metal", "etl")]
    assert (etl.total, etl.success_rate, etl.last_success) == (1, 0.0, None)
    assert etl.last_failure == LAST_SUCCESS_API - 60 + 5
    provider = rows[("bare_metal", "all")]
    assert provider.total == 7 and provider.deployments["rolled_back"] == 1
    assert provider.success_rate == pytest.approx(5 / 7)
    assert provider.last_success == LAST_SUCCESS_API and provider.last_failure == etl.last_failure
    assert provider.rollbacks == 2 and provider.active == 0
    assert provider.health_checks == 4 and provider.health_check_pass_rate == 0.75
    # 7 durations now: 3 8 20 45 45 100 200 -> le=30:3 le=60:5; p50 rank 3.5 in (30, 60] holding 2: 30 + 30 * 0.5/2
    assert provider.duration_p50 == pytest.approx(37.5)
    # p95 rank 6.65 in (120, 300]: 120 + 180 * 0.65
    assert provider.duration_p95 == pytest.approx(237.0)
    docker = rows[("docker_compose", "all")]
    assert docker.duration_p50 == EXPECTED_DOCKER_P50 and docker.health_check_pass_rate == 0.0
    assert rows[("docker_compose", "backup")].success_rate == 1.0


def test_quantiles_follow_histogram_quantile() -> None:
    buckets = [(5, 1), (10, 2), (30, 3), (60, 4), (120, 5), (300, 6), (math.inf, 6)]
    assert histogram_quantile(0.5, buckets) == EXPECTED_P50
    assert histogram_quantile(0.95, buckets) == pytest.approx(EXPECTED_P95)
    assert histogram_quantile(0.5, [(1, 2), (math.inf, 2)]) == 0.5  # the first bucket starts at 0
    assert histogram_quantile(0.99, [(1, 0), (10, 1), (math.inf, 10)]) == 10  # rank in +Inf: highest bound
    assert histogram_quantile(0.5, [(1, 0), (math.inf, 0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_quantiles_agree_with_prometheus(tmp_path: Path, textfile_dir: Path) -> None:
    """promtool evaluates histogram_quantile over the file's own buckets and must find our numbers."""
    document = build(textfile_dir).read()
    rows = rows_by_key(summarize(document).rows)
    block = document.blocks["fraisier_deployment_duration_seconds"]
    series = []
    for key, value in block.samples():
        if "_bucket{" in key:
            series.append({"series": key, "values": f"{value:g}x1"})
    tests = []
    for provider in ("bare_metal", "docker_compose"):
        for quantile, field in ((0.5, "duration_p50"), (0.95, "duration_p95")):
            expected = getattr(rows[(provider, "all")], field)
            tests.append({
                "expr": f'histogram_quantile({quantile}, sum by (le) '
                        f'(fraisier_deployment_duration_seconds_bucket{{provider="{provider}"}}))',
                "eval_time": "0m",
                "exp_samples": [{"labels": "{}", "value": expected}],
            })
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    unit = tmp_path / "quantiles_test.yml"
    unit.write_text(json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    result = subprocess.run([binary("promtool"), "test", "rules", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_active_deployments_come_from_live_markers(textfile_dir: Path) -> None:
    store = build(textfile_dir)
    marker = markers.create_marker(textfile_dir, "bare_metal", "api")  # this process: alive
    start = Changes()
    start.active_providers.add("bare_metal")
    events.deployment_series(start, "bare_metal", "api")
    store.merge(start)
    assert rows_by_key(summarize(store.read()).rows)[("bare_metal", "all")].active == 1
    markers.remove_marker(textfile_dir, marker.id)


# The command


def test_the_table_is_aligned_with_one_line_per_row(textfile_dir: Path) -> None:
    build(textfile_dir)
    result = fraisier("textfile", "summary", textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    header = lines[0]
    assert header.split()[:4] == ["PROVIDER", "/", "TYPE", "AVAILABLE"]
    # Right-aligned numeric columns: every line's DEPLOYS cell ends where the header's does.
    end = header.index("DEPLOYS") + len("DEPLOYS")
    assert [line[end - 1] for line in lines[1:]] == ["7", "6", "1", "1", "1"]
    assert lines[2].startswith("  api ")  # a fraise type, below its provider
    api = lines[2].split()
    assert api[:3] == ["api", "6", "83.3%"]
    assert lines[1].startswith("bare_metal ") and "3m57s" in lines[1]
    wide = fraisier("textfile", "summary", "--wide", textfile_dir=textfile_dir).stdout.splitlines()
    assert wide[1].split()[:5] == ["bare_metal", "all", "-", "7", "5"]  # availability never reported
    assert "37.5s" in wide[1] and "3m57s" in wide[1] and "75.0%" in wide[1]


def test_json_is_one_object_with_every_number(textfile_dir: Path) -> None:
    build(textfile_dir)
    before = time.time()
    result = fraisier("textfile", "summary", "--json", textfile_dir=textfile_dir)
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert summary["generated_at"] >= before
    api = next(row for row in summary["rows"] if row["fraise_type"] == "api")
    assert api["deployments"]["success"] == 5 and api["last_success"] == LAST_SUCCESS_API
    assert api["seconds_since_last_success"] == pytest.approx(summary["generated_at"] - LAST_SUCCESS_API)
    provider = summary["rows"][0]
    assert (provider["provider"], provider["fraise_type"], provider["rollbacks"]) == ("bare_metal", "all", 2)


def test_an_empty_directory_says_so(textfile_dir: Path) -> None:
    result = fraisier("textfile", "summary", textfile_dir=textfile_dir)
    expected = f"{textfile_dir / 'fraisier.prom'}: no deployments recorded yet\n"
    assert (result.returncode, result.stdout) == (0, expected)
    assert json.loads(fraisier("textfile", "summary", "--json", textfile_dir=textfile_dir).stdout)["rows"] == []


def test_the_table_of_the_module_and_the_command_agree(textfile_dir: Path) -> None:
    store = build(textfile_dir)
    lines = table_lines(summarize(store.read()))
    printed = fraisier("textfile", "summary", textfile_dir=textfile_dir).stdout.splitlines()
    # Ages move on between the two; everything before them is the same.
    before_ages = lines[0].index("LAST SUCCESS")
    assert printed[0] == lines[0]
    assert [line[:before_ages] for line in lines[1:]] == [line[:before_ages] for line in printed[1:]]


# The landing page in a real browser


class TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "summary") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", *arguments],
        capture_output=True, text=True, timeout=120,
    )


@contextmanager
def served(textfile_dir: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "metrics", "--address",
               "127.0.0.1", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/metrics"):
        yield f"http://127.0.0.1:{port}/"


def test_the_landing_page_table_in_headless_chromium(tmp_path: Path, textfile_dir: Path) -> None:
    store = build(textfile_dir)
    hostile = Changes()
    events.deployment_complete(hostile, "<script>alert(1)</script>", "a&b", "success", 1.0)
    store.merge(hostile)
    with served(textfile_dir) as url:
        dom = chromium(tmp_path, "--dump-dom", url)
        screenshot = tmp_path / "landing.png"
        shot = chromium(tmp_path, "--window-size=1800,700", f"--screenshot={screenshot}", url)
    assert dom.returncode == 0, dom.stderr
    reader = TableReader()
    reader.feed(dom.stdout)
    header, *rows = reader.rows
    assert header[:4] == ["PROVIDER", "FRAISE TYPE", "AVAILABLE", "DEPLOYMENTS"]
    by_key = {(row[0], row[1]): dict(zip(header, row)) for row in rows}
    assert by_key[("bare_metal", "all")]["DEPLOYMENTS"] == "7"
    assert by_key[("bare_metal", "api")]["SUCCESS RATE"] == "83.3%"
    assert by_key[("bare_metal", "all")]["P50"] == "37.5s"
    assert by_key[("bare_metal", "all")]["FAILURES"] == "2"
    # shown as text, never run as markup
    assert by_key[("<script>alert(1)</script>", "a&b")]["DEPLOYMENTS"] == "1"
    assert "<script>alert" not in dom.stdout
    assert "http://" not in dom.stdout.replace(url, "") and "https://" not in dom.stdout  # no external assets
    assert shot.returncode == 0, shot.stderr
    _, height, pixels = read_png(screenshot)
    # The header row's background (#f3f3f3) spans the width of a table of 13 columns: it was laid out and painted.
    header_rows = [y for y in range(height) if longest_run(pixels[y], HEADER_GREY) > 700]
    assert header_rows, "no table header painted in the screenshot"
    below = pixels[max(header_rows) + 5 : max(header_rows) + 120]
    assert any(min(pixel) < 80 for line in below for pixel in line), "no text painted in the table's rows"


def longest_run(line: list[tuple[int, int, int]], colour: tuple[int, int, int]) -> int:
    best = run = 0
    for pixel in line:
        run = run + 1 if pixel == colour else 0
        best = max(best, run)
    return best


def read_png(path: Path) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """The RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunk = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    channels = 4 if colour_type == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            up_left = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
                predictor = (left, up, up_left)[distances.index(min(distances))]
                line[x] = (line[x] + predictor) & 0xFF
        pixels.append([tuple(line[x : x + 3]) for x in range(0, stride, channels)])
        previous = line
    return width, height, pixels  # type: ignore[return-value]


def test_a_recorder_serving_its_registry_shows_the_table_too(textfile_dir: Path) -> None:
    from fraisier_textfile import MetricsRecorder

    recorder = MetricsRecorder(textfile_dir)
    recorder.record_deployment_complete("bare_metal", "api", "success", 3.0)
    recorder.record_deployment_complete("bare_metal", "api", "failed", 40.0)
    server = recorder.serve(port=0, address="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as response:
            page = response.read().decode()
    finally:
        server.shutdown()
    reader = TableReader()
    reader.feed(page)
    header, *rows = reader.rows
    provider = dict(zip(header, rows[0]))
    assert (provider["PROVIDER"], provider["FRAISE TYPE"], provider["DEPLOYMENTS"]) == ("bare_metal", "all", "2")
    assert provider["SUCCESS RATE"] == "50.0%" and provider["P50"] == "5.0s"  # rank 1 of 2 in (1, 5]


# At a glance: 100 columns, availability, crashes


def build_with_outages(directory: Path) -> TextfileStore:
    """The events of ``build``, docker_compose reported down and bare_metal up, a deployment of a pair never
    seen before that crashed (its only deployment), and one of an older file: crashed without a time."""
    store = build(directory)
    more = Changes()
    events.provider_availability(more, "bare_metal", True)
    events.provider_availability(more, "docker_compose", False)
    events.deployment_crashed(more, "bare_metal", "scheduled", "no-such-marker", now=NOW - 30)
    more.add(c.DEPLOYMENTS, ("docker_compose", "crashed", "legacy"), 1.0)  # written before crashes had a time
    store.merge(more)
    return store


def table(textfile_dir: Path, *options: str) -> list[str]:
    result = fraisier("textfile", "summary", *options, textfile_dir=textfile_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_summary_fits_100_columns_and_wide_shows_every_status(textfile_dir: Path) -> None:
    build_with_outages(textfile_dir)
    lines = table(textfile_dir)
    assert len(lines) == 8  # the header, 2 providers, 5 fraise types
    assert max(map(len, lines)) <= 100, "\n".join(lines)
    wide = table(textfile_dir, "--wide")
    for title in ("SUCCESS", "FAILED", "ROLLED BACK", "ROLLBACK FAILED", "CRASHED", "P50", "ROLLBACKS", "HEALTH PASS"):
        assert title in wide[0], title
    assert len(wide) == len(lines)


def test_a_long_name_is_shortened_to_fit_but_never_with_wide(textfile_dir: Path) -> None:
    long_name = "a_provider_with_a_very_long_name_indeed_" * 2
    store = build(textfile_dir)
    more = Changes()
    events.deployment_complete(more, long_name, "api", "success", 3.0)
    store.merge(more)
    lines = table(textfile_dir)
    assert max(map(len, lines)) <= 100
    assert any("…" in line for line in lines)
    assert any(long_name in line for line in table(textfile_dir, "--wide"))


def cells(lines: list[str]) -> dict[str, dict[str, str]]:
    """The default table's cells, by row name and column title (columns found from the header's ends: every
    column but the first is right-aligned)."""
    header = lines[0]
    titles = re.findall(r"\S+(?: \S+)*", header)
    ends = [header.index(title) + len(title) for title in titles]
    found = {}
    for line in lines[1:]:
        row = {titles[0]: line[: ends[0]].rstrip()}
        for number in range(1, len(titles)):
            row[titles[number]] = line[ends[number - 1] : ends[number]].strip()
        found[row[titles[0]].strip()] = row
    return found


def test_provider_availability_is_shown_and_down_stands_out(textfile_dir: Path) -> None:
    build_with_outages(textfile_dir)
    rows = cells(table(textfile_dir))
    assert rows["bare_metal"]["AVAILABLE"] == "up"
    assert rows["docker_compose"]["AVAILABLE"] == "DOWN"
    summary = json.loads(fraisier("textfile", "summary", "--json", textfile_dir=textfile_dir).stdout)
    by_key = {(row["provider"], row["fraise_type"]): row for row in summary["rows"]}
    assert by_key[("bare_metal", "all")]["available"] is True
    assert by_key[("docker_compose", "all")]["available"] is False


def test_crashed_deployments_are_failures_with_a_last_failure(textfile_dir: Path) -> None:
    rows = rows_by_key(summarize(build_with_outages(textfile_dir).read(), now=NOW).rows)
    scheduled = rows[("bare_metal", "scheduled")]
    assert (scheduled.total, scheduled.failures, scheduled.last_failure) == (1, 1, NOW - 30)
    assert scheduled.seconds_since_last_failure == 30.0
    assert rows[("bare_metal", "all")].failures == 3  # failed, rolled back, crashed
    printed = cells(table(textfile_dir))
    assert printed["scheduled"]["FAILURES"] == "1" and printed["scheduled"]["LAST FAILURE"].endswith(" ago")
    # A crash recorded before crashes had a time: a failure whose time is unknown, not "no failure".
    assert printed["legacy"]["FAILURES"] == "1" and printed["legacy"]["LAST FAILURE"] == "unknown"
    assert printed["legacy"]["LAST SUCCESS"] == "-"


def test_the_landing_page_fits_1280_pixels_and_shows_a_provider_down(tmp_path: Path, textfile_dir: Path) -> None:
    store = build_with_outages(textfile_dir)
    long_names = Changes()  # wrapped in their cells rather than widening the table past the window
    events.deployment_complete(long_names, "a_provider_with_a_name_far_longer_than_any_column_" * 2, "api",
                               "success", 1.0)
    store.merge(long_names)
    with served(textfile_dir) as url:
        screenshot = tmp_path / "landing.png"
        shot = chromium(tmp_path, "--window-size=1280,800", "--hide-scrollbars", f"--screenshot={screenshot}", url)
        dom = chromium(tmp_path, "--dump-dom", url)
    assert shot.returncode == 0, shot.stderr
    width, height, pixels = read_png(screenshot)
    assert width == 1280
    header_rows = [y for y in range(height) if longest_run(pixels[y], HEADER_GREY) > 400]
    assert header_rows, "no table header painted in the screenshot"
    # The header's background ends before the page's right margin: the table, last column included, fits.
    for y in header_rows:
        right = max(x for x, pixel in enumerate(pixels[y]) if pixel == HEADER_GREY)
        assert right < width - 16, f"the table reaches the window's edge at y={y}: a column is clipped"
    assert any(pixel == DOWN_RED for line in pixels for pixel in line), "no provider down painted red"
    reader = TableReader()
    reader.feed(dom.stdout)
    header, *rows = reader.rows
    by_key = {(row[0], row[1]): dict(zip(header, row)) for row in rows}
    assert by_key[("docker_compose", "all")]["AVAILABLE"] == "DOWN"
    assert by_key[("bare_metal", "scheduled")]["FAILURES"] == "1"
    assert by_key[("docker_compose", "legacy")]["LAST FAILURE"] == "unknown"


HEADER_GREY = (243, 243, 243)
DOWN_RED = (198, 40, 40)


def test_control_characters_in_label_values_are_shown_escaped_never_sent_to_the_terminal(
    textfile_dir: Path,
) -> None:
    """A file another writer wrote may hold any character in a label value (Go's parser takes them): the table
    shows them escaped, so a value cannot clear the screen, ring the bell or recolour what follows."""
    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text(
        "# HELP fraisier_deployments_total Total deployments\n# TYPE fraisier_deployments_total counter\n"
        'fraisier_deployments_total{provider="ev\x1b[2Jil",status="success",fraise_type="a\x07pi\x9b"} 3\n'
    )
    for options in ((), ("--wide",)):
        printed = "\n".join(table(textfile_dir, *options))
        assert not any(ord(character) < 32 or 127 <= ord(character) < 160 for character in printed.replace("\n", ""))
        assert "ev\\x1b[2Jil" in printed and "a\\x07pi\\x9b" in printed


def test_an_availability_of_nan_says_neither_up_nor_down(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    (textfile_dir / "fraisier.prom").write_text(
        "# HELP fraisier_provider_availability Whether a provider was available at its last check (1 up, 0 down).\n"
        "# TYPE fraisier_provider_availability gauge\n"
        'fraisier_provider_availability{provider="bare_metal"} NaN\n'
    )
    summary = json.loads(fraisier("textfile", "summary", "--json", textfile_dir=textfile_dir).stdout)
    assert [(row["provider"], row["available"]) for row in summary["rows"]] == [("bare_metal", None)]
    assert cells(table(textfile_dir))["bare_metal"]["AVAILABLE"] == "-"
