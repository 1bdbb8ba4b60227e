"""The HTTP exporter: ``/metrics`` from the textfile (``fraisier metrics``) or from a recorder's registry.

One server, two sources of bytes. The textfile source never takes the store's lock: the file is only ever
replaced whole by a rename, so a reader sees the old file or the new one. It parses the file only when its
version changed (see textfile.FileVersion), and otherwise serves bytes encoded once (gzipped at most once). The
active-deployments family is the exception: it is recomputed at every scrape from the in-flight markers, so
that a deployment whose process died stops counting at once, not at the next flush.

Served: ``/metrics`` (GET and HEAD, gzip when asked), a landing page at ``/``, 404 elsewhere; TLS and basic
auth from an exporter-toolkit web config (see ``webconfig``); over TCP or a Unix socket from systemd.

Clients that hold connections and send nothing cannot lock Prometheus out (see _ConnectionTable): one loop
accepts, does TLS handshakes and reads first requests for every connection at once, a thread serves a
connection only once its request is in, at most ``max_connections`` are held, and a request that has not
arrived in full by its deadline is cut off, however slowly it trickles.
"""

from __future__ import annotations

import errno
import gzip
import html
import io
import logging
import os
import resource
import selectors
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from fraisier_textfile import catalogue as c
from fraisier_textfile.changes import Changes
from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    LockTimeoutError,
    ServerStartError,
    TextfileError,
    UnexpectedFileError,
)
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.serve.webconfig import LiveWebConfig
from fraisier_textfile.store import inflight
from fraisier_textfile.store.files import FileVersion
from fraisier_textfile.store.inflight import count_active_deployments
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001
DEFAULT_MAX_REQUESTS = 0  # no limit: a burst of scrapes from many clients is served, not refused
DEFAULT_ADDRESS = "localhost"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The most connections held at once, as Prometheus's own --web.max-connections.
DEFAULT_MAX_CONNECTIONS = 512
# A new connection's TLS handshake, request line and headers must all have arrived this many seconds after
# it was accepted (Go's ReadHeaderTimeout, with the handshake in it): a scraper sends its request at once.
REQUEST_TIMEOUT = 10.0
# A kept-alive connection's next request must have arrived in full this many seconds after the last response
# (Prometheus scrapes every 15 s by default and keeps its connection); also the socket timeout of each read
# and write.
CONNECTION_TIMEOUT = 30.0
# After a merge at a scrape failed (a read-only directory, a full disk), scrapes serve the file as it is for
# this many seconds before a scrape merges again.
NEWS_RETRY_SECONDS = 5.0
# Descriptors kept out of the connections' share: the textfile, the markers' directory, the log, Python's own.
RESERVED_DESCRIPTORS = 32
EXPIRY_CHECK_INTERVAL = 0.1
ACCEPTS_PER_WAKE = 64
READ_SIZE = 65536
# http.server reads a line of at most 64 KiB; a head beyond this is handed to it to refuse (414, 431).
MAX_REQUEST_HEAD = 65536 + 1024
LIMIT_WARNING_INTERVAL = 60.0
# Bodies are gzipped once per version of the file, so the better ratio costs nothing per scrape.
GZIP_LEVEL = 6



