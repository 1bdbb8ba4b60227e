"""``fraisier metrics`` and ``MetricsRecorder.serve``: real servers on free loopback ports, real clients, real TLS."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import bcrypt
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fraisier_textfile import MetricsRecorder, TextfileStore
from fraisier_textfile import catalogue as c
from fraisier_textfile.cli.group import main
from fraisier_textfile.serve.server import MetricsServer
from fraisier_textfile.serve.sources import RegistrySource, TextfileSource

from .processes import fraisier, free_port, lock_held_elsewhere, small_tmpfs
from .tls import Certificates
from .values import sample_values

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ACTIVE = 'fraisier_active_deployments{provider="docker_compose"}'


# Clients and servers


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None) -> Response:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    scheme: str = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/metrics"

    def stop(self, signal_number: int = signal.SIGTERM) -> tuple[int, str]:
        """Stop the server; its exit status and everything it wrote on stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        try:
            _, errors = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return self.process.returncode, errors


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"fraisier metrics exited with {process.returncode}: {process.communicate()[1]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"fraisier metrics did not listen on {port} within {timeout}s") from None
            time.sleep(0.05)


@contextmanager
def fraisier_metrics(textfile_dir: Path, *options: str, address: str | None = "127.0.0.1") -> Iterator[Server]:
    """``fraisier metrics`` as a real process on a free port, stopped (SIGTERM) afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "metrics",
               "--port", str(port), *options]
    if address is not None:
        command += ["--address", address]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Server(process, port, "https" if "--web-config-file" in options and _tls_in(options) else "http")
    try:
        wait_for_port(port, process)
        yield server
    finally:
        server.stop()


def _tls_in(options: tuple[str, ...]) -> bool:
    config = Path(options[options.index("--web-config-file") + 1])
    return "tls_server_config" in config.read_text()


def run_in_process(code: str, *arguments: str) -> None:
    """Record with the real library from another process."""
    subprocess.run([sys.executable, "-c", code, *arguments], check=True, timeout=60)


RECORD_SOME = """
import sys
from fraisier_textfile import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1])
recorder.record_health_check("bare_metal", "http", "pass", 0.2)
recorder.record_rollback("docker_compose", "health_check", 12.0)
recorder.set_provider_availability("docker_compose", False)
recorder.record_lock_wait("web", "bare_metal", 1.5)
recorder.record_deployment_error('odd "provider" \\\\ ü', "timeout")
"""

DEPLOY_AND_HANG = """
import sys, time
from fraisier_textfile import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1])
with recorder.track_deployment("docker_compose", "backup"):
    print("deploying", flush=True)
    time.sleep(600)
