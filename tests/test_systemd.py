"""The systemd units of contrib/systemd: ``systemd-analyze verify`` on each, and ``fraisier metrics`` started as
the socket unit starts it (a listening socket inherited as descriptor 3). Also how the server listens on its
own: with the system's backlog, so that a burst of connections is queued by the kernel, not dropped."""

from __future__ import annotations

import http.client
import os
import pwd
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
from click.testing import CliRunner

from fraisier_textfile import TextfileStore
from fraisier_textfile.cli import systemd as units
from fraisier_textfile.cli.group import main
from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.serve.server import MetricsServer
from fraisier_textfile.serve.sources import TextfileSource

from .installs import build_wheel, directory_the_units_can_see, install
from .processes import REPOSITORY, binary, free_port, http_get, stop, tail, wait_until_serving

UNITS = REPOSITORY / "contrib" / "systemd"
UNIT_NAMES = ["fraisier-metrics.service", "fraisier-metrics.socket", "fraisier-textfile-refresh.service",
              "fraisier-textfile-refresh.timer"]
INSTALLED_FRAISIER = "/opt/fraisier-textfile/bin/fraisier-textfile"
TEXTFILE_DIRECTORY = "/var/lib/fraisier/textfile"
# The recommended layout's interpreter: Debian's, outside every directory the units hide (.ci/run installs it).
DEBIAN_PYTHON = "/usr/bin/python3"
DEPLOYER = "fraisier-units-test"


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


# The listen backlog


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
        shown = f"unix socket {address}"  # type: ignore[str-bytes-safe]
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


# `fraisier-textfile systemd`: the units written for this host's installation


def test_the_reference_units_hold_every_value_the_command_replaces() -> None:
    """contrib/systemd is written for the recommended layout; the command replaces those values. A unit edited
    to name another path would keep it in every host's copy: caught here."""
    for name in units.UNIT_NAMES:
        text = (UNITS / name).read_text()
        if name.endswith(".service"):
            executable, directory = units.REFERENCE_EXECUTABLE, units.REFERENCE_TEXTFILE_DIRECTORY
            assert f"ExecStart={executable} --textfile-dir {directory} " in text
            assert f"\nUser={units.REFERENCE_USER}\n" in text
    assert f"\nListenStream={units.REFERENCE_ADDRESS}:{units.REFERENCE_PORT}\n" in (UNITS / UNIT_NAMES[1]).read_text()
    rendered = units.render_units("/srv/x/bin/fraisier-textfile", "builder", "/srv/metrics", "0.0.0.0", 9101)
    for name, text in rendered.items():
        for reference in (units.REFERENCE_EXECUTABLE, units.REFERENCE_TEXTFILE_DIRECTORY, "User=deploy", ":8001",
                          "--port 8001"):
            assert reference not in text, (name, reference)
    assert "ListenStream=0.0.0.0:9101" in rendered["fraisier-metrics.socket"]
    assert "--address 0.0.0.0 --port 9101" in rendered["fraisier-metrics.service"]
    assert "BindReadOnlyPaths=/srv/metrics\n" in rendered["fraisier-metrics.service"]
    assert "ReadWritePaths=/srv/metrics\n" in rendered["fraisier-textfile-refresh.service"]


def test_the_installed_package_carries_the_units() -> None:
    assert units.reference_units() == {name: (UNITS / name).read_text() for name in units.UNIT_NAMES}


@pytest.mark.parametrize(("directory", "hidden", "directive"), [
    ("/home/deploy/textfile", "/home", "ProtectHome=yes"),
    ("/root/.local/state/fraisier/textfile", "/root", "ProtectHome=yes"),
    ("/tmp/textfile", "/tmp", "PrivateTmp=yes"),
    ("/var/tmp/textfile", "/var/tmp", "PrivateTmp=yes"),
])
def test_a_textfile_directory_the_services_cannot_see_is_refused(directory: str, hidden: str, directive: str) -> None:
    with pytest.raises(InvalidValueError) as refused:
        units.check_textfile_directory(Path(directory), "deploy")
    message = str(refused.value)
    assert f"--textfile-dir {directory} is under {hidden}, which the units' {directive} hides" in message
    fix = "use /var/lib/fraisier/textfile (install -d -o deploy -g deploy -m 0755 /var/lib/fraisier/textfile)"
    assert fix in message


def test_a_textfile_directory_with_a_blank_or_a_percent_is_refused(tmp_path: Path) -> None:
    for name in ("with blank", "with%percent"):
        with pytest.raises(InvalidValueError, match="cannot be written into a unit as is"):
            units.check_textfile_directory(Path("/srv") / name, "deploy")


@pytest.mark.parametrize("path", ["/home/ci/.venv/bin/python", "/root/.pyenv/versions/3.11.7/bin/python3.11",
                                  "/tmp/venv/bin/fraisier-textfile", "/var/lib/venv/lib/python3.11/site-packages"])