class Payload:
    """An encoded ``/metrics`` body; its gzipped form is made on first demand and kept."""

    __slots__ = ("_gzipped", "plain")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:  # two threads may both compress once; either result is right
            self._gzipped = gzip.compress(self.plain, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped


class MetricsSource(Protocol):
    """Where ``/metrics`` bodies come from."""

    def describe(self) -> str: ...

    def scrape(self) -> Payload:
        """The body to serve now. Raises FraisierTextfileError when there is nothing valid to serve."""
        ...


class RegistrySource:
    """A prometheus_client registry, encoded at each scrape (an in-process registry is small)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import generate_latest

        self.registry = registry
        self._generate_latest = generate_latest

    def describe(self) -> str:
        return "this process's metrics registry"

    def scrape(self) -> Payload:
        return Payload(self._generate_latest(_WithoutCreated(self.registry)))


class _WithoutCreated:
    """A registry's families without their ``_created`` samples: creation times are per process and say
    nothing to a scraper, and the textfile never has them. prometheus_client can only turn them off for
    the whole process, which would change the behaviour of the host application's own metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            family.samples = [sample for sample in family.samples if not sample.name.endswith("_created")]
            yield family


@dataclass
class _Snapshot:
    """One version of the textfile, encoded around its active-deployments block."""

    version: FileVersion | None
    """The file version it was made from, held open; None: there was no file."""
    before: bytes = b""
    after: bytes = b""
    active_lines: tuple[str, ...] = ()
    """The file's active-deployments samples: which providers it knows, in its order."""
    retired_markers: frozenset[str] = frozenset()
    error: FraisierTextfileError | None = None
    last: tuple[str, Payload] | None = None
    """The last body served from this version, with the live block it holds."""


class TextfileSource:
    """``<directory>/fraisier.prom``, served as a scrape of it by node_exporter would show it, with the
    active deployments counted live, and every catalogue family present (without samples if the file has
    none, or does not exist yet)."""

    def __init__(self, store: TextfileStore) -> None:
        self.store = store
        self._snapshot: _Snapshot | None = None
        self._refreshing = threading.Lock()
        self._taking_news = threading.Lock()
        self._news_retry_at = 0.0

    def describe(self) -> str:
        return str(self.store.path)

    def scrape(self) -> Payload:
        if self.store.sources:
            self._take_news()
        snapshot = self._snapshot
        if snapshot is None or not self._is_current(snapshot):
            snapshot = self._refresh()
        if snapshot.error is not None:
            raise snapshot.error
        live = self._live_block(snapshot)
        last = snapshot.last
        if last is not None and last[0] == live:
            return last[1]
        payload = Payload(snapshot.before + live.encode("utf-8") + snapshot.after)
        snapshot.last = (live, payload)
        return payload

    def _take_news(self) -> None:
        """Merge what the store's sources (Fraisier's state database) hold that is new, so that a deployment
        Fraisier finished is in this scrape. A source says cheaply whether anything changed; only then is the
        file merged, without waiting for its lock (busy: the next scrape, or its holder, takes it). One scrape
        merges at a time; the others serve the file as it is. Never fails a scrape."""
        if time.monotonic() < self._news_retry_at:
            return
        if not any(getattr(source, "has_news", lambda: True)() for source in self.store.sources):
            return
        if not self._taking_news.acquire(blocking=False):
            return
        try:
            self.store.merge(Changes(), timeout=0)
        except LockTimeoutError:
            pass  # another process is merging: the next scrape tries again
        except FraisierTextfileError as error:
            # A directory this server may only read (systemd's BindReadOnlyPaths) fails every merge: the
            # refresh timer takes Fraisier's state there, and scrapes do not try again at once.
            self._news_retry_at = time.monotonic() + NEWS_RETRY_SECONDS
            log.debug("Fraisier's state not merged at this scrape: %s", error)
        finally:
            self._taking_news.release()

    def _is_current(self, snapshot: _Snapshot) -> bool:
        if snapshot.version is None:
            return not os.path.lexists(self.store.path)
        return snapshot.version.is_current()

    def _refresh(self) -> _Snapshot:
        # Only scrapes that found the file changed wait here, for the one that parses it.
        with self._refreshing:
            current = self._snapshot
            if current is not None and self._is_current(current):
                return current
            # A file that cannot be read (permissions, descriptors exhausted) is not cached: the next
            # scrape tries again. One that does not parse is, until it changes.
            try:
                version, data = self.store.read_data()
            except FraisierTextfileError as error:
                raise _unservable(self.store, error) from None
            try:
                snapshot = _split(version, self.store.parse_data(data, check_histograms=False))  # served as written
            except FraisierTextfileError as error:
                snapshot = _Snapshot(version, error=_unservable(self.store, error))
            if current is not None and current.version is not None:
                current.version.close()
            self._snapshot = snapshot
            return snapshot

    def _live_block(self, snapshot: _Snapshot) -> str:
        family = c.ACTIVE_DEPLOYMENTS
        block = Block(family.name, help=family.help, type=family.kind.value, owned=family)
        block.lines = list(snapshot.active_lines)
        try:
            active = self.store.active_deployments(snapshot.retired_markers)
        except FraisierTextfileError as error:
            raise _unservable(self.store, error) from None
        count_active_deployments(block, active, c.ACTIVE_DEPLOYMENTS)
        return block.render()


def _unservable(store: TextfileStore, error: FraisierTextfileError) -> TextfileError:
    """The error a scrape answers (500) when the file cannot be served: logged in full here, but its message,
    which goes to any client, is fixed text naming our path and the kind of problem. Nothing read from the
    file (a corrupt line, or another file's first bytes) ever reaches the response."""
    log.error("cannot serve %s: %s", store.path, error)
    path = error.path if isinstance(error, TextfileError) else store.path
    while path.parent != store.directory and path != path.parent:
        path = path.parent  # one of the store's own paths, never a name found in a directory it lists
    if path.parent != store.directory:
        path = store.path
    if isinstance(error, CorruptTextfileError):
        problem = "it does not parse or disagrees with the catalogue; fraisier textfile check shows why"
    elif isinstance(error, UnexpectedFileError):
        problem = "something other than what fraisier writes is there (a symlink, FIFO, device or directory)"
    else:
        problem = "it cannot be read"
    return TextfileError(path, f"cannot serve {path}: {problem}; the server's log has the details")


def _split(version: FileVersion | None, document: Document) -> _Snapshot:
    for family in c.FAMILIES:
        document.block(family)
    blocks = list(document.blocks.values())
    position = next(n for n, block in enumerate(blocks) if block.name == c.ACTIVE_DEPLOYMENTS.name)
    active = blocks[position]
    # The retired-markers comment is the store's bookkeeping, not a metric: it is not served.
    return _Snapshot(
        version,
        before=b"".join(part for block in blocks[:position] for part in block.parts()),
        after=b"".join(part for block in blocks[position + 1 :] for part in block.parts()),
        active_lines=tuple(active.lines),
        retired_markers=inflight.RETIRED_MARKERS.get(document),
    )


# HTTP

LANDING_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Fraisier metrics</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1d1d1d; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ padding: 0.3em 0.5em; border-bottom: 1px solid #ddd; white-space: nowrap; }}
th {{ text-align: left; background: #f3f3f3; white-space: normal; vertical-align: bottom; font-size: 0.8em; }}
th.number, td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.provider td {{ font-weight: 600; border-top: 2px solid #bbb; }}
td.text {{ white-space: normal; overflow-wrap: anywhere; min-width: 6em; }}
td.down {{ background: #c62828; color: #fff; font-weight: 700; }}
.note {{ color: #555; font-size: 0.85em; }}
</style>
</head>
<body>
<h1>Fraisier metrics</h1>
<p>Fraisier's deployment metrics, for Prometheus, from {source}.</p>
<p><a href="metrics">Metrics</a></p>
<h2>Deployments</h2>
{summary}<p class="note">Per provider and fraise type; availability, durations, active deployments, rollbacks and health
checks are kept per provider, on its "all" row. Failures are every deployment that did not succeed (failed,
rolled back, rollback failed, crashed: hover for each). Quantiles are estimated from the histogram buckets, over
every deployment since the file began.</p>
</body>
</html>
"""


def landing_page(source: MetricsSource) -> str:
    """The page at ``/``: a link to the metrics and the deployments summary of what a scrape serves now."""
    from fraisier_textfile.format.reader import parse
    from fraisier_textfile.serve.summary import html_table, summarize

    try:
        # Only the labels are read: a registry may write them in another order than the textfile does.
        summary = html_table(summarize(parse(source.scrape().plain.decode("utf-8"), check_histograms=False)))
    except (FraisierTextfileError, ValueError) as error:  # ParseError and UnicodeDecodeError are ValueErrors
        summary = f'<p id="summary">No summary: {html.escape(str(error))}</p>\n'
    return LANDING_PAGE.format(source=html.escape(source.describe()), summary=summary)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip: named or through ``*``, with a quality above 0."""
    if not accept_encoding:
        return False
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *parameters = item.split(";")
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities.setdefault(coding.strip().lower(), quality)
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


class _AfterHead(io.RawIOBase):
    """A connection's bytes: the head of its request that the serving loop read, then the rest from the socket
    (one read at a time, never waiting for more than a read returns: a kept-alive client sends nothing more
    until it has its response)."""

    def __init__(self, head: bytes, rest: io.BufferedIOBase) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        return self._rest.readinto1(buffer)

    def close(self) -> None:
        self._rest.close()  # the socket's file: the socket closes only once every file made from it is closed
        super().close()


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection from scrape to scrape
    server_version = "fraisier-metrics"
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        # Headers and body go out in two writes: without TCP_NODELAY the body's last segment can wait for a
        # delayed ACK (tens of milliseconds). Set here, not with disable_nagle_algorithm: it is TCP's, and
        # setting it on a Unix socket (socket activation) fails.
        if self.request.family in (socket.AF_INET, socket.AF_INET6):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        super().setup()
        connection = self.server.current_connection()
        if connection is not None and connection.head:
            # What the serving loop already read of the request comes first.
            self.rfile = io.BufferedReader(_AfterHead(bytes(connection.head), self.rfile))
            connection.head.clear()

    def version_string(self) -> str:
        return self.server_version

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # The request line and headers are in full (a GET has no body): from here the connection is being
        # served, no longer a candidate for the deadline or for making room for a new connection.
        self.server.connections.request_arrived(self.server.current_connection())
        return True

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if not self.close_connection:
            self.server.connections.waiting_again(self.server.current_connection())

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        started = time.monotonic()
        self._status = 0
        try:
            self._route(send_body)
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request", extra={"fields": {
                    "method": self.command, "path": self.path, "status": self._status,
                    "duration_seconds": round(time.monotonic() - started, 6), "remote": self.client_address[0],
                }})

    def _route(self, send_body: bool) -> None:
        web_config = self.server.web_config
        if web_config is not None and not web_config.authorized(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8", send_body,
                       {"WWW-Authenticate": 'Basic realm="fraisier metrics", charset="UTF-8"'})
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics(send_body)
        elif path == "/":
            page = landing_page(self.server.source)
            self._send(200, page.encode("utf-8"), "text/html; charset=utf-8", send_body)
        else:
            self._send(404, b"Not found: the metrics are at /metrics\n", "text/plain; charset=utf-8", send_body)

    def _metrics(self, send_body: bool) -> None:
        slots = self.server.scrape_slots
        if slots is not None and not slots.acquire(blocking=False):
            message = b"Too many scrapes at once: retry later, or raise --max-requests\n"
            self._send(503, message, "text/plain; charset=utf-8", send_body)
            return
        try:
            payload = self.server.source.scrape()
        except FraisierTextfileError as error:
            self._send(500, f"{error}\n".encode(), "text/plain; charset=utf-8", send_body)
            return
        finally:
            if slots is not None:
                slots.release()
        headers = {"Vary": "Accept-Encoding"}
        if accepts_gzip(self.headers.get("Accept-Encoding")):
            body = payload.gzipped()
            headers["Content-Encoding"] = "gzip"
        else:
            body = payload.plain
        self._send(200, body, CONTENT_TYPE, send_body, headers)

    def _send(self, status: int, body: bytes, content_type: str, send_body: bool,
              headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _answer logs each request, with its duration

    def log_message(self, format: str, *args: Any) -> None:
        # What http.server reports itself: malformed requests, unsupported methods, timeouts.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)


def listen_backlog() -> int:
    """The backlog Go servers such as node_exporter listen with: the system's ``somaxconn``. Python's
    socketserver listens with 5, so under a burst of connections the kernel drops SYNs and clients wait for
    their one-second retransmission."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as file:
            backlog = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return socket.SOMAXCONN
    # listen(2) keeps the backlog in 16 bits on older kernels; Go caps it the same way.
    return max(1, min(backlog, 65535))


SYSTEMD_FIRST_DESCRIPTOR = 3  # SD_LISTEN_FDS_START


def systemd_listening_socket() -> socket.socket | None:
    """The listening socket that systemd passed to this process (socket activation: ``LISTEN_PID`` is this
    process and ``LISTEN_FDS`` is 1, the socket is descriptor 3), or None when there is none. The variables
    are removed so that processes started from here do not take the socket for theirs. Raises
    ServerStartError when systemd passed something this server cannot serve from."""
    listen_pid = os.environ.get("LISTEN_PID")
    listen_fds = os.environ.get("LISTEN_FDS")
    if listen_pid is None or listen_fds is None:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if listen_pid.strip() != str(os.getpid()):
        return None  # meant for another process (the variables were inherited)
    where = "the socket passed by systemd"
    try:
        count = int(listen_fds)
    except ValueError:
        raise ServerStartError(where, 0, f"LISTEN_FDS is {listen_fds!r}, not a number of sockets") from None
    if count == 0:
        return None
    if count != 1:
        raise ServerStartError(
            where, 0, f"systemd passed {count} sockets; fraisier metrics serves one: give its .socket unit one "
            "ListenStream="
        )
    try:
        listening = socket.socket(fileno=SYSTEMD_FIRST_DESCRIPTOR)
    except OSError as error:
        raise ServerStartError(where, 0, f"descriptor 3 is not a socket ({error.strerror or error})") from None
    if listening.type != socket.SOCK_STREAM or not listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        listening.detach()
        raise ServerStartError(
            where, 0, "descriptor 3 is not a listening stream socket: use ListenStream= (not ListenDatagram= or "
            "Accept=yes) in the .socket unit"
        )
    listening.set_inheritable(False)
    return listening


def notify_systemd(state: str = "READY=1") -> bool:
    """Tell the service manager ``state`` (``READY=1``: started) on ``$NOTIFY_SOCKET``, as sd_notify(3) does,
    for ``Type=notify`` units. False (and nothing sent) when the variable is not set or the message cannot be
    sent: a server started by hand has no one to tell."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@name": the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
            notify.sendto(state.encode(), address)
    except OSError as error:
        log.warning("cannot tell systemd %s on NOTIFY_SOCKET=%s: %s", state, path, error)
        return False
    return True


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open descriptors (RLIMIT_NOFILE) to its hard limit, as Go's runtime
    does for every Go program since Go 1.19, node_exporter included (go.dev/issue/46279). systemd gives every
    service a soft limit of 1024, kept low only for programs that use select(2), and a hard limit of 524288
    for programs that do not: this one waits with poll(2). Returns the soft limit before and after; never
    raises (a limit that cannot be raised is left as it was). For ``fraisier metrics``, not for a library
    call: the limit is the whole process's."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0, 0
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft  # Linux refuses an unlimited soft limit for descriptors; nothing to gain otherwise
    try:
        # glibc makes this prlimit64(2), which systemd's @system-service filter allows (setrlimit(2) is in
        # @resources, which the unit denies).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        log.debug("cannot raise the soft limit on open files from %d to %d: %s", soft, hard, error)
        return soft, soft
    return soft, hard


def connection_limit(max_connections: int) -> int:
    """How many connections a server keeps at once: ``max_connections`` (0: no limit of its own), but never
    more than half the descriptors this process has left under its soft limit, with a reserve for the files
    a scrape opens. Half, because a connection closed to make room for another holds its descriptor until
    its thread has let go of it: live and closing connections together stay within the budget."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 16
    budget = (soft - open_now - RESERVED_DESCRIPTORS) // 2
    if max_connections > 0:
        budget = min(budget, max_connections)
    return max(1, budget)


class _Connection:
    """One accepted connection, as the server's connection table sees it."""

    __slots__ = ("client", "client_address", "closing", "deadline", "handshaken", "head", "in_thread", "socket",
                 "tls")

    def __init__(self, connection: socket.socket, client_address: Any, deadline: float) -> None:
        self.socket = connection
        """Its socket: the accepted one, then the TLS one that took its descriptor."""
        self.client_address = client_address
        self.client = str(client_address[0])
        self.deadline = deadline
        """While waiting for a request: when it must have arrived in full (time.monotonic())."""
        self.closing = False
        self.in_thread = False
        """False while the serving loop reads its request (no thread yet); True once a thread serves it."""
        self.tls = False
        self.handshaken = False
        self.head = bytearray()
        """What the loop has read of its first request."""


class _ConnectionTable:
    """The connections a server holds, at most ``limit`` at once: new ones (before their first request has
    arrived in full, TLS handshake included), kept-alive ones between requests, and those being served.

    A waiting connection (new or kept alive) has a deadline by which its whole request must have arrived; it
    is fixed when the wait starts and is not moved by each byte the client sends, as Go's SetReadDeadline and
    unlike a socket timeout (which a client trickling one byte a second re-arms forever).

    At the limit, a new connection closes the new connection that has been waiting longest; only when there
    is none, the kept-alive one idle longest. A scraper sends its request as soon as it is connected and then
    keeps its connection: idle and trickling connections, which never complete a request, make room for it
    and never push out its kept-alive connection. When every connection is being served, the new one is
    closed at once. Refusing new connections instead (Go's netutil.LimitListener, or leaving them in the
    backlog) would let a few hundred silent connections lock Prometheus out until their deadlines pass."""

    def __init__(self, limit: int, request_timeout: float) -> None:
        self.limit = limit
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._held: set[_Connection] = set()
        """Every connection whose descriptor is open: waiting, served, or shut down and not yet closed."""
        self._new: OrderedDict[_Connection, None] = OrderedDict()
        """Live connections waiting for their first request, the longest waiting first."""
        self._kept: OrderedDict[_Connection, None] = OrderedDict()
        """Live kept-alive connections waiting for their next request, the longest idle first."""
        self._served: set[_Connection] = set()
        self.closed_for_room = 0
        self.refused = 0
        self.expired = 0
        self._warned_at: float | None = None
        self._for_the_loop: list[_Connection] = []
        """Connections shut down while the serving loop owns them: it closes them (take_closed)."""

    def admit(self, connection: socket.socket, client_address: Any) -> _Connection | None:
        """Take a new connection into the table, closing the longest waiting one at the limit. None: it is
        to be closed at once (every connection is being served, or too many are still closing)."""
        with self._lock:
            made_room = refused = False
            if len(self._held) >= 2 * self.limit:
                refused = True
            elif self._live() >= self.limit:
                made_room = self._make_room()
                refused = not made_room
            if refused:
                self.refused += 1
                entry = None
            else:
                entry = _Connection(connection, client_address, time.monotonic() + self.request_timeout)
                self._held.add(entry)
                self._new[entry] = None
        if made_room or refused:
            self._warn_at_the_limit()
        return entry

    def make_room(self) -> None:
        """Shut down the connection that has been waiting longest, if any."""
        with self._lock:
            self._make_room()

    def hand_to_thread(self, connection: _Connection) -> None:
        with self._lock:
            connection.in_thread = True
            if connection.closing:  # shut down meanwhile: the thread finds it at end of file
                self._shut_down(connection)

    def take_closed(self) -> list[_Connection]:
        """The connections the serving loop owns that were shut down (made room for, expired): the loop
        unregisters and closes them."""
        with self._lock:
            taken, self._for_the_loop = self._for_the_loop, []
            return taken

    def request_arrived(self, connection: _Connection | None) -> None:
        with self._lock:
            if connection is None or connection.closing:
                return
            self._new.pop(connection, None)
            self._kept.pop(connection, None)
            self._served.add(connection)

    def waiting_again(self, connection: _Connection | None) -> None:
        """A response was sent on a kept-alive connection: the next request must arrive in full within
        CONNECTION_TIMEOUT."""
        with self._lock:
            if connection is None or connection.closing:
                return
            self._served.discard(connection)
            connection.deadline = time.monotonic() + CONNECTION_TIMEOUT
            self._kept[connection] = None

    def forget(self, connection: _Connection) -> None:
        """Call before closing the connection's socket: once forgotten, it is never shut down by the table, so
        a descriptor number reused by a newer connection cannot be shut down in its place."""
        with self._lock:
            connection.closing = True
            self._held.discard(connection)
            self._new.pop(connection, None)
            self._kept.pop(connection, None)
            self._served.discard(connection)

    def expire(self, now: float) -> None:
        """Shut down every waiting connection whose request has not arrived in full by its deadline."""
        with self._lock:
            for waiting in (self._new, self._kept):
                late = [connection for connection in waiting if connection.deadline <= now]
                for connection in late:
                    del waiting[connection]
                    self._shut_down(connection)
                self.expired += len(late)

    def close_all(self) -> None:
        with self._lock:
            for connection in list(self._held):
                self._new.pop(connection, None)
                self._kept.pop(connection, None)
                self._served.discard(connection)
                self._shut_down(connection)

    def __len__(self) -> int:
        with self._lock:
            return self._live()

    def _live(self) -> int:
        return len(self._new) + len(self._kept) + len(self._served)

    def _make_room(self) -> bool:
        for waiting in (self._new, self._kept):
            if waiting:
                oldest, _ = waiting.popitem(last=False)
                self._shut_down(oldest)
                self.closed_for_room += 1
                return True
        return False

    def _shut_down(self, connection: _Connection) -> None:
        if connection.closing and not connection.in_thread:
            return
        connection.closing = True
        if not connection.in_thread:
            self._for_the_loop.append(connection)  # closed at once by the loop, which alone uses it
            return
        # shutdown(2), not close: the thread blocked reading from it wakes up (end of file) and closes it
        # itself, so its descriptor is never closed under it and reused. The plain socket's method, even on
        # a TLS socket: SSLSocket.shutdown would also unwrap it under the thread that uses it.
        try:
            socket.socket.shutdown(connection.socket, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by its client

    def _warn_at_the_limit(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._warned_at is not None and now - self._warned_at < LIMIT_WARNING_INTERVAL:
                return
            self._warned_at = now
            closed, refused = self.closed_for_room, self.refused
        log.warning(
            "%d connections held, the most this server keeps (--max-connections, and half the descriptors "
            "left under its limit): the longest-waiting connection is closed for each new one (%d so far), "
            "or the new one when all are being served (%d so far). Many idle clients: an attack, or too "
            "low a limit", self.limit, closed, refused,
        )


class _HTTPServer(HTTPServer):
    """The HTTP server: one serving loop, and a thread for each request that has arrived in full.

    The loop accepts connections, does their TLS handshakes and reads their first request without blocking,
    on all of them at once; only a connection whose request line and headers are all in gets a thread. A
    silent or trickling client costs a descriptor and a few bytes, not a thread, and making room for a new
    connection closes it at once. A thread then serves that connection, kept alive, until it closes."""

    def __init__(self, address: Any, family: socket.AddressFamily, source: MetricsSource,
                 web_config: LiveWebConfig | None, max_requests: int, max_connections: int,
                 request_timeout: float, listening_socket: socket.socket | None = None) -> None:
        self.address_family = family
        self.request_queue_size = listen_backlog()
        self.source = source
        self.web_config = web_config
        self.tls = web_config is not None and web_config.tls  # a reload never turns it on or off
        # As node_exporter's --web.max-requests: scrapes beyond the limit get 503 at once instead of piling
        # up threads; 0 means no limit.
        self.scrape_slots = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self.connections = _ConnectionTable(connection_limit(max_connections), request_timeout)
        self._current = threading.local()
        self._accept_delay = 0.0
        self._accept_warned_at: float | None = None
        self._stop_requested = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        if listening_socket is None:
            super().__init__(address, _Handler)
            return
        super().__init__(address, _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening_socket  # already bound and listening, with the backlog its owner chose
        self.server_address = listening_socket.getsockname()
        self.server_name, self.server_port = _name_and_port(family, self.server_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which may wait on DNS: not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = _name_and_port(socket.AddressFamily(self.address_family),
                                                             self.server_address)

    # The serving loop

    def about_to_serve(self) -> None:
        """Call before serve_forever, from the thread that may later call shutdown: a shutdown from then on
        waits for the loop to stop, even one that comes before the loop has started."""
        self._stopped.clear()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        selector = selectors.DefaultSelector()
        self.socket.setblocking(False)
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        next_expiry = 0.0
        try:
            while not self._stop_requested:
                for key, _ in selector.select(timeout=min(poll_interval, EXPIRY_CHECK_INTERVAL)):
                    try:
                        if key.fileobj is self.socket:
                            self._accept(selector)
                        elif key.fileobj is self._wake_reader:
                            self._drain_wake()
                        elif not key.data.closing:
                            self._advance(key.data, selector)
                    except Exception:  # a bug must cost one connection, never the loop that serves them all
                        log.error("unexpected error while serving a connection", exc_info=True)
                        if isinstance(key.data, _Connection):
                            self._close_in_loop(key.data, selector)
                    self._close_shut_down(selector)
                now = time.monotonic()
                if now >= next_expiry:
                    next_expiry = now + EXPIRY_CHECK_INTERVAL
                    self.connections.expire(now)
                    self._close_shut_down(selector)
        finally:
            for key in list(selector.get_map().values()):
                if isinstance(key.data, _Connection):
                    self._close_in_loop(key.data, selector)
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the serving loop and wait until it has stopped (from another thread)."""
        self._stop_requested = True
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass  # already woken
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(512):
                pass
        except OSError:
            pass

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(ACCEPTS_PER_WAKE):  # a burst is taken in one go, and the loop still turns
            try:
                connection, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._accept_failed(error)
                else:
                    log.debug("cannot accept a connection: %s", error)
                return
            self._accept_delay = 0.0
            if connection.family == socket.AF_UNIX:
                address = (_unix_peer(connection), 0)  # a Unix socket's peer has no address: say who it is
            entry = self.connections.admit(connection, address)
            self._close_shut_down(selector)
            if entry is None:
                connection.close()
                continue
            try:
                connection.setblocking(False)
                selector.register(connection, selectors.EVENT_READ, entry)
            except (OSError, ValueError) as error:
                log.debug("cannot watch a connection from %s: %s", entry.client, error)
                self.connections.forget(entry)
                connection.close()

    def _accept_failed(self, error: OSError) -> None:
        """Out of descriptors (others than connections hold them: a limit lowered after start, files): make
        room, and wait before accepting again as Go's http.Server does (5 ms, doubling up to 1 s), rather than
        spin on a listening socket that stays readable."""
        now = time.monotonic()
        if self._accept_warned_at is None or now - self._accept_warned_at >= LIMIT_WARNING_INTERVAL:
            self._accept_warned_at = now
            log.warning("cannot accept a connection: %s; the longest-waiting connection is closed to make room",
                        error.strerror or error)
        self._accept_delay = min(max(self._accept_delay * 2, 0.005), 1.0)
        self.connections.make_room()
        time.sleep(self._accept_delay)

    def _advance(self, entry: _Connection, selector: selectors.BaseSelector) -> None:
        """Take a waiting connection as far as it goes without blocking: the TLS handshake, then its request.
        Hands it to a thread once the request's head is in."""
        try:
            if self.tls and not entry.tls and not self._start_tls(entry, selector):
                return
            if entry.tls and not entry.handshaken:
                entry.socket.do_handshake()  # type: ignore[attr-defined]
                entry.handshaken = True
            while True:
                data = entry.socket.recv(READ_SIZE)
                if not data:
                    self._close_in_loop(entry, selector)  # the client gave up
                    return
                entry.head += data
                if _head_is_complete(entry.head):
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            selector.modify(entry.socket, selectors.EVENT_READ, entry)
            return
        except ssl.SSLWantWriteError:
            selector.modify(entry.socket, selectors.EVENT_WRITE, entry)
            return
        except (ssl.SSLError, OSError) as error:
            log.debug("connection from %s ended before its request: %s", entry.client, error)
            self._close_in_loop(entry, selector)
            return
        selector.unregister(entry.socket)
        self._hand_to_thread(entry)

    def _start_tls(self, entry: _Connection, selector: selectors.BaseSelector) -> bool:
        """Wrap a connection of a TLS server in TLS once its first byte is in. False: no TLS for it (closed:
        plain HTTP sent to a TLS port is answered 400 first)."""
        context = self.web_config.ssl_context() if self.web_config is not None else None
        first = entry.socket.recv(1, socket.MSG_PEEK)
        if context is None:  # cannot happen: a change of web config that turns TLS off is refused
            self._close_in_loop(entry, selector)
            return False
        if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP sent to this TLS port
            if first:
                try:
                    # Read what it sent first: closing with unread bytes would reset the connection, and the
                    # client might lose the answer.
                    entry.socket.recv(READ_SIZE)
                    entry.socket.send(PLAIN_HTTP_TO_TLS_RESPONSE)
                    entry.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            self._close_in_loop(entry, selector)
            return False
        selector.unregister(entry.socket)  # while it still has its descriptor: the TLS socket takes it over
        wrapped = context.wrap_socket(entry.socket, server_side=True, do_handshake_on_connect=False)
        entry.socket = wrapped
        entry.tls = True
        selector.register(wrapped, selectors.EVENT_READ, entry)
        return True

    def _hand_to_thread(self, entry: _Connection) -> None:
        entry.socket.settimeout(CONNECTION_TIMEOUT)
        self.connections.hand_to_thread(entry)
        thread = threading.Thread(target=self._serve_connection, args=(entry,), daemon=True)
        try:
            thread.start()
        except RuntimeError as error:  # no thread can be started now (memory, a tasks limit): drop this one
            log.warning("cannot serve a connection from %s: %s", entry.client, error)
            self.connections.forget(entry)
            self.shutdown_request(entry.socket)

    def _close_shut_down(self, selector: selectors.BaseSelector) -> None:
        for entry in self.connections.take_closed():
            self._close_in_loop(entry, selector)

    def _close_in_loop(self, entry: _Connection, selector: selectors.BaseSelector) -> None:
        try:
            selector.unregister(entry.socket)
        except (KeyError, ValueError):
            pass  # not registered (being wrapped) or already closed
        self.connections.forget(entry)
        try:
            entry.socket.close()
        except OSError:
            pass

    # Threads

    def _serve_connection(self, entry: _Connection) -> None:
        self._current.connection = entry
        try:
            _Handler(entry.socket, entry.client_address, self)
        except Exception:
            self.handle_error(entry.socket, entry.client_address)
        finally:
            self.connections.forget(entry)  # before its descriptor is closed, which a new connection may reuse
            self.shutdown_request(entry.socket)

    def current_connection(self) -> _Connection | None:
        """The connection the calling thread serves."""
        return getattr(self._current, "connection", None)

    def close_connections(self) -> None:
        """End the kept-alive connections too: after a shutdown, nothing more is served."""
        self.connections.close_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def _head_is_complete(head: bytearray) -> bool:
    """Whether a request's line and headers are all in (a blank line, as http.server reads them), or enough
    is in for the handler to answer it without more: a first line that is not a request, or more than a
    request's head may hold."""
    if b"\n\r\n" in head or b"\n\n" in head or len(head) > MAX_REQUEST_HEAD:
        return True
    first_line, newline, _ = head.partition(b"\n")
    # Not "METHOD PATH VERSION", nor "GET PATH" (HTTP/0.9, after which http.server still reads headers):
    # answered 400 at once.
    return bool(newline) and len(first_line.split()) not in (2, 3)


def _name_and_port(family: socket.AddressFamily, address: Any) -> tuple[str, int]:
    """A listening address as a name and a port: host and port for TCP; for a Unix socket its path, or
    ``@name`` in the abstract namespace, and port 0."""
    if family == socket.AF_UNIX:
        return unix_socket_name(address), 0
    host, port = address[:2]
    return str(host), int(port)


def unix_socket_name(address: str | bytes) -> str:
    """How systemd and ss write a Unix socket's address: its path, or ``@name`` for the abstract namespace
    (which Python gives as bytes starting with NUL)."""
    if isinstance(address, bytes):
        if address.startswith(b"\0"):
            return "@" + address[1:].decode("utf-8", "backslashreplace")
        return os.fsdecode(address)
    return address or "(unnamed)"


def _unix_peer(connection: socket.socket) -> str:
    """Who is at the other end of a Unix socket (SO_PEERCRED): its process and user, as the kernel says."""
    try:
        credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", credentials)
    except (OSError, struct.error):
        return "unix"
    return f"unix:pid={pid},uid={uid}"


PLAIN_HTTP_TO_TLS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"Client sent an HTTP request to an HTTPS server.\n"
)


def _resolve(address: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    host = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise ServerStartError(
            address, port,
            f"cannot listen on --address {address!r}: {reason}; give a host name or IP address of this machine, "
            "e.g. localhost, 127.0.0.1 or 0.0.0.0",
        ) from None
    # Like Go's exporters, prefer IPv4 for a name that has both (localhost).
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    family, _, _, _, socket_address = found[0]
    return family, socket_address


def _start_error(address: str, port: int, error: OSError) -> ServerStartError:
    where = f"{address}:{port}"
    if error.errno == errno.EADDRINUSE:
        fix = f"port {port} is in use by another process; stop it or choose another --port"
    elif error.errno == errno.EADDRNOTAVAIL:
        fix = f"{address} is not an address of this machine; give one of its addresses, e.g. localhost"
    elif error.errno in (errno.EACCES, errno.EPERM):
        fix = f"port {port} needs privileges this user lacks; choose a port above 1023"
    else:
        fix = f"{error.strerror or error}; check --address and --port"
    return ServerStartError(address, port, f"cannot listen on {where}: {fix}")


class MetricsServer:
    """An exporter listening on ``address:port`` (port 0: any free port; ``port`` tells which), or on the
    listening socket it is given (TCP, or a Unix socket: then ``address`` is its path or ``@name``, and
    ``port`` 0).

    Created listening; ``start()`` serves from a background thread, ``serve_forever()`` from this one;
    ``shutdown()`` stops serving and closes the socket. It holds at most ``max_connections`` connections
    (fewer if the descriptor limit calls for it; ``connection_limit`` tells how many), and closes one whose
    request has not arrived in full ``request_timeout`` seconds after it was accepted. Raises
    ServerStartError when it cannot listen and WebConfigError when the web config is invalid or names
    unusable files.
    """

    def __init__(self, source: MetricsSource, *, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
                 web_config_file: Path | str | None = None, max_requests: int = DEFAULT_MAX_REQUESTS,
                 listening_socket: socket.socket | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.source = source
        self.web_config = LiveWebConfig(web_config_file) if web_config_file is not None else None
        limits = (max_requests, max_connections, request_timeout)
        if listening_socket is not None:
            # Socket activation: systemd bound it; address and port are what it was bound to.
            self._http = _HTTPServer(listening_socket.getsockname(), listening_socket.family, source,
                                     self.web_config, *limits, listening_socket=listening_socket)
            address = str(self._http.server_name)
        else:
            family, socket_address = _resolve(address, port)
            try:
                self._http = _HTTPServer(socket_address, family, source, self.web_config, *limits)
            except OSError as error:
                raise _start_error(address, port, error) from None
        self.address = address
        self.port: int = self._http.server_port
        self.tls = self.web_config is not None and self.web_config.tls
        scheme = "https" if self.tls else "http"
        if self._http.address_family == socket.AF_UNIX:
            # The form of requests-unixsocket and docker-py; curl --unix-socket PATH http://localhost/metrics.
            self.url = f"{scheme}+unix://{quote(address, safe='')}/metrics"
            self.location = f"unix socket {address}"
            """Where it serves, for a person: the URL, or which Unix socket."""
        else:
            host = address or "0.0.0.0"
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            self.url = f"{scheme}://{host}:{self.port}/metrics"
            self.location = self.url
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False
        self._state = threading.Lock()
        authentication = bool(self.web_config and self.web_config.current().basic_auth_users)
        log.debug("serving %s on %s (TLS %s, basic auth %s, at most %d connections)", source.describe(),
                  self.location, "on" if self.tls else "off", "on" if authentication else "off",
                  self.connection_limit)

    @property
    def connection_limit(self) -> int:
        """The most connections it holds at once: ``max_connections``, or fewer under a low descriptor limit."""
        return self._http.connections.limit

    @property
    def connections_held(self) -> int:
        """The connections it holds now: waiting for a request, kept alive, or being served."""
        return len(self._http.connections)

    @property
    def backlog(self) -> int:
        """The listen backlog this server asked for (an inherited socket keeps its owner's)."""
        return int(self._http.request_queue_size)

    def reload_web_config(self) -> bool:
        """Re-read the web config now (what SIGHUP does). True if a config is in force from the file as it is;
        False if there is none, or the new one was refused (logged; the last good one stays)."""
        if self.web_config is None:
            log.info("no --web-config-file to reload")
            return False
        return self.web_config.reload()

    def serve_forever(self) -> None:
        with self._state:
            if self._stopped:
                return
            self._serving = True
            self._http.about_to_serve()
        self._http.serve_forever(poll_interval=0.2)

    def start(self) -> MetricsServer:
        """Serve from a daemon thread; return at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name=f"fraisier-metrics-{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and release the port. Safe to call twice, and from any thread but the serving one."""
        with self._state:
            if self._stopped:
                return
            self._stopped = True
            serving = self._serving
        if serving:
            self._http.shutdown()
        self._http.server_close()
        self._http.close_connections()
        if self._thread is not None:
            self._thread.join()
        log.info("stopped serving on %s", self.url)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exception: object) -> None:
        self.shutdown()


def serve_textfile(store: TextfileStore | Path | str, *, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
                   web_config_file: Path | str | None = None,
                   max_requests: int = DEFAULT_MAX_REQUESTS,
                   listening_socket: socket.socket | None = None,
                   max_connections: int = DEFAULT_MAX_CONNECTIONS) -> MetricsServer:
    """Serve a textfile directory's ``fraisier.prom`` (what ``fraisier metrics`` runs), from a background
    thread. Returns the running server. ``listening_socket``: serve from this socket, already listening (as
    ``systemd_listening_socket()`` gives), instead of binding ``address:port``."""
    if not isinstance(store, TextfileStore):
        store = TextfileStore(store)
    return MetricsServer(TextfileSource(store), port=port, address=address, web_config_file=web_config_file,
                         max_requests=max_requests, listening_socket=listening_socket,
                         max_connections=max_connections).start()


def serve_registry(registry: CollectorRegistry, *, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
                   web_config_file: Path | str | None = None,
                   max_requests: int = DEFAULT_MAX_REQUESTS,
                   max_connections: int = DEFAULT_MAX_CONNECTIONS) -> MetricsServer:
    """Serve a prometheus_client registry from a background thread. Returns the running server."""
    return MetricsServer(RegistrySource(registry), port=port, address=address, web_config_file=web_config_file,
                         max_requests=max_requests, max_connections=max_connections).start()