"""


@contextmanager
def deploying(textfile_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A process inside a tracked deployment; killed (SIGKILL) afterwards if still alive."""
    process = subprocess.Popen([sys.executable, "-c", DEPLOY_AND_HANG, str(textfile_dir)], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "deploying\n"
        yield process
    finally:
        process.kill()
        process.wait()


def families(text: str) -> dict[str, str]:
    """Family name -> type, as a Prometheus client library reads the body (which fails on a bad body)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


# What is served


def test_a_scrape_equals_the_file_before_and_after_flushes_from_other_processes(textfile_dir: Path) -> None:
    with fraisier_metrics(textfile_dir) as server:
        before = request(server.url)
        assert before.status == 200
        assert sample_values(before.text) == {}
        for family in c.FAMILIES:  # every family is announced, none has samples yet
            assert f"# HELP {family.name} {family.help}\n" in before.text
            assert f"# TYPE {family.name} {family.kind.value}\n" in before.text

        fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
                 "--duration", "42", textfile_dir=textfile_dir, check=True)
        first = sample_values(request(server.url).text)
        assert first == sample_values(textfile_dir / "fraisier.prom")
        assert first['fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'] == 1

        run_in_process(RECORD_SOME, str(textfile_dir))
        second = sample_values(request(server.url).text)
        assert second == sample_values(textfile_dir / "fraisier.prom")
        odd_error = 'fraisier_deployment_errors_total{provider="odd \\"provider\\" \\\\ ü",error_type="timeout"}'
        assert second[odd_error] == 1
        assert second != first


def test_the_landing_page_links_to_metrics_and_other_paths_are_not_found(textfile_dir: Path) -> None:
    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.links: list[str] = []

        def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
            self.links += [value for name, value in attributes if tag == "a" and name == "href" and value]

    with fraisier_metrics(textfile_dir) as server:
        landing = request(server.base + "/")
        assert landing.status == 200
        assert landing.headers["Content-Type"] == "text/html; charset=utf-8"
        parser = Links()
        parser.feed(landing.text)
        assert [urljoin(server.base + "/", link) for link in parser.links] == [server.url]
        for path in ("/metric", "/metrics/", "/favicon.ico", "/../metrics"):
            missing = request(server.base + path)
            assert missing.status == 404, path
            assert b"fraisier_" not in missing.body
        assert request(server.url + "?name[]=fraisier_deployments_total").status == 200


def test_head_gives_the_headers_of_get_without_a_body(textfile_dir: Path) -> None:
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 3.0)
    with fraisier_metrics(textfile_dir) as server:
        for headers in ({}, {"Accept-Encoding": "gzip"}):
            get = request(server.url, headers=headers)
            head = request(server.url, "HEAD", headers=headers)
            assert head.status == get.status == 200
            assert head.body == b""
            assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.body))
            assert head.headers["Content-Type"] == get.headers["Content-Type"] == CONTENT_TYPE
            assert head.headers["Content-Encoding"] == get.headers["Content-Encoding"]
        assert request(server.base + "/", "HEAD").status == 200
        assert request(server.base + "/nothing", "HEAD").status == 404


def test_the_body_is_gzipped_only_when_the_client_accepts_gzip(textfile_dir: Path) -> None:
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 3.0)
    with fraisier_metrics(textfile_dir) as server:
        plain = request(server.url)
        assert plain.headers["Content-Type"] == CONTENT_TYPE
        assert plain.headers["Content-Encoding"] is None
        for accepted in ("gzip", "deflate, gzip;q=0.8", "*", "GZIP", "*;q=0, gzip"):
            compressed = request(server.url, headers={"Accept-Encoding": accepted})
            assert compressed.headers["Content-Encoding"] == "gzip", accepted
            assert compressed.headers["Content-Type"] == CONTENT_TYPE
            assert gzip.decompress(compressed.body) == plain.body
        for refused in ("identity", "gzip;q=0", "deflate", "gzip;q=0, *", "gzip;q=zero"):
            assert request(server.url, headers={"Accept-Encoding": refused}).body == plain.body, refused


def test_deployments_are_counted_live_so_a_crashed_one_stops_counting_before_any_flush(textfile_dir: Path) -> None:
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 3.0)
    with fraisier_metrics(textfile_dir) as server, deploying(textfile_dir) as deployment:
        assert sample_values(request(server.url).text)[ACTIVE] == 1
        written = (textfile_dir / "fraisier.prom").read_bytes()
        deployment.kill()
        deployment.wait()
        assert sample_values(request(server.url).text)[ACTIVE] == 0
        assert (textfile_dir / "fraisier.prom").read_bytes() == written  # no flush happened in between
        assert sample_values(textfile_dir / "fraisier.prom")[ACTIVE] == 1

        MetricsRecorder(textfile_dir).record_health_check("bare_metal", "tcp", "pass", 0.1)  # the next flush
        after = sample_values(request(server.url).text)
        assert after == sample_values(textfile_dir / "fraisier.prom")
        assert after['fraisier_deployments_total{provider="docker_compose",status="crashed",fraise_type="backup"}'] == 1


def test_a_running_deployment_counts_even_before_the_file_exists_and_a_new_provider_appears(
    textfile_dir: Path,
) -> None:
    with fraisier_metrics(textfile_dir) as server:
        assert ACTIVE not in sample_values(request(server.url).text)
        with deploying(textfile_dir):
            assert sample_values(request(server.url).text)[ACTIVE] == 1
            assert sample_values(request(server.url).text) == sample_values(textfile_dir / "fraisier.prom")


def test_an_unchanged_file_is_not_read_again_and_a_changed_one_is(textfile_dir: Path) -> None:
    """The cache is keyed on the file's inode, size and mtime. Rewriting the file in place with the same size
    and putting its mtime back leaves all three equal: a server that re-read the file would show the edit."""
    recorder = MetricsRecorder(textfile_dir)
    recorder.record_lock_wait("web", "bare_metal", 1.0)
    key = 'fraisier_deployment_lock_wait_seconds{service="web",provider="bare_metal"}'
    path = textfile_dir / "fraisier.prom"
    with fraisier_metrics(textfile_dir) as server:
        assert sample_values(request(server.url).text)[key] == 1
        status = os.stat(path)
        edited = path.read_bytes().replace(f"{key} 1.0\n".encode(), f"{key} 7.0\n".encode())
        with open(path, "r+b") as file:
            file.write(edited)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
        assert sample_values(path)[key] == 7
        assert sample_values(request(server.url).text)[key] == 1

        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
        assert sample_values(request(server.url).text)[key] == 7
        recorder.record_lock_wait("web", "bare_metal", 2.0)  # a flush replaces the file: a new inode
        assert sample_values(request(server.url).text)[key] == 2


def test_scrapes_do_not_wait_for_a_writer_holding_the_lock(textfile_dir: Path) -> None:
    """The lock is held elsewhere for a minute; scrapes (with a 10 s client timeout) are served all the same."""
    MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "timeout")
    key = 'fraisier_deployment_errors_total{provider="bare_metal",error_type="timeout"}'
    with fraisier_metrics(textfile_dir) as server, lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        for _ in range(5):
            assert sample_values(request(server.url).text)[key] == 1


def test_events_handed_over_by_processes_gone_since_are_in_the_next_scrape_once_the_lock_is_free(
        textfile_dir: Path) -> None:
    """A burst of writers can end with hand-overs that no merge applied (their writers exited while the lock was
    busy, and a merge applies only so many). On a quiet host no record call comes to merge them: the scrape does,
    without waiting for the lock."""
    key = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
    event = ("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
             "--duration", "3")
    fraisier(*event, textfile_dir=textfile_dir, check=True)
    with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
        fraisier(*event, textfile_dir=textfile_dir, check=True)  # handed over: the lock stays busy past its exit
    assert [name for name in os.listdir(textfile_dir / ".fraisier-handover") if name.endswith(".json")]
    assert sample_values(textfile_dir / "fraisier.prom")[key] == 1
    with fraisier_metrics(textfile_dir) as server:
        assert sample_values(request(server.url).text)[key] == 2
        assert sample_values(textfile_dir / "fraisier.prom")[key] == 2
        # Merged once: later scrapes serve the file as it is.
        merged = (textfile_dir / "fraisier.prom").stat().st_ino
        assert sample_values(request(server.url).text)[key] == 2
        assert (textfile_dir / "fraisier.prom").stat().st_ino == merged


def test_a_hand_over_left_for_a_newer_version_is_merged_at_one_scrape_not_at_each(textfile_dir: Path) -> None:
    """A hand-over this version cannot apply stays in the directory for a newer one: the scrape that finds it
    merges once (its count is in the file), and later scrapes do not rewrite the file for it again."""
    fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
             "--duration", "3", textfile_dir=textfile_dir, check=True)
    handovers = textfile_dir / ".fraisier-handover"
    handovers.mkdir(exist_ok=True)
    newer = {"version": 99, "schema": c.SCHEMA.fingerprint, "added": [], "observed": [], "latest": [],
             "maximum": [], "active_providers": [], "retired_markers": []}
    (handovers / "s00000000000000000001-1-000000000000.json").write_text(json.dumps(newer))
    with fraisier_metrics(textfile_dir) as server:
        first = sample_values(request(server.url).text)
        assert first["fraisier_textfile_handovers_pending"] == 1
        merged = (textfile_dir / "fraisier.prom").stat().st_ino
        for _ in range(3):
            assert sample_values(request(server.url).text) == first
        assert (textfile_dir / "fraisier.prom").stat().st_ino == merged


def _newer_handover(handovers: Path) -> None:
    """A hand-over this version leaves for a newer one: found by every look, applied by no merge."""
    handovers.mkdir(exist_ok=True)
    newer = {"version": 99, "schema": c.SCHEMA.fingerprint, "added": [], "observed": [], "latest": [],
             "maximum": [], "active_providers": [], "retired_markers": []}
    (handovers / "s00000000000000000001-1-000000000000.json").write_text(json.dumps(newer))


def _listed_since(directory: Path, reset: float) -> bool:
    """Whether ``directory`` was listed since its access time was set back to ``reset``: a listing makes the
    access time now (with relatime too, since ``reset`` is days old and older than the last change)."""
    return os.stat(directory).st_atime != reset


def test_scrapes_list_the_hand_over_directory_only_when_it_changed(textfile_dir: Path) -> None:
    """Bug: each scrape listed the hand-over directory to look for hand-overs no merge of the server saw. It
    holds up to 100,000 of them while merges fail (handovers.PENDING_LIMIT), plus those left for a newer version
    and those set aside: a listing of 100,000 names made each scrape tens of milliseconds instead of tens of
    microseconds, for every client at once. A look that found none is not made again until the directory
    changes (its modification time, which every hand-over written, applied or set aside changes)."""
    key = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
    fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
             "--duration", "3", textfile_dir=textfile_dir, check=True)
    handovers = textfile_dir / ".fraisier-handover"
    _newer_handover(handovers)
    changed = time.time() - 3600
    old = time.time() - 3 * 86400
    os.utime(handovers, (old, changed))
    os.listdir(handovers)
    assert _listed_since(handovers, old), "this filesystem does not note listings (noatime): the test cannot see them"
    with fraisier_metrics(textfile_dir) as server:
        first = sample_values(request(server.url).text)  # merges once: the hand-over is counted as pending
        assert first["fraisier_textfile_handovers_pending"] == 1
        # That merge changed the directory (it remembered the hand-over: handover_left.py), long ago as here.
        os.utime(handovers, (old, changed))
        assert sample_values(request(server.url).text) == first  # the look after that merge
        for _ in range(3):
            os.utime(handovers, (old, changed))
            assert sample_values(request(server.url).text) == first
            assert not _listed_since(handovers, old)
        # A hand-over written since changes the directory: the next scrape merges it.
        with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
            fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status",
                     "success", "--duration", "3", textfile_dir=textfile_dir, check=True)
        assert sample_values(request(server.url).text)[key] == 2


def test_a_hand_over_written_in_the_same_clock_tick_as_the_last_look_is_in_the_next_scrape(
        textfile_dir: Path) -> None:
    """A directory's modification time has the granularity of the kernel's clock tick (or a second): a hand-over
    written in the tick of the listing that found none leaves the time as it was. So a look is trusted to stand
    only for a directory that last changed well before it; here the directory's time is put back after the
    hand-over, as a change in the same tick would leave it."""
    key = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
    fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
             "--duration", "3", textfile_dir=textfile_dir, check=True)
    handovers = textfile_dir / ".fraisier-handover"
    _newer_handover(handovers)
    with fraisier_metrics(textfile_dir) as server:
        request(server.url)
        request(server.url)  # the look after the merge: none unseen
        before = os.stat(handovers)
        with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
            fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status",
                     "success", "--duration", "3", textfile_dir=textfile_dir, check=True)
        os.utime(handovers, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert sample_values(request(server.url).text)[key] == 2


def test_one_scrape_at_a_time_looks_for_news_the_others_serve_the_file_as_it_is(
        textfile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: every scrape looked for news (the hand-over directory listed, Fraisier's database checked) before it
    found another scrape merging already, and then served the file as it is: fifty clients at once made fifty
    listings of a directory that racing writers keep changing, for one merge. The scrape that may merge looks;
    while it does, the others serve the file as it is. Here the first scrape's look is held until the others
    are served."""
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 1.0)
    store = TextfileStore(textfile_dir)
    source = TextfileSource(store)
    looking, go_on = threading.Event(), threading.Event()
    looks: list[str] = []
    look = store.handovers_waiting

    def held_look() -> bool:
        looks.append(threading.current_thread().name)
        looking.set()
        go_on.wait(30)
        return look()

    monkeypatch.setattr(store, "handovers_waiting", held_look)
    first = threading.Thread(target=source.scrape, name="first")
    first.start()
    try:
        assert looking.wait(30)
        served = [sample_values(source.scrape().plain.decode()) for _ in range(3)]
    finally:
        go_on.set()
        first.join(30)
    assert looks == ["first"]
    assert all(values[c.DEPLOYMENTS.name + '{provider="bare_metal",status="success",fraise_type="api"}'] == 1
               for values in served)