def test_an_installation_the_services_cannot_see_is_refused(path: str) -> None:
    installation = units.Installation(Path("/opt/fraisier-textfile/bin/fraisier-textfile"),
                                      (Path("/opt/fraisier-textfile/bin/fraisier-textfile"), Path(path)))
    with pytest.raises(InvalidValueError) as refused:
        units.check_installation(installation)
    assert str(refused.value).startswith(f"{path} is under /")
    assert "Install into a venv under /opt/fraisier-textfile made by the system's python3" in str(refused.value)


def test_bad_arguments_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    output = tmp_path / "units"
    output.mkdir()
    for arguments, expected in [
        (["--user", "no such user"], "--user 'no such user' is not a user name"),
        (["--user", "nosuchuser-fraisier"], "--user nosuchuser-fraisier: no such user on this host"),
        (["--user", "nobody"], "--user nobody: systemd refuses to call a service of user nobody safe"),
    ]:
        result = CliRunner().invoke(main, ["systemd", *arguments, "--output", str(output)], prog_name="fraisier")
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"Error: {expected}" + result.output.split(expected, 1)[1].rstrip()]
    assert list(output.iterdir()) == []


def test_units_already_there_with_other_content_are_kept_byte_for_byte(tmp_path: Path) -> None:
    rendered = units.render_units("/opt/v/bin/fraisier-textfile", "deploy", "/var/lib/fraisier/textfile")
    (tmp_path / "fraisier-metrics.service").write_text("# edited by the operator\n")
    with pytest.raises(InvalidValueError, match="exists with other content"):
        units.write_units(tmp_path, rendered, force=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fraisier-metrics.service"]
    assert (tmp_path / "fraisier-metrics.service").read_text() == "# edited by the operator\n"
    written = units.write_units(tmp_path, rendered, force=True)
    assert {path.name: path.read_text() for path in written} == rendered
    assert {oct(path.stat().st_mode & 0o777) for path in written} == {"0o644"}
    assert units.write_units(tmp_path, rendered, force=False) == written  # the same units again: no refusal
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(rendered)  # no temporary file left


def test_a_textfile_directory_the_user_cannot_write_is_refused() -> None:
    with directory_the_units_can_see() as place:
        directory = place / "textfile"
        directory.mkdir(mode=0o755)
        os.chown(directory, 0, 0)
        with pytest.raises(InvalidValueError) as refused:
            units.check_textfile_directory(directory, "nobody")
        assert str(refused.value) == (
            f"--textfile-dir {directory} belongs to root and nobody cannot write it (the refresh service runs as "
            f"nobody): chown nobody {directory}, or give the user that owns it")
        directory.chmod(0o777)
        assert units.check_textfile_directory(directory, "nobody") == directory


@pytest.fixture(scope="module")
def deployer() -> Iterator[pwd.struct_passwd]:
    """A deploying user of its own, as on a real host (systemd refuses to call a service of `nobody` safe)."""
    if os.geteuid() != 0:
        message = "these tests create a user: run them as root (CI does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    created = False
    try:
        pwd.getpwnam(DEPLOYER)
    except KeyError:
        subprocess.run([binary("useradd"), "--system", "--no-create-home", "--user-group", "--shell", "/bin/false",
                        DEPLOYER], check=True)
        created = True
    try:
        yield pwd.getpwnam(DEPLOYER)
    finally:
        if created:
            subprocess.run([binary("userdel"), DEPLOYER], check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_an_installation_under_tmp_is_refused_with_the_fix(tmp_path: Path, wheel: Path,
                                                            deployer: pwd.struct_passwd) -> None:
    installation = install(wheel, tmp_path / "venv", base=DEBIAN_PYTHON, running_packages=False)
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    output = tmp_path / "units"
    output.mkdir()
    result = installation.run(installation.script("fraisier-textfile"), "systemd", "--user", DEPLOYER,
                              "--textfile-dir", str(textfile_dir), "--output", str(output), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {tmp_path}/venv/bin/fraisier-textfile is under /tmp, which the units' "
                           f"PrivateTmp=yes hides from the services")
    assert "python3 -m venv /opt/fraisier-textfile" in line
    assert list(output.iterdir()) == []


@pytest.mark.slow
def test_units_written_for_an_installation_under_opt_verify_and_serve(tmp_path: Path, wheel: Path,
                                                                      deployer: pwd.struct_passwd) -> None:
    """The recommended layout for real: Debian's python3 makes a venv under /opt, the package is installed in it,
    its `fraisier-textfile systemd` writes the units; systemd-analyze verifies them (it checks that ExecStart's
    program exists), and the service's ExecStart runs as the unit runs it (its user, systemd's environment, no
    PYTHONPATH) and is scraped."""
    with directory_the_units_can_see() as place:
        installation = install(wheel, place / "venv", base=DEBIAN_PYTHON, running_packages=False)
        textfile_dir = place / "textfile"
        textfile_dir.mkdir()
        os.chown(textfile_dir, deployer.pw_uid, deployer.pw_gid)
        output = place / "units"
        output.mkdir()
        port = free_port()
        # Run by the deploying user rather than root: one line, nothing written.
        as_deployer = [binary("setpriv"), "--reuid", DEPLOYER, "--regid", str(deployer.pw_gid), "--clear-groups"]
        refused = installation.run(*as_deployer, installation.script("fraisier-textfile"), "systemd", "--user",
                                   DEPLOYER, "--textfile-dir", str(textfile_dir), "--output", str(output), cwd=place)
        assert refused.returncode == 2
        assert refused.stderr.startswith(f"Error: cannot write {output}/fraisier-metrics.service: Permission denied "
                                         "(run as root for /etc/systemd/system, or give --output DIR)")
        assert len(refused.stderr.splitlines()) == 1 and list(output.iterdir()) == []
        result = installation.run(installation.script("fraisier-textfile"), "systemd", "--user", DEPLOYER,
                                  "--textfile-dir", str(textfile_dir), "--output", str(output), "--port", str(port),
                                  cwd=place)
        assert result.returncode == 0, result.stderr
        assert [line.removeprefix("wrote ") for line in result.stdout.splitlines()[:4]] == [
            str(output / name) for name in units.UNIT_NAMES]
        for name in units.UNIT_NAMES:
            checked = verify(output / name)
            assert (checked.returncode, checked.stderr) == (0, ""), name
        service = (output / "fraisier-metrics.service").read_text()
        assert f"ExecStart={installation.script('fraisier-textfile')} --textfile-dir {textfile_dir} " in service
        assert f"\nUser={DEPLOYER}\n" in service and f"BindReadOnlyPaths={textfile_dir}\n" in service

        def as_the_unit_runs(unit: str) -> list[str]:
            [line] = [line for line in (output / unit).read_text().splitlines() if line.startswith("ExecStart=")]
            return [binary("setpriv"), "--reuid", DEPLOYER, "--regid", str(deployer.pw_gid), "--clear-groups",
                    *shlex.split(line.removeprefix("ExecStart="))]

        # systemd's environment for a system service: no PYTHONPATH, no virtualenv, the user's identity.
        environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                       "USER": DEPLOYER, "LOGNAME": DEPLOYER, "HOME": deployer.pw_dir, "SHELL": deployer.pw_shell}
        refresh = subprocess.run(as_the_unit_runs("fraisier-textfile-refresh.service"), env=environment, cwd="/",
                                 capture_output=True, text=True, timeout=120)
        assert refresh.returncode == 0, refresh.stderr
        assert (textfile_dir / "fraisier.prom").exists()
        record = subprocess.run([*as_the_unit_runs("fraisier-textfile-refresh.service")[:6],
                                 str(installation.script("fraisier-textfile")), "--textfile-dir", str(textfile_dir),
                                 "record", "deployment", "--provider", "bare_metal", "--fraise-type", "api",
                                 "--status", "success", "--duration", "3"], env=environment, cwd="/",
                                capture_output=True, text=True, timeout=120)
        assert record.returncode == 0, record.stderr
        log = tmp_path / "server.log"
        url = f"http://127.0.0.1:{port}/metrics"
        with open(log, "wb") as server_output:
            server = subprocess.Popen(as_the_unit_runs("fraisier-metrics.service"), env=environment, cwd="/",
                                      stdout=server_output, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(url, server)
            assert 'fraisier_deployments_total{provider="bare_metal",status="success",fraise_type="api"} 1' in (
                http_get(url))
        finally:
            stop(server)
        assert f"serving {textfile_dir}/fraisier.prom on http://127.0.0.1:{port}/metrics" in log.read_text()


@pytest.mark.parametrize("address", ["localhost", "example.net", "127.0.0.1:80", ""])
def test_an_address_that_is_not_an_ip_address_is_refused(address: str) -> None:
    with pytest.raises(InvalidValueError, match="is not an IP address \\(a .socket unit listens on one\\)"):
        units.check_address(address)


def test_an_ipv6_address_is_bracketed_in_the_socket_only() -> None:
    rendered = units.render_units("/opt/v/bin/fraisier-textfile", "deploy", "/var/lib/fraisier/textfile", "::1", 9101)
    assert "ListenStream=[::1]:9101\n" in rendered["fraisier-metrics.socket"]
    assert "--address ::1 --port 9101" in rendered["fraisier-metrics.service"]
    units.check_address("::")


def test_units_this_hosts_systemd_would_refuse_are_refused_before_any_is_written(fraisier_script: Path) -> None:
    binary("systemd-analyze")
    rendered = units.render_units(str(fraisier_script), "root", "/var/lib/fraisier/textfile")
    assert units.verify_units(rendered) is True
    rendered["fraisier-metrics.service"] = rendered["fraisier-metrics.service"].replace("NoNewPrivileges=",
                                                                                        "NoNewPrivilege=")
    with pytest.raises(InvalidValueError) as refused:
        units.verify_units(rendered)
    assert str(refused.value).startswith("systemd-analyze verify finds a problem in the units for this host: "
                                         "fraisier-metrics.service:")
    assert "Unknown key 'NoNewPrivilege'" in str(refused.value)
