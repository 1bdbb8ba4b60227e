"""The systemd units of contrib/systemd: ``systemd-analyze verify`` on each, and ``fraisier metrics`` started as
the socket unit starts it (a listening socket inherited as descriptor 3). Also how the server listens on its
own: with the system's backlog, so that a burst of connections is queued by the kernel, not dropped."""

from __future__ import annotations

import http.client
import os
import select
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fraisier_textfile.errors import ServerStartError
from fraisier_textfile.serve.activation import listen_backlog, systemd_listening_socket
from fraisier_textfile.serve.server import MetricsServer
from fraisier_textfile.serve.sources import TextfileSource
from fraisier_textfile.store.textfile import TextfileStore

from .processes import REPOSITORY, binary, free_port, stop, tail

UNITS = REPOSITORY / "contrib" / "systemd"
UNIT_NAMES = ["fraisier-metrics.service", "fraisier-metrics.socket", "fraisier-textfile-refresh.service",
              "fraisier-textfile-refresh.timer"]
INSTALLED_FRAISIER = "/usr/local/bin/fraisier-textfile"
TEXTFILE_DIRECTORY = "/var/lib/fraisier/textfile"


def directives(unit: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for each line of a unit, in order (keys may repeat)."""
    section, found = "", []
    for line in (UNITS / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def value(unit: str, key: str) -> str:
    [found] = [v for _, k, v in directives(unit) if k == key]
    return found


@pytest.fixture
def fraisier_script(tmp_path: Path) -> Path:
    """An executable ``fraisier`` that runs this checkout's package: what the units' ExecStart point at
    once installed (verify checks that the command exists and is executable)."""
    script = tmp_path / "bin" / "fraisier-textfile"
    script.parent.mkdir()
    # exec keeps the PID: LISTEN_PID, set for this script, is still right for the Python process.
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fraisier_textfile \"$@\"\n")
    script.chmod(0o755)
    return script


def install_units(directory: Path, fraisier_script: Path, textfile_dir: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text().replace(INSTALLED_FRAISIER, str(fraisier_script))
        if textfile_dir is not None:
            text = text.replace(TEXTFILE_DIRECTORY, str(textfile_dir))
        (directory / name).write_text(text)
    return directory


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True,
                          cwd=unit.parent)


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path, fraisier_script: Path, name: str) -> None:
    units = install_units(tmp_path / "units", fraisier_script)
    result = verify(units / name)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_would_catch_a_mistake(tmp_path: Path, fraisier_script: Path) -> None:
    units = install_units(tmp_path / "units", fraisier_script)
    service = units / "fraisier-metrics.service"
    service.write_text(service.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "Unknown key 'NoNewPrivilege'" in verify(service).stderr
    service.write_text((UNITS / "fraisier-metrics.service").read_text())  # the command not installed
    result = verify(service)
    assert result.returncode != 0 and f"Command {INSTALLED_FRAISIER} is not executable" in result.stderr


def test_the_server_unit_is_hardened_and_reloads_with_sighup() -> None:
    service = "fraisier-metrics.service"
    for key, expected in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                          ("PrivateTmp", "yes"), ("ProtectProc", "invisible"), ("Restart", "on-failure"),
                          ("ExecReload", "/bin/kill -HUP $MAINPID"), ("TemporaryFileSystem", "/var/lib:ro"),
                          ("BindReadOnlyPaths", TEXTFILE_DIRECTORY), ("CapabilityBoundingSet", ""),
                          # Room for --max-connections (512) and the descriptors each may need, with room to raise it.
                          ("LimitNOFILE", "8192")]:
        assert value(service, key) == expected, key
    assert f"--textfile-dir {TEXTFILE_DIRECTORY}" in value(service, "ExecStart")
    assert [k for _, k, _ in directives(service) if k.startswith("ReadWrite")] == []  # it writes nothing
    refresh = "fraisier-textfile-refresh.service"
    assert value(refresh, "ReadWritePaths") == TEXTFILE_DIRECTORY
    assert value(refresh, "ProtectSystem") == "strict" and value(refresh, "Type") == "oneshot"
    assert value(refresh, "ExecStart").endswith(f"--textfile-dir {TEXTFILE_DIRECTORY} textfile refresh")
    assert value("fraisier-metrics.socket", "Accept") == "no"
    assert value("fraisier-textfile-refresh.timer", "OnUnitActiveSec") == "1min"


# Socket activation

ACTIVATE = """
import os, sys
descriptor = int(sys.argv[1])
if descriptor != 3:
    os.dup2(descriptor, 3)
    os.close(descriptor)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""
"""What systemd does for a .socket unit with Accept=no: the listening socket as descriptor 3, LISTEN_FDS=1,
LISTEN_PID the PID of the process that runs ExecStart (execv keeps it)."""


def exec_start(unit: str, fraisier_script: Path, textfile_dir: Path) -> list[str]:
    command = value(unit, "ExecStart").replace(INSTALLED_FRAISIER, str(fraisier_script))
    return shlex.split(command.replace(TEXTFILE_DIRECTORY, str(textfile_dir)))


@contextmanager
def socket_activated(command: list[str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    port = listening.getsockname()[1]
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(listening.fileno()), *command],
                                   pass_fds=[listening.fileno()], stdout=output, stderr=subprocess.STDOUT)
    listening.close()  # the child holds it now: a connection that succeeds from here on is served by the child
    try:
        yield process, port
    finally:
        stop(process)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=20) as response:
        return int(response.status), response.read().decode()


