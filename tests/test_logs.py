"""Logs an operator can use: logfmt and JSON lines as node_exporter writes them, levels, request logs at debug,
SIGHUP reloading the web config of a running ``fraisier metrics``; the library installs no handler."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import bcrypt
import pytest

from fraisier_textfile.cli import logs

from .processes import fraisier, free_port, stop, tail

LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """A logfmt line's pairs; fails if anything in the line is not a pair."""
    pairs = LOGFMT_PAIR.findall(line)
    assert " ".join(f"{key}={value}" for key, value in pairs) == line, f"not logfmt: {line!r}"
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


def parse_time(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def log_lines(text: str, log_format: str) -> list[dict[str, str]]:
    parse = parse_logfmt if log_format == "logfmt" else json.loads
    return [parse(line) for line in text.splitlines() if line]


def emit(log_format: str, level: str, message: str, **fields: object) -> str:
    stream = io.StringIO()
    logs.configure(level, log_format, stream)
    try:
        logger = logging.getLogger("fraisier_textfile.test")
        logger.debug("debug hidden unless asked")
        logger.warning(message, extra={"fields": fields})
    finally:
        root = logging.getLogger()
        for handler in [handler for handler in root.handlers if handler.get_name() == "fraisier-cli"]:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    return stream.getvalue()


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_a_record_is_one_line_with_time_level_message_and_its_fields(log_format: str) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    message = 'cannot write "fraisier.prom": disk full\nsecond line = more'
    text = emit(log_format, "info", message, path="/var/lib/x y", status=500, empty="", ok=True, unicode="é")
    [line] = log_lines(text, log_format)
    assert parse_time(str(line["time"])) >= before
    assert line["level"] == "warn"
    assert line["msg"] == message
    assert line["logger"] == "fraisier_textfile.test"
    assert str(line["path"]) == "/var/lib/x y" and str(line["status"]) == "500" and line["empty"] == ""
    assert str(line["ok"]).lower() == "true" and line["unicode"] == "é"
    assert list(line)[:4] == ["time", "level", "logger", "msg"]


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_debug_records_appear_only_at_debug_level(log_format: str) -> None:
    assert "debug hidden" not in emit(log_format, "info", "x")
    assert [line["level"] for line in log_lines(emit(log_format, "debug", "x"), log_format)] == ["debug", "warn"]
    assert emit(log_format, "error", "x") == ""


def test_the_library_installs_no_handler() -> None:
    code = (
        "import logging, fraisier_textfile, fraisier_textfile.serve.server, fraisier_textfile.cli.execution, "
        "fraisier_textfile.recorder.recorder, fraisier_textfile.serve.webconfig, fraisier_textfile.cli.logs\n"
        "loggers = [logging.getLogger()] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]\n"
        "print(sum(len(logger.handlers) for logger in loggers), logging.getLogger().level)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", str(logging.WARNING)]


@pytest.mark.parametrize("log_format", logs.FORMATS)
@pytest.mark.parametrize("where", ["before the command", "after the command", "environment"])
def test_every_command_logs_in_the_chosen_format(tmp_path: Path, log_format: str, where: str) -> None:
    exec_command = ["exec", "--provider", "bare_metal", "--fraise-type", "api"]
    missing = str(tmp_path / "missing.sh")
    environment = dict(os.environ)
    if where == "before the command":
        arguments = ["--log-format", log_format, *exec_command, "--", missing]
    elif where == "after the command":
        arguments = [*exec_command, "--log-format", log_format, "--", missing]
    else:
        environment["FRAISIER_LOG_FORMAT"] = log_format
        arguments = [*exec_command, "--", missing]
    result = fraisier(*arguments, textfile_dir=tmp_path / "textfile", env=environment)
    assert result.returncode == 127
    [line] = log_lines(result.stderr, log_format)
    assert line["level"] == "error"
    assert line["msg"] == f"cannot start {missing}: not found (check the path and PATH); exit 127"
    parse_time(str(line["time"]))


def test_an_unknown_level_or_format_is_a_usage_error(tmp_path: Path) -> None:
    for arguments in (["--log-level", "verbose", "textfile", "path"], ["textfile", "path", "--log-format", "xml"]):
        result = fraisier(*arguments, textfile_dir=tmp_path)
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: --log-") and ("'verbose'" in line or "'xml'" in line)


# fraisier metrics


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def get(url: str, user: str | None = None, password: str = "") -> int:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@contextmanager
def metrics_server(tmp_path: Path, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "fraisier_textfile", "metrics", "--address", "127.0.0.1", "--port", str(port),
               "--textfile-dir", str(tmp_path / "textfile"), *options]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for_log(log, "fraisier metrics: serving", process=process)  # listening from then on
            yield process, url, log
        finally:
            stop(process)


def wait_for_log(log: Path, pattern: str, count: int = 1, process: subprocess.Popen[bytes] | None = None) -> str:
    """The log once ``pattern`` occurs ``count`` times in it (the server writes it asynchronously)."""
    deadline = time.monotonic() + 20
    while True:
        text = log.read_text()
        if text.count(pattern) >= count:
            return text
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not logged {count} times; the log ends:\n{tail(log)}")
        time.sleep(0.05)


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_requests_are_logged_at_debug_with_method_path_status_duration_and_remote(
    tmp_path: Path, log_format: str
) -> None:
    with metrics_server(tmp_path, "--log-level", "debug", "--log-format", log_format) as (_, url, log):
        assert get(url) == 200
        assert get(url.replace("/metrics", "/nowhere")) == 404
        # Each request is logged once its response is sent, by the connection's own thread: the second's line
        # may be written before the first's, so both are waited for.
        deadline = time.monotonic() + 20
        while True:
            text = wait_for_log(log, "/nowhere")
            requests = [line for line in log_lines(text, log_format) if line["msg"] == "request"]
            if {"/metrics", "/nowhere"} <= {line["path"] for line in requests} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert all(line["level"] == "debug" for line in requests)
    scrape = next(line for line in requests if line["path"] == "/metrics")
    missing = next(line for line in requests if line["path"] == "/nowhere")
    assert (scrape["method"], str(scrape["status"]), scrape["remote"]) == ("GET", "200", "127.0.0.1")
    assert str(missing["status"]) == "404"
    assert float(scrape["duration_seconds"]) >= 0


def test_requests_are_not_logged_at_info(tmp_path: Path) -> None:
    with metrics_server(tmp_path) as (process, url, log):
        assert get(url) == 200
    lines = log_lines(log.read_text(), "logfmt")
    assert [line["msg"] for line in lines if line["msg"] == "request"] == []
    assert any(str(line["msg"]).startswith("fraisier metrics: serving") for line in lines)
    assert lines[-1]["msg"] == "fraisier metrics: stopped" and process.returncode == 0


def test_sighup_reloads_the_web_config_and_keeps_serving(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: {hashed('old')}\n")
    with metrics_server(tmp_path, "--web-config-file", str(config)) as (process, url, log):
        assert get(url, "prometheus", "old") == 200
        # No request between the edit and the reload: a request re-reads a changed file by itself (its identity,
        # ctime included, which no edit keeps), so the reload logged here is SIGHUP's.
        config.write_text(f"basic_auth_users:\n  prometheus: {hashed('new')}\n")
        assert "reloaded" not in log.read_text()
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, f"web config {config} reloaded")
        assert process.poll() is None
        assert get(url, "prometheus", "new") == 200
        assert get(url, "prometheus", "old") == 401
        # A reload that would turn authentication off is refused, at error level, and the server goes on.
        config.write_text("basic_auth_users:\n")
        process.send_signal(signal.SIGHUP)
        text = wait_for_log(log, "would turn authentication off")
        assert get(url) == 401
        assert get(url, "prometheus", "new") == 200
        assert process.poll() is None
    refusal = next(line for line in log_lines(text, "logfmt") if "would turn authentication off" in line["msg"])
    assert refusal["level"] == "error"
    assert process.returncode == 0


def test_sighup_without_a_web_config_keeps_serving(tmp_path: Path) -> None:
    with metrics_server(tmp_path) as (process, url, log):
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, "no --web-config-file to reload")
        assert process.poll() is None
        assert get(url) == 200