def test_on_a_read_only_directory_hand_overs_waiting_make_one_merge_attempt_per_retry_period_not_per_scrape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's BindReadOnlyPaths: the server may only read the directory, and hand-overs wait there for the
    refresh timer. Every merge fails; a scrape that tried one leaves the next to NEWS_RETRY_SECONDS later, and
    every scrape is served meanwhile. (A real read-only filesystem: root writes through file permissions.)"""
    from fraisier_textfile.serve import sources

    with small_tmpfs(tmp_path / "textfile", "4m") as textfile_dir:
        fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
                 "--duration", "3", textfile_dir=textfile_dir, check=True)
        with lock_held_elsewhere(textfile_dir / "fraisier.prom.lock"):
            fraisier("record", "deployment", "--provider", "bare_metal", "--fraise-type", "api", "--status",
                     "success", "--duration", "3", textfile_dir=textfile_dir, check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(textfile_dir)], check=True)
        monkeypatch.setattr(sources, "NEWS_RETRY_SECONDS", 3600.0)
        store = TextfileStore(textfile_dir)
        attempts: list[BaseException] = []
        merge = store.merge

        def counted(*arguments: Any, **options: Any) -> None:
            try:
                merge(*arguments, **options)
            except BaseException as error:
                attempts.append(error)
                raise

        monkeypatch.setattr(store, "merge", counted)
        source = TextfileSource(store)
        key = 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"}'
        for _ in range(5):
            assert sample_values(source.scrape().plain.decode())[key] == 1
        assert len(attempts) == 1 and "read-only" in str(attempts[0])
        monkeypatch.setattr(source, "_news_retry_at", 0.0)  # the period over
        source.scrape()
        assert len(attempts) == 2


def test_a_corrupt_file_is_an_error_naming_it_until_a_valid_one_replaces_it(textfile_dir: Path) -> None:
    textfile_dir.mkdir()
    path = textfile_dir / "fraisier.prom"
    # Deliberately bad input: a value that is not a number.
    path.write_text('fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} one\n')
    with fraisier_metrics(textfile_dir) as server:
        failed = request(server.url)
        assert failed.status == 500
        assert str(path) in failed.text
        assert "fraisier_deployments_total" not in sample_values_or_nothing(failed.text)
        assert request(server.base + "/").status == 200

        path.unlink()
        MetricsRecorder(textfile_dir).record_deployment_error("bare_metal", "timeout")
        recovered = request(server.url)
        assert recovered.status == 200
        assert sample_values(recovered.text) == sample_values(path)
        _, errors = server.stop()
    assert f"cannot serve {path}" in errors


def sample_values_or_nothing(text: str) -> dict[str, float]:
    try:
        return sample_values(text)
    except ValueError:
        return {}


WRITE_UNTIL_STOPPED = """
import sys
from pathlib import Path
from fraisier_textfile import MetricsRecorder
recorder = MetricsRecorder(sys.argv[1], lock_timeout=60)
stop = Path(sys.argv[2])
print("ready", flush=True)
for number in range(5000):
    if stop.exists():
        break
    with recorder.track_deployment("bare_metal", "api"):
        recorder.record_health_check("bare_metal", "http", "pass", 0.1 * (number % 30))
    recorder.record_deployment_error("bare_metal", f"error_{number % 7}")
