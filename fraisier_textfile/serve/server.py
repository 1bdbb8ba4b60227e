"""The HTTP exporter: ``/metrics`` from the textfile (``fraisier metrics``) or from a recorder's registry.

One server, two sources of bytes. The textfile source never takes the store's lock: the file is only ever
replaced whole by a rename, so a reader sees the old file or the new one. It parses the file only when its
version changed (see textfile.FileVersion), and otherwise serves bytes encoded once (gzipped at most once). The
active-deployments family is the exception: it is recomputed at every scrape from the in-flight markers, so
that a deployment whose process died stops counting at once, not at the next flush.

Served: ``/metrics`` (GET and HEAD, gzip when asked), a landing page at ``/``, 404 elsewhere; TLS and basic
auth from an exporter-toolkit web config (see ``webconfig``); over TCP or a Unix socket from systemd.

Clients that hold connections and send nothing cannot lock Prometheus out (see connection_table): one loop
accepts, does TLS handshakes and reads first requests for every connection at once, a thread serves a
connection only once its request is in, at most ``max_connections`` are held, and a request that has not
arrived in full by its deadline is cut off, however slowly it trickles.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from fraisier_textfile.errors import (
    FraisierTextfileError,
    ServerStartError,
)
from fraisier_textfile.fraisier_store import FraisierStore
from fraisier_textfile.serve.connection_table import CONNECTION_TIMEOUT, DEFAULT_MAX_CONNECTIONS, REQUEST_TIMEOUT
from fraisier_textfile.serve.connections import LoopServer
from fraisier_textfile.serve.live_config import LiveWebConfig
from fraisier_textfile.serve.sources import MetricsSource, RegistrySource, TextfileSource
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001
DEFAULT_MAX_REQUESTS = 0  # no limit: a burst of scrapes from many clients is served, not refused
DEFAULT_ADDRESS = "localhost"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# HTTP


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
    server: LoopServer
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
            page = self.server.landing_page.render()
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
            self._http = LoopServer(listening_socket.getsockname(), listening_socket.family, _Handler, source,
                                     self.web_config, *limits, listening_socket=listening_socket)
            address = str(self._http.server_name)
        else:
            family, socket_address = _resolve(address, port)
            try:
                self._http = LoopServer(socket_address, family, _Handler, source, self.web_config, *limits)
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
        store = FraisierStore(store)
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
