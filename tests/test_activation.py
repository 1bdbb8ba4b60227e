"""Socket activation and readiness as systemd does them: the socket systemd passes (and what is refused), the
listen backlog. Serving from such a socket, end to end with systemd's tools, is tests/test_systemd.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraisier_textfile.errors import ServerStartError
from fraisier_textfile.serve.activation import listen_backlog, systemd_listening_socket


def test_variables_meant_for_another_process_are_ignored_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd_listening_socket() is None
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ
    assert systemd_listening_socket() is None


def test_descriptor_3_must_be_a_listening_stream_socket(tmp_path: Path) -> None:
    code = (
        "import os, socket\n"
        "from fraisier_textfile.serve.activation import systemd_listening_socket\n"
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


def test_the_backlog_is_the_systems_somaxconn() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listen_backlog() == min(somaxconn, 65535)
    assert listen_backlog() > 5  # socketserver's default, which drops a burst of connections