"""

MONOTONIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def test_fifty_clients_scraping_while_processes_flush_see_only_whole_monotonic_bodies(
    textfile_dir: Path, tmp_path: Path
) -> None:
    clients, scrapes_per_client = 50, 80
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 1.0)
    stop = tmp_path / "stop"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITE_UNTIL_STOPPED, str(textfile_dir), str(stop)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    bodies: dict[bytes, str] = {}  # digest -> text: a body is parsed once however often it is served
    sequences: list[list[bytes]] = [[] for _ in range(clients)]
    problems: list[str] = []

    def scrape(client: int, url: str) -> None:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        headers = {"Accept-Encoding": "gzip"} if client % 2 else {}
        try:
            for _ in range(scrapes_per_client):
                connection.request("GET", "/metrics", headers=headers)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    problems.append(f"client {client}: status {response.status}")
                    return
                if response.headers["Content-Encoding"] == "gzip":
                    body = gzip.decompress(body)
                digest = hashlib.sha256(body).digest()
                bodies.setdefault(digest, body.decode("utf-8"))
                sequences[client].append(digest)
        except Exception as error:  # any failure of any client fails the test, with its reason
            problems.append(f"client {client}: {error!r}")
        finally:
            connection.close()

    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        with fraisier_metrics(textfile_dir) as server:
            threads = [threading.Thread(target=scrape, args=(n, server.url)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            stop.touch()
            for writer in writers:
                assert writer.wait(timeout=60) == 0
            final = request(server.url).text
    finally:
        stop.touch()
        for writer in writers:
            writer.kill()
            writer.wait()

    assert problems == []
    assert all(len(sequence) == scrapes_per_client for sequence in sequences)
    parsed = {digest: sample_values(text) for digest, text in bodies.items()}  # raises on any bad body
    assert len(parsed) > 10, "the writers should have flushed many times during the scrapes"
    for client, sequence in enumerate(sequences):
        previous: dict[str, float] = {}
        for digest in sequence:
            values = parsed[digest]
            for key, value in values.items():
                name = key.split("{", 1)[0]
                if name.endswith(MONOTONIC_SUFFIXES):
                    earlier = previous.get(key, 0.0)
                    assert value >= earlier, f"client {client}: {key} went from {earlier} to {value}"
            previous = values
    assert sample_values(final) == sample_values(textfile_dir / "fraisier.prom")


# Start, stop, and start-up errors


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_cleanly_after_it_said_where_it_listens(textfile_dir: Path, signal_number: int) -> None:
    with fraisier_metrics(textfile_dir) as server:
        assert request(server.url).status == 200
        status, errors = server.stop(signal_number)
    assert status == 0
    path = textfile_dir / "fraisier.prom"
    assert f"fraisier metrics: serving {path} on http://127.0.0.1:{server.port}/metrics" in errors
    assert "does not exist yet" in errors
    assert "Traceback" not in errors


def test_a_sigterm_the_kernel_gives_to_another_thread_than_the_main_one_stops_it(textfile_dir: Path) -> None:
    """Bug: a SIGTERM went unheeded until a SIGKILL. Python runs a handler only in the main thread, which waited
    on a threading.Event: a signal that reached the process while that thread was not in the wait's system call
    (on its way into it, handing the interpreter to a thread serving a scrape) or that the kernel gave to
    another thread (here, sent to one) set the handler's flag, but nothing woke the main thread to run it. Now
    the main thread waits on the signal wake-up descriptor, which the signal writes to whatever thread it
    reaches (SIGHUP's reload goes the same way)."""
    with fraisier_metrics(textfile_dir) as server:
        assert request(server.url).status == 200
        pid = server.process.pid
        others = sorted(int(task) for task in os.listdir(f"/proc/{pid}/task") if int(task) != pid)
        assert others, "the server has threads besides the main one"
        os.kill(others[0], signal.SIGTERM)  # a thread's id: the kernel gives the signal to that thread
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("fraisier metrics did not act on a SIGTERM within 20 s")
        status, errors = server.stop()
    assert status == 0
    assert "fraisier metrics: stopped" in errors


def test_a_sighup_the_kernel_gives_to_another_thread_reloads_and_it_goes_on_serving(textfile_dir: Path) -> None:
    """SIGHUP (systemd's ExecReload) goes the way of SIGTERM above: given to a thread other than the main one, it
    reloads the web config at once, and the server goes on serving."""
    with fraisier_metrics(textfile_dir) as server:
        assert request(server.url).status == 200
        pid = server.process.pid
        others = sorted(int(task) for task in os.listdir(f"/proc/{pid}/task") if int(task) != pid)
        os.kill(others[0], signal.SIGHUP)
        assert server.process.stderr is not None
        descriptor, said, deadline = server.process.stderr.fileno(), b"", time.monotonic() + 20
        while b"SIGHUP: reloading the web config" not in said:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([descriptor], [], [], left)[0]:
                pytest.fail(f"fraisier metrics did not act on a SIGHUP within 20 s; it said {said!r}")
            said += os.read(descriptor, 65536)
        assert request(server.url).status == 200
        status, _ = server.stop()
    assert status == 0


def test_it_listens_on_loopback_by_default(textfile_dir: Path) -> None:
    with fraisier_metrics(textfile_dir, address=None) as server:
        assert request(server.url).status == 200
        assert listening_addresses(server.port) == ["127.0.0.1"]
        _, errors = server.stop()
    assert f"on http://localhost:{server.port}/metrics" in errors


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port``, read from the kernel's table."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    addresses.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(address[n : n + 8])[::-1] for n in range(0, 32, 8))
                    addresses.append(socket.inet_ntop(socket.AF_INET6, raw))
    return addresses


def test_help_tells_how_to_configure_tls_and_basic_auth() -> None:
    result = CliRunner().invoke(main, ["metrics", "--help"])
    assert result.exit_code == 0
    for expected in ("--port", "8001", "--address", "localhost", "--web-config-file", "tls_server_config",
                     "cert_file", "key_file", "client_auth_type", "RequireAndVerifyClientCert", "client_ca_file",
                     "min_version", "basic_auth_users", "bcrypt.hashpw"):
        assert expected in result.output


def test_the_example_web_config_in_the_help_is_valid(tmp_path: Path, certificates: Certificates) -> None:
    from fraisier_textfile.serve.tls_context import make_ssl_context
    from fraisier_textfile.serve.webconfig import load_web_config

    output = CliRunner().invoke(main, ["metrics", "--help"]).output
    example = output.split("Example web config:\n", 1)[1].split("\n\n", 1)[0]
    config = write_config(tmp_path, textwrap.dedent(example).replace("$2b$12$...", hashed("secret")))
    for name, source in (("server.crt", certificates.server.cert), ("server.key", certificates.server.key),
                         ("clients-ca.crt", certificates.ca)):
        (tmp_path / name).write_bytes(source.read_bytes())
    loaded = load_web_config(config)
    assert loaded.tls is not None and loaded.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert list(loaded.basic_auth_users) == ["prometheus"]
    make_ssl_context(loaded)


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "web.yml"
    config.write_text(text)
    return config


def start_up_error(textfile_dir: Path, *options: str) -> tuple[int, str]:
    result = fraisier("metrics", *options, textfile_dir=textfile_dir, timeout=60)
    return result.returncode, result.stderr


def test_a_port_in_use_is_a_one_line_error(textfile_dir: Path, occupied_port: int) -> None:
    status, errors = start_up_error(textfile_dir, "--address", "127.0.0.1", "--port", str(occupied_port))
    assert status == 1
    assert errors == (f"Error: cannot listen on 127.0.0.1:{occupied_port}: port {occupied_port} is in use by another "
                      "process; stop it or choose another --port\n")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("no-such-host.invalid", "cannot listen on --address 'no-such-host.invalid'"),
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),
        ("300.1.1.1", "cannot listen on --address '300.1.1.1'"),
    ],
    ids=["unknown-name", "not-this-machine", "not-an-address"],
)
def test_a_bad_address_is_a_one_line_error(textfile_dir: Path, address: str, expected: str) -> None:
    status, errors = start_up_error(textfile_dir, "--address", address, "--port", str(free_port()))
    assert status == 1
    assert errors.startswith("Error: ") and errors.count("\n") == 1
    assert expected in errors


