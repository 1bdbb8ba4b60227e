"""Connections that hold a server's descriptors and send nothing useful, as slowloris does: run as a process,
``python -m tests.slowloris --duration S --target plain:127.0.0.1:PORT:N --target tls:127.0.0.1:PORT:N``.

For each target, N connections to loopback, half idle (connected, silent) and half trickling (one byte of a
request that never ends every period: an HTTP header, or a TLS ClientHello for ``tls`` targets). Every
period, connections the server closed are opened again, so the pressure stays at N. It stops by itself after
``--duration`` seconds and prints what it saw as one JSON line: connections opened, closed by the server,
and the most that were established at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

PLAIN_START = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
# A TLS record header announcing a 512-byte handshake message, then the start of a ClientHello: the server's
# TLS library waits for the rest.
TLS_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@dataclass
class Target:
    kind: str
    host: str
    port: int
    count: int
    opened: int = 0
    closed_by_server: int = 0
    most_established: int = 0
    refused: int = 0
    sockets: dict[socket.socket, int] = field(default_factory=dict)
    """Each open connection, with how many bytes it has trickled."""

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, host, port, count = text.split(":")
        if kind not in ("plain", "tls"):
            raise SystemExit(f"--target {text}: the kind is plain or tls")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise SystemExit(f"--target {text}: loopback only")
        return cls(kind, host, int(port), int(count))


def open_missing(target: Target, selector: selectors.BaseSelector) -> None:
    while len(target.sockets) < target.count:
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connection.setblocking(False)
        result = connection.connect_ex((target.host, target.port))
        if result not in (0, errno.EINPROGRESS):
            connection.close()
            target.refused += 1
            return
        target.sockets[connection] = 0
        target.opened += 1
        selector.register(connection, selectors.EVENT_READ, target)


def trickle(target: Target, selector: selectors.BaseSelector) -> None:
    """One more byte on every other connection (the others stay idle)."""
    start = TLS_START if target.kind == "tls" else PLAIN_START
    for number, (connection, sent) in enumerate(list(target.sockets.items())):
        if number % 2:
            continue
        piece = start[sent:sent + 1] if sent < len(start) else b"a"
        try:
            connection.send(piece)
            target.sockets[connection] = sent + 1
        except BlockingIOError:
            pass  # not connected yet
        except OSError:
            drop(target, connection, selector)


def drop(target: Target, connection: socket.socket, selector: selectors.BaseSelector) -> None:
    if connection in target.sockets:
        del target.sockets[connection]
        target.closed_by_server += 1
        selector.unregister(connection)
        connection.close()


def established(target: Target) -> int:
    count = 0
    for connection in target.sockets:
        state = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        count += state == 1  # TCP_ESTABLISHED
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", action="append", required=True, type=Target.parse)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--period", type=float, default=1.0)
    arguments = parser.parse_args()
    targets: list[Target] = arguments.target
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sum(target.count for target in targets) + 64
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    next_round = started
    while time.monotonic() - started < arguments.duration:
        now = time.monotonic()
        if now >= next_round:
            for target in targets:
                open_missing(target, selector)
                trickle(target, selector)
                target.most_established = max(target.most_established, established(target))
            print(json.dumps({"round": [len(target.sockets) for target in targets]}), flush=True)
            next_round = now + arguments.period
        for key, _ in selector.select(timeout=max(0.0, next_round - time.monotonic())):
            connection = key.fileobj
            assert isinstance(connection, socket.socket)
            try:
                data = connection.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed by the server (an answer to a trickled request would also end it)
                drop(key.data, connection, selector)
    report = [{"kind": target.kind, "port": target.port, "opened": target.opened,
               "closed_by_server": target.closed_by_server, "most_established": target.most_established,
               "refused": target.refused} for target in targets]
    print(json.dumps({"report": report}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
