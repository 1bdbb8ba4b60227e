"""The HTTP exporter: ``/metrics`` from the textfile (``fraisier metrics``) or from a recorder's registry.

One server, two sources of bytes. The textfile source never takes the store's lock: the file is only ever
replaced whole by a rename, so a reader sees the old file or the new one. It parses the file only when its
version changed (see textfile.FileVersion), and otherwise serves bytes encoded once (gzipped at most once). The
active-deployments family is the exception: it is recomputed at every scrape from the in-flight markers, so
that a deployment whose process died stops counting at once, not at the next flush.

Served: ``/metrics`` (GET and HEAD, gzip when asked), a landing page at ``/``, 404 elsewhere; TLS and basic
auth from an exporter-toolkit web config (see ``webconfig``).
"""

from __future__ import annotations

import errno
import gzip
import html
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

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
# Idle keep-alive connections and stalled TLS handshakes are dropped after this many seconds.
CONNECTION_TIMEOUT = 30.0
# After a merge at a scrape failed (a read-only directory, a full disk), scrapes serve the file as it is for
# this many seconds before a scrape merges again.
NEWS_RETRY_SECONDS = 5.0
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


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection from scrape to scrape
    server_version = "fraisier-metrics"
    # Headers and body go out in two writes: without TCP_NODELAY the body's last segment can wait for a
    # delayed ACK (tens of milliseconds).
    disable_nagle_algorithm = True
    timeout = CONNECTION_TIMEOUT

    def version_string(self) -> str:
        return self.server_version

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[Any, ...], family: socket.AddressFamily, source: MetricsSource,
                 web_config: LiveWebConfig | None, max_requests: int,
                 listening_socket: socket.socket | None = None) -> None:
        self.address_family = family
        self.request_queue_size = listen_backlog()
        self.source = source
        self.web_config = web_config
        # As node_exporter's --web.max-requests: scrapes beyond the limit get 503 at once instead of piling
        # up threads; 0 means no limit.
        self.scrape_slots = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if listening_socket is None:
            super().__init__(address, _Handler)
            return
        super().__init__(address, _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening_socket  # already bound and listening, with the backlog its owner chose
        host, port = listening_socket.getsockname()[:2]
        self.server_address = (host, port)
        self.server_name = str(host)
        self.server_port = int(port)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which may wait on DNS: not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._track(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._untrack(request)

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """End the kept-alive connections too: after a shutdown, nothing more is served."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.web_config.ssl_context() if self.web_config is not None else None
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CONNECTION_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP sent to this TLS port
            if first:
                try:
                    request.sendall(PLAIN_HTTP_TO_TLS_RESPONSE)
                except OSError:
                    pass
            return
        try:
            connection = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake with %s failed: %s", client_address[0], error)
            return
        self._track(connection)  # the raw socket was handed over to the TLS one
        try:
            _Handler(connection, client_address, self)
        finally:
            self._untrack(connection)
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


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
    """An exporter listening on ``address:port`` (port 0: any free port; ``port`` tells which).

    Created listening; ``start()`` serves from a background thread, ``serve_forever()`` from this one;
    ``shutdown()`` stops serving and closes the socket. Raises ServerStartError when it cannot listen and
    WebConfigError when the web config is invalid or names unusable files.
    """

    def __init__(self, source: MetricsSource, *, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
                 web_config_file: Path | str | None = None, max_requests: int = DEFAULT_MAX_REQUESTS,
                 listening_socket: socket.socket | None = None) -> None:
        self.source = source
        self.web_config = LiveWebConfig(web_config_file) if web_config_file is not None else None
        if listening_socket is not None:
            # Socket activation: systemd bound it; address and port are what it was bound to.
            self._http = _HTTPServer(listening_socket.getsockname(), listening_socket.family, source,
                                     self.web_config, max_requests, listening_socket)
            address = str(self._http.server_name)
        else:
            family, socket_address = _resolve(address, port)
            try:
                self._http = _HTTPServer(socket_address, family, source, self.web_config, max_requests)
            except OSError as error:
                raise _start_error(address, port, error) from None
        self.address = address
        self.port: int = self._http.server_port
        host = address or "0.0.0.0"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.tls = self.web_config is not None and self.web_config.tls
        self.url = f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False
        self._state = threading.Lock()
        authentication = bool(self.web_config and self.web_config.current().basic_auth_users)
        log.debug("serving %s on %s (TLS %s, basic auth %s)", source.describe(), self.url,
                  "on" if self.tls else "off", "on" if authentication else "off")

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
                   listening_socket: socket.socket | None = None) -> MetricsServer:
    """Serve a textfile directory's ``fraisier.prom`` (what ``fraisier metrics`` runs), from a background
    thread. Returns the running server. ``listening_socket``: serve from this socket, already listening (as
    ``systemd_listening_socket()`` gives), instead of binding ``address:port``."""
    if not isinstance(store, TextfileStore):
        store = TextfileStore(store)
    return MetricsServer(TextfileSource(store), port=port, address=address, web_config_file=web_config_file,
                         max_requests=max_requests, listening_socket=listening_socket).start()


def serve_registry(registry: CollectorRegistry, *, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
                   web_config_file: Path | str | None = None,
                   max_requests: int = DEFAULT_MAX_REQUESTS) -> MetricsServer:
    """Serve a prometheus_client registry from a background thread. Returns the running server."""
    return MetricsServer(RegistrySource(registry), port=port, address=address,
                         web_config_file=web_config_file, max_requests=max_requests).start()