def test_a_port_out_of_range_is_a_usage_error(textfile_dir: Path) -> None:
    status, errors = start_up_error(textfile_dir, "--port", "70000")
    assert status == 2
    assert "--port" in errors


BAD_CONFIGS = {
    "missing-file": (None, "cannot read the web config {config}"),
    "not-yaml": ("tls_server_config: [cert_file\n", "web config {config} is not valid YAML: line 2"),
    "unknown-top-level-key": ("basic_auth_user:\n  alice: x\n", "unknown key 'basic_auth_user'"),
    "unknown-tls-key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert_flie: x\n",
                        "unknown key 'tls_server_config.cert_flie'"),
    "missing-cert": ("tls_server_config:\n  cert_file: nothing.crt\n  key_file: server.key\n",
                     "cannot read cert_file {directory}/nothing.crt (web config {config})"),
    "missing-key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: nothing.key\n",
                    "cannot read key_file {directory}/nothing.key"),
    "cert-is-not-a-cert": ("tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n",
                           "cert_file {directory}/garbage.pem (web config {config}) holds no valid PEM certificate"),
    "key-is-not-a-key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: garbage.pem\n",
                         "key_file {directory}/garbage.pem (web config {config}) is not a usable PEM private key"),
    "key-of-another-cert": ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
                            "key_file {directory}/client.key (web config {config}) is not the key of cert_file"),
    "bad-hash": ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice is not a bcrypt hash"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_a_bad_web_config_is_a_one_line_error_naming_the_file(
    textfile_dir: Path, tmp_path: Path, certificates: Certificates, case: str
) -> None:
    text, expected = BAD_CONFIGS[case]
    directory = certificates.ca.parent  # relative paths in a config are relative to its directory
    (directory / "garbage.pem").write_text("not PEM at all\n")  # deliberately bad input
    config = tmp_path / "absent.yml" if text is None else directory / f"{case}.yml"
    if text is not None:
        config.write_text(text)
    status, errors = start_up_error(textfile_dir, "--address", "127.0.0.1", "--port", str(free_port()),
                                    "--web-config-file", str(config))
    assert status == 1
    assert errors.startswith("Error: ") and errors.count("\n") == 1, errors
    assert expected.format(config=config, directory=directory) in errors