def test_fraisier_metrics_serves_from_the_socket_systemd_passes(tmp_path: Path, fraisier_script: Path) -> None:
    textfile_dir = tmp_path / "textfile"
    assert subprocess.run([str(fraisier_script), "--textfile-dir", str(textfile_dir), "record", "deployment",
                           "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
                           "--duration", "4"], check=False).returncode == 0
    command = exec_start("fraisier-metrics.service", fraisier_script, textfile_dir)
    assert command[command.index("--port") + 1] == "8001"  # not where it serves: the inherited socket wins
    log = tmp_path / "server.log"
    with socket_activated(command, log) as (process, port):
        # The kernel queues connections on the inherited socket from the start: no retry loop is needed.
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, tail(log)
        assert 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1' in body
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
        assert process.poll() is None
    text = log.read_text()
    assert f"on http://127.0.0.1:{port}/metrics (socket from systemd" in text, text
    assert process.returncode == 0


def test_systemd_socket_activate_starts_it_too(tmp_path: Path, fraisier_script: Path) -> None:
    activate = binary("systemd-socket-activate")
    port = free_port()
    log = tmp_path / "server.log"
    command = [activate, "--listen", f"127.0.0.1:{port}", str(fraisier_script), "--textfile-dir",
               str(tmp_path / "textfile"), "metrics"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Listening on" not in log.read_text():  # systemd-socket-activate says so once it listens
            assert process.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.05)
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "# TYPE fraisier_deployments_total counter" in body
    finally:
        stop(process)
    assert "socket from systemd" in log.read_text()


def test_variables_meant_for_another_process_are_ignored_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd_listening_socket() is None
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ
    assert systemd_listening_socket() is None


def test_descriptor_3_must_be_a_listening_stream_socket(tmp_path: Path) -> None:
    code = (
        "import os, socket\n"
        "from fraisier_textfile.serve.server import systemd_listening_socket\n"
        "from fraisier_textfile.errors import ServerStartError\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); os.dup2(s.fileno(), 3)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "try:\n    systemd_listening_socket()\nexcept ServerStartError as error:\n    print(error)\n"
        "os.environ.update(LISTEN_FDS='2', LISTEN_PID=str(os.getpid()))\n"
        "try:\n    systemd_listening_socket()\nexcept ServerStartError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [
        "descriptor 3 is not a listening stream socket: use ListenStream= (not ListenDatagram= or Accept=yes) in "
        "the .socket unit",
        "systemd passed 2 sockets; fraisier metrics serves one: give its .socket unit one ListenStream=",
    ]
    assert issubclass(ServerStartError, Exception)


# The listen backlog


def test_the_backlog_is_the_systems_somaxconn() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listen_backlog() == min(somaxconn, 65535)
    assert listen_backlog() > 5  # socketserver's default, which drops a burst of connections