# Control characters: nothing a client or a file name holds reaches an operator's terminal raw

CONTROL_CHARACTERS = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)]))
"""C0 (NUL to US, with tab, newline and CR), DEL and C1 (CSI is U+009B): what a terminal may act on."""
INVISIBLE = "\u2028\u2029\u202e\u200b\ufeff\U000e0041"
"""Line and paragraph separators, a right-to-left override, a zero-width space, a BOM, a tag: Unicode that
moves or hides text in a terminal or an editor."""


def raw_controls(text: str) -> list[str]:
    """The control and invisible characters of ``text`` other than the newline that ends each line."""
    return [character for character in text if character != "\n" and not character.isprintable()
            and character != " "]


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_every_control_character_is_escaped_in_messages_and_values(log_format: str) -> None:
    hostile = f"a{CONTROL_CHARACTERS}b{INVISIBLE}c \x1b[2J\x1b]0;pwned\x07 é"
    text = emit(log_format, "info", hostile, path=hostile, **{f"key{hostile}": 1})
    assert raw_controls(text) == []
    [line] = log_lines(text, log_format)  # one line, however many newlines the values held
    assert line["msg"] == hostile and line["path"] == hostile  # escaped, not dropped: read back exactly
    assert "é" in text  # printable text outside ASCII stays readable


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_a_request_path_with_terminal_escapes_is_logged_escaped(tmp_path: Path, log_format: str) -> None:
    paths = [b"/\x1b[31mred\x1b[0m\x1b]0;title\x07", b"/nul\x00here", b"/c1\x9b2Jdel\x7f", b"/cr\rnel\x85here"]
    with metrics_server(tmp_path, "--log-level", "debug", "--log-format", log_format) as (_, url, log):
        port = int(url.split(":")[2].split("/")[0])
        for path in paths:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert client.recv(12) in (b"HTTP/1.1 404", b"HTTP/1.1 400"), path
        get(url.replace("/metrics", "/last"))
        text = wait_for_log(log, "/last")
    assert raw_controls(log.read_bytes().decode("utf-8")) == []
    logged = {str(line["path"]) for line in log_lines(text, log_format) if line["msg"] == "request"}
    for path in paths[:3]:  # served (404): logged with the path exactly as sent, escaped
        assert path.decode("latin-1") in logged
    # A bare CR or NEL splits the request line (str.split): http.server answers 400 and logs the line.
    assert any("/cr" in str(line["msg"]) and "400" in str(line["msg"]) for line in log_lines(text, log_format))