# TLS


def tls_config(certificates: Certificates, directory: Path, extra: str = "") -> Path:
    return write_config(directory, f"tls_server_config:\n  cert_file: {certificates.server.cert}\n"
                                   f"  key_file: {certificates.server.key}\n{extra}")


def client_context(certificates: Certificates, client: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if client is not None:
        context.load_cert_chain(client, key)
    return context


def test_tls_serves_clients_that_trust_the_certificate_and_no_metrics_over_plain_http(
    textfile_dir: Path, tmp_path: Path, certificates: Certificates
) -> None:
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 3.0)
    config = tls_config(certificates, tmp_path)
    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        assert server.url.startswith("https://")
        served = request(server.url, context=client_context(certificates))
        assert served.status == 200
        assert sample_values(served.text) == sample_values(textfile_dir / "fraisier.prom")

        plain = request(f"http://127.0.0.1:{server.port}/metrics")
        assert plain.status == 400
        assert b"fraisier_" not in plain.body
        with pytest.raises(ssl.SSLCertVerificationError):
            request(server.url, context=ssl.create_default_context())  # the test CA is not trusted there
        _, errors = server.stop()
    assert f"on https://127.0.0.1:{server.port}/metrics (TLS" in errors


def test_client_certificates_are_required_and_verified(
    textfile_dir: Path, tmp_path: Path, certificates: Certificates
) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certificates.ca}\n"
    config = tls_config(certificates, tmp_path, extra)
    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        served = request(server.url, context=client_context(certificates, certificates.client.cert,
                                                             certificates.client.key))
        assert served.status == 200
        assert "# TYPE fraisier_deployments_total counter" in served.text
        for refused in (client_context(certificates),
                        client_context(certificates, certificates.stranger.cert, certificates.stranger.key)):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                request(server.url, context=refused)


def test_min_version_refuses_older_clients(textfile_dir: Path, tmp_path: Path, certificates: Certificates) -> None:
    config = tls_config(certificates, tmp_path, "  min_version: TLS13\n")
    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        assert request(server.url, context=client_context(certificates)).status == 200
        old = client_context(certificates)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            request(server.url, context=old)


def test_a_renewed_certificate_is_served_without_a_restart(textfile_dir: Path, tmp_path: Path,
                                                           certificates: Certificates) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(certificates.server.cert.read_bytes())
    key.write_bytes(certificates.server.key.read_bytes())
    config = write_config(tmp_path, f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n")

    def served_certificate(url: str) -> bytes:
        with socket.create_connection(("127.0.0.1", int(urlsplit(url).port or 0)), timeout=10) as raw, \
                client_context(certificates).wrap_socket(raw, server_hostname="127.0.0.1") as connection:
            return connection.getpeercert(binary_form=True) or b""

    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        first = served_certificate(server.url)
        assert first == ssl.PEM_cert_to_DER_cert(certificates.server.cert.read_text())
        for source, target in ((certificates.other_server.key, key), (certificates.other_server.cert, cert)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        assert served_certificate(server.url) == ssl.PEM_cert_to_DER_cert(certificates.other_server.cert.read_text())


# Basic auth

PASSWORD = "correct horse"


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_basic_auth_serves_right_credentials_only(textfile_dir: Path, tmp_path: Path) -> None:
    MetricsRecorder(textfile_dir).record_deployment_complete("bare_metal", "api", "success", 3.0)
    config = write_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed(PASSWORD)}\n  other: {hashed('x')}\n")
    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        served = request(server.url, headers=basic("prometheus", PASSWORD))
        assert served.status == 200
        assert sample_values(served.text) == sample_values(textfile_dir / "fraisier.prom")
        again = request(server.url, headers=basic("prometheus", PASSWORD))
        assert again.body == served.body
        refusals = {
            "missing": {},
            "wrong password": basic("prometheus", PASSWORD + "!"),
            "another user's password": basic("other", PASSWORD),
            "unknown user": basic("nobody", PASSWORD),
            "not basic": {"Authorization": f"Bearer {PASSWORD}"},
            "not base64": {"Authorization": "Basic %%%"},
        }
        for case, headers in refusals.items():
            for method in ("GET", "HEAD"):
                refused = request(server.url, method, headers=headers)
                assert refused.status == 401, case
                assert refused.headers["WWW-Authenticate"].startswith("Basic"), case
                assert b"fraisier_" not in refused.body, case
        assert request(server.base + "/").status == 401


def test_basic_auth_users_are_reread_and_an_invalid_change_keeps_the_last_valid_config(
    textfile_dir: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed('old')}\n")

    def replace_config(text: str) -> None:
        staged = tmp_path / "web.yml.new"
        staged.write_text(text)
        os.replace(staged, config)

    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        assert request(server.url, headers=basic("prometheus", "old")).status == 200
        replace_config(f"basic_auth_users:\n  prometheus: {hashed('new')}\n")
        assert request(server.url, headers=basic("prometheus", "old")).status == 401
        assert request(server.url, headers=basic("prometheus", "new")).status == 200
        replace_config("basic_auth_users:\n  prometheus: [\n")
        assert request(server.url, headers=basic("prometheus", "new")).status == 200
        assert request(server.url).status == 401
        _, errors = server.stop()
    assert f"web config {config} is not valid YAML" in errors
    assert "the last valid web config stays in force" in errors


def test_tls_and_basic_auth_together(textfile_dir: Path, tmp_path: Path, certificates: Certificates) -> None:
    config = tls_config(certificates, tmp_path, f"basic_auth_users:\n  prometheus: {hashed(PASSWORD)}\n")
    with fraisier_metrics(textfile_dir, "--web-config-file", str(config)) as server:
        context = client_context(certificates)
        assert request(server.url, context=context).status == 401
        assert request(server.url, headers=basic("prometheus", PASSWORD), context=context).status == 200


# The recorder's own registry, served in-process


def test_a_recorder_serves_its_registry_and_shuts_down(textfile_dir: Path) -> None:
    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    server = recorder.serve(port=0, address="127.0.0.1")
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        recorder.record_deployment_complete("bare_metal", "api", "success", 3.0)
        served = request(server.url)
        assert served.status == 200
        assert served.headers["Content-Type"] == CONTENT_TYPE
        values = sample_values(served.text)
        labels = {"provider": "bare_metal", "status": "success", "fraise_type": "api"}
        assert [sample.value for family in text_string_to_metric_families(served.text) for sample in family.samples
                if sample.name == "fraisier_deployments_total" and sample.labels == labels] == [1]
        assert not (textfile_dir / "fraisier.prom").exists()  # served from memory: nothing was flushed
        assert "_created" not in served.text

        compressed = request(server.url, headers={"Accept-Encoding": "gzip"})
        assert sample_values(gzip.decompress(compressed.body).decode()) == values
        assert request(server.url, "HEAD").body == b""
        assert request(f"http://127.0.0.1:{server.port}/").status == 200
        assert request(f"http://127.0.0.1:{server.port}/other").status == 404
        kept_alive = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        kept_alive.request("GET", "/metrics")
        assert kept_alive.getresponse().read() == request(server.url).body
    finally:
        server.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):  # nothing more on an open connection
        kept_alive.request("GET", "/metrics")
        kept_alive.getresponse().read()
    kept_alive.close()
    server.shutdown()  # twice is harmless