def test_a_burst_of_connections_is_queued_by_the_kernel_before_any_is_accepted(tmp_path: Path) -> None:
    """With Python's default backlog of 5, the kernel would complete only about 6 handshakes while nobody
    accepts; the other SYNs are dropped and those clients retry a second later. With somaxconn, every one of
    the burst completes at once, and each is then served."""
    burst = 64
    server = MetricsServer(TextfileSource(TextfileStore(tmp_path / "textfile")), port=0, address="127.0.0.1")
    clients: list[socket.socket] = []
    try:
        assert server.backlog >= burst
        for _ in range(burst):  # not serving yet: nothing accepts, only the kernel's accept queue holds them
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            assert client.connect_ex(("127.0.0.1", server.port)) in (0, 115)  # 115: EINPROGRESS
            clients.append(client)
        for client in clients:
            # A completed handshake makes the socket writable. A SYN dropped for a full queue would be retried
            # by the client, and never answered while nothing accepts: the timeout only bounds that failure.
            assert select.select([], [client], [], 30)[1] == [client]
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        established = [tcp_state(client) for client in clients]
        assert established == ["ESTABLISHED"] * burst
        server.start()
        for client in clients:
            client.setblocking(True)
            client.settimeout(30)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for client in clients:
            assert client.recv(12) == b"HTTP/1.1 200"
    finally:
        for client in clients:
            client.close()
        server.shutdown()


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 7: "CLOSE"}


def tcp_state(client: socket.socket) -> str:
    """The connection's state as the kernel reports it (struct tcp_info's first byte)."""
    state = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return TCP_STATES.get(state, str(state))


# Socket activation on a Unix stream socket (ListenStream=/run/fraisier-metrics.sock, or @name: abstract)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket: what ``curl --unix-socket`` does."""

    def __init__(self, address: str | bytes) -> None:
        super().__init__("localhost", timeout=20)
        self.unix_address = address

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_address)


def get_over_unix(address: str | bytes, path: str = "/metrics") -> tuple[int, str]:
    connection = UnixHTTPConnection(address)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def unix_socket_activated(address: str | bytes, command: list[str],
                          log: Path) -> Iterator[subprocess.Popen[bytes]]:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(address)
    listening.listen(128)
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(listening.fileno()), *command],
                                   pass_fds=[listening.fileno()], stdout=output, stderr=subprocess.STDOUT)
    listening.close()
    try:
        yield process
    finally:
        stop(process)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_fraisier_metrics_serves_a_unix_socket_systemd_passes_and_says_where(
    tmp_path: Path, fraisier_script: Path, kind: str
) -> None:
    textfile_dir = tmp_path / "textfile"
    assert subprocess.run([str(fraisier_script), "--textfile-dir", str(textfile_dir), "record", "deployment",
                           "--provider", "bare_metal", "--fraise-type", "api", "--status", "success",
                           "--duration", "4"], check=False).returncode == 0
    if kind == "path":
        address: str | bytes = str(tmp_path / "fraisier-metrics.sock")
        shown = f"unix socket {address}"
    else:
        name = f"fraisier-metrics-test-{os.getpid()}-{time.monotonic_ns()}"
        address = b"\0" + name.encode()
        shown = f"unix socket @{name}"
    command = [*exec_start("fraisier-metrics.service", fraisier_script, textfile_dir), "--log-level", "debug"]
    log = tmp_path / "server.log"
    with unix_socket_activated(address, command, log) as process:
        status, body = get_over_unix(address)
        assert status == 200, tail(log)
        assert 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1' in body
        assert get_over_unix(address, "/")[0] == 200
        assert get_over_unix(address, "/nowhere")[0] == 404
        assert process.poll() is None
    text = log.read_text()
    assert f"fraisier metrics: serving {textfile_dir / 'fraisier.prom'} on {shown} (socket from systemd" in text, text
    assert "Traceback" not in text and process.returncode == 0
    # Each request is logged with who asked: a Unix socket's peer is a process and a user, not an address.
    assert 'remote="unix:pid=' in text and f"uid={os.getuid()}" in text, text


def test_systemd_socket_activate_on_a_unix_path_starts_it_too(tmp_path: Path, fraisier_script: Path) -> None:
    activate = binary("systemd-socket-activate")
    address = str(tmp_path / "metrics.sock")
    log = tmp_path / "server.log"
    command = [activate, "--listen", address, str(fraisier_script), "--textfile-dir", str(tmp_path / "textfile"),
               "metrics"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Listening on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.05)
        status, body = get_over_unix(address)
        assert status == 200 and "# TYPE fraisier_deployments_total counter" in body
    finally:
        stop(process)
    assert f"on unix socket {address} (socket from systemd" in log.read_text()