def test_a_recorder_serves_its_registry_behind_basic_auth(textfile_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed(PASSWORD)}\n")
    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    with recorder.serve(port=0, address="127.0.0.1", web_config_file=config) as server:
        assert request(server.url).status == 401
        assert request(server.url, headers=basic("prometheus", PASSWORD)).status == 200


def test_a_recorder_cannot_serve_on_a_port_in_use(textfile_dir: Path, occupied_port: int) -> None:
    from fraisier_textfile.errors import ServerStartError

    with pytest.raises(ServerStartError, match=f"port {occupied_port} is in use"):
        MetricsRecorder(textfile_dir, auto_flush=False).serve(port=occupied_port, address="127.0.0.1")


def test_scrapes_beyond_max_requests_get_503_at_once(textfile_dir: Path) -> None:
    """A scrape held inside a slow collector fills the only slot; the next one is refused, not queued."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def collect(self) -> Iterator[object]:
            entered.set()
            release.wait(30)
            return iter(())

    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    recorder.registry.register(Slow())  # type: ignore[arg-type]
    with recorder.serve(port=0, address="127.0.0.1", max_requests=1) as server:
        held: list[int] = []
        first = threading.Thread(target=lambda: held.append(request(server.url).status))
        first.start()
        assert entered.wait(30)
        refused = request(server.url)
        assert refused.status == 503
        assert b"raise --max-requests" in refused.body
        release.set()
        first.join(30)
        assert held == [200]
        assert request(server.url).status == 200


# Abuse: connections that hold the server and send nothing useful (tests/integration/test_server_under_abuse.py
# runs 2,000 of them against a real Prometheus)

PLAIN_TRICKLE = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
TLS_TRICKLE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello announced, never finished


def closed_by_server(client: socket.socket) -> bool:
    """Whether the server has closed the connection (end of file or reset), without waiting."""
    if not select.select([client], [], [], 0)[0]:
        return False
    try:
        return client.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def eventually(condition: Callable[[], bool], within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_closed(client: socket.socket, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while not closed_by_server(client):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def textfile_server(textfile_dir: Path, **options: object) -> MetricsServer:
    return MetricsServer(TextfileSource(TextfileStore(textfile_dir)), port=0, address="127.0.0.1",
                         **options).start()  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_its_deadline(
    textfile_dir: Path, tmp_path: Path, certificates: Certificates, scheme: str
) -> None:
    """The deadline is set once, when the connection is accepted: each byte does not push it back, as it
    pushes back a socket timeout. A trickle of a byte every 50 ms would outlast any socket timeout above
    that; here it must be cut off once the request deadline (1 s) has passed."""
    web_config = tls_config(certificates, tmp_path) if scheme == "https" else None
    with textfile_server(textfile_dir, request_timeout=1.0, web_config_file=web_config) as server:
        start = TLS_TRICKLE if scheme == "https" else PLAIN_TRICKLE
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            sent = 0
            started = time.monotonic()
            while not closed_by_server(client) and sent < 400:  # 400 bytes: 20 s, far past the deadline
                try:
                    client.sendall(start[sent:sent + 1] or b"a")
                except OSError:
                    break
                sent += 1
                time.sleep(0.05)
            cut_off_after = time.monotonic() - started
            assert sent < 400, f"still open after {sent} trickled bytes ({cut_off_after:.1f} s)"
        # A client that sends its request at once is served as ever.
        context = client_context(certificates) if scheme == "https" else None
        assert request(server.url, context=context).status == 200


def test_at_the_limit_a_new_connection_closes_the_longest_waiting_silent_one_not_a_kept_alive_one(
    textfile_dir: Path
) -> None:
    with textfile_server(textfile_dir, max_connections=4) as server:
        scraper = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        scraper.request("GET", "/metrics")
        assert scraper.getresponse().read() and scraper.sock is not None
        kept_alive = scraper.sock
        silent = []
        for _ in range(3):
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            assert eventually(lambda: server.connections_held == len(silent) + 1)  # accepted, in this order
        try:
            # The table is full (one kept alive, three silent): a new scrape is served all the same.
            assert request(server.url).status == 200
            assert wait_closed(silent[0]), "the longest-waiting silent connection was not closed"
            assert not closed_by_server(silent[1]) and not closed_by_server(silent[2])
            # The kept-alive scraper kept its connection: its next scrape goes over the same socket.
            assert not closed_by_server(kept_alive)
            scraper.request("GET", "/metrics")
            assert scraper.getresponse().status == 200 and scraper.sock is kept_alive
        finally:
            scraper.close()
            for client in silent:
                client.close()


def test_when_every_connection_is_being_served_a_new_one_is_closed_at_once(textfile_dir: Path) -> None:
    entered, release = threading.Semaphore(0), threading.Event()

    class Slow:
        def collect(self) -> Iterator[object]:
            entered.release()
            release.wait(30)
            return iter(())

    recorder = MetricsRecorder(textfile_dir, auto_flush=False)
    recorder.registry.register(Slow())  # type: ignore[arg-type]
    source = RegistrySource(recorder.registry)
    with MetricsServer(source, port=0, address="127.0.0.1", max_connections=2).start() as server:
        statuses: list[int] = []
        scrapes = [threading.Thread(target=lambda: statuses.append(request(server.url).status)) for _ in range(2)]
        for scrape in scrapes:
            scrape.start()
        assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
            third.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_closed(third), "a third connection was kept although both slots were being served"
        release.set()
        for scrape in scrapes:
            scrape.join(30)
        assert statuses == [200, 200]
        assert request(server.url).status == 200


def soft_and_hard_descriptor_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files limit in /proc/{pid}/limits")


@pytest.mark.parametrize(("soft", "hard"), [(1024, 4096), (1024, 1024)])
def test_it_raises_its_soft_descriptor_limit_to_the_hard_one_and_keeps_within_it(
    textfile_dir: Path, soft: int, hard: int
) -> None:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    port = free_port()
    command = [sys.executable, "-m", "fraisier_textfile", "--textfile-dir", str(textfile_dir), "metrics",
               "--address", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=limit)
    server = Server(process, port)
    try:
        wait_for_port(port, process)
        assert soft_and_hard_descriptor_limits(process.pid) == (hard, hard)
        assert request(server.url).status == 200
    finally:
        status, errors = server.stop()
    assert status == 0, errors
    lowered = "--max-connections 512 lowered to"
    if hard >= 2 * 512 + 64:
        assert lowered not in errors
    else:  # 1024 descriptors cannot hold 512 connections and what each may need: fewer, and said so
        assert lowered in errors and "LimitNOFILE=" in errors


def test_silent_connections_hold_no_thread_and_are_served_once_they_speak(textfile_dir: Path) -> None:
    """A connection gets a thread only once its request is in: a few hundred silent clients cost the server
    descriptors, not threads; each is served as soon as it sends its request."""
    with textfile_server(textfile_dir) as server:
        threads_before = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
        try:
            assert eventually(lambda: server.connections_held == len(silent))
            assert threading.active_count() - threads_before < 10
            for client in silent[:20]:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            for client in silent[:20]:
                assert client.recv(12) == b"HTTP/1.1 200"
        finally:
            for client in silent:
                client.close()


def test_a_request_in_many_pieces_and_pipelined_requests_are_served(textfile_dir: Path) -> None:
    with textfile_server(textfile_dir) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        one = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"
        for byte in range(len(one)):  # a byte at a time, well within the deadline
            client.sendall(one[byte:byte + 1])
            time.sleep(0.002)
        client.sendall(one + b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # two at once
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"200", b"404"]


@pytest.mark.parametrize("first_line", [b"GARBAGE\r\n", b"GET / HTTP/1.1 extra\r\n"])
def test_a_first_line_that_is_no_request_is_answered_at_once_not_at_the_deadline(
    textfile_dir: Path, first_line: bytes
) -> None:
    with textfile_server(textfile_dir, request_timeout=60.0) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(first_line)  # and nothing more: the answer must not wait for the 60 s deadline
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        assert b"Bad request" in answer  # http.server's 400 page (no status line: it takes it for HTTP/0.9)


def test_out_of_descriptors_it_makes_room_and_goes_on_serving(textfile_dir: Path) -> None:
    """Its open-file limit lowered under it (prlimit) to what it holds: accepting fails with EMFILE. It closes
    the longest-waiting connection, waits a little (as Go's servers do) instead of spinning on a listening
    socket that stays readable, says so once, and serves the next scrape."""
    import resource

    with fraisier_metrics(textfile_dir) as server:
        assert request(server.url).status == 200
        descriptors = f"/proc/{server.process.pid}/fd"
        before = len(os.listdir(descriptors))
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(30)]
        try:
            deadline = time.monotonic() + 10
            # Until it accepted them (its scrape connection, counted before, may have closed meanwhile).
            while (held := len(os.listdir(descriptors))) < before + len(silent) - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (held + 1, held + 1))
            silent += [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(100)]
            assert request(server.url).status == 200
            assert server.process.poll() is None
        finally:
            for client in silent:
                client.close()
        status, errors = server.stop()
    assert status == 0
    assert errors.count("cannot accept a connection: Too many open files") == 1, errors


def test_a_store_of_another_schema_is_served_with_its_families_and_none_of_fraisiers(tmp_path: Path) -> None:
    """The server serves what the store says of its schema and its deployments in flight: a store of an
    application's families, which counts no markers, is served as its file, without Fraisier's empty families
    nor a live active-deployments block."""
    from urllib.request import urlopen

    from fraisier_textfile.changes import Changes
    from fraisier_textfile.format.schema import Family, Kind, Schema
    from fraisier_textfile.store.textfile import TextfileStore as StoreOfASchema

    jobs = Family("app_jobs_total", Kind.COUNTER, ("job",), "Jobs run.")
    store = StoreOfASchema(tmp_path, schema=Schema([jobs]))
    changes = Changes()
    changes.add(jobs, ("backup",), 3)
    store.merge(changes)
    with MetricsServer(TextfileSource(store), port=0, address="127.0.0.1").start() as server:
        served = urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    assert sample_values(served) == {'app_jobs_total{job="backup"}': 3}
    assert "fraisier_" not in served
