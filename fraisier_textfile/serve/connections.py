"""The serving loop: one loop accepts connections, does their TLS handshakes and reads each first request without
blocking; a connection gets a thread only once its request is in. Which connections are held and which is closed
when (the bound and the deadlines) is the connection table's (``connection_table``); how many the descriptor
limit leaves room for, ``descriptors``."""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import socketserver
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from fraisier_textfile.serve.activation import listen_backlog
from fraisier_textfile.serve.connection_table import (
    CONNECTION_TIMEOUT,
    LIMIT_WARNING_INTERVAL,
    Connection,
    ConnectionTable,
)
from fraisier_textfile.serve.descriptors import connection_limit
from fraisier_textfile.serve.landing import LandingPage
from fraisier_textfile.serve.live_config import LiveWebConfig
from fraisier_textfile.serve.sources import MetricsSource

log = logging.getLogger(__name__)


EXPIRY_CHECK_INTERVAL = 0.1


ACCEPTS_PER_WAKE = 64


READ_SIZE = 65536


# http.server reads a line of at most 64 KiB; a head beyond this is handed to it to refuse (414, 431).
MAX_REQUEST_HEAD = 65536 + 1024


class LoopServer(HTTPServer):
    """The HTTP server: one serving loop, and a thread for each request that has arrived in full.

    The loop accepts connections, does their TLS handshakes and reads their first request without blocking,
    on all of them at once; only a connection whose request line and headers are all in gets a thread. A
    silent or trickling client costs a descriptor and a few bytes, not a thread, and making room for a new
    connection closes it at once. A thread then serves that connection, kept alive, until it closes."""

    def __init__(self, address: Any, family: socket.AddressFamily, handler: type[BaseHTTPRequestHandler],
                 source: MetricsSource, web_config: LiveWebConfig | None, max_requests: int, max_connections: int,
                 request_timeout: float, listening_socket: socket.socket | None = None) -> None:
        self.address_family = family
        self.request_queue_size = listen_backlog()
        self.source = source
        self.landing_page = LandingPage(source)  # what the handler serves at /
        self.web_config = web_config
        self.tls = web_config is not None and web_config.tls  # a reload never turns it on or off
        # As node_exporter's --web.max-requests: scrapes beyond the limit get 503 at once instead of piling
        # up threads; 0 means no limit.
        self.scrape_slots = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self.connections = ConnectionTable(connection_limit(max_connections), request_timeout)
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
            super().__init__(address, handler)
            return
        super().__init__(address, handler, bind_and_activate=False)
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
                        if isinstance(key.data, Connection):
                            self._close_in_loop(key.data, selector)
                    self._close_shut_down(selector)
                now = time.monotonic()
                if now >= next_expiry:
                    next_expiry = now + EXPIRY_CHECK_INTERVAL
                    self.connections.expire(now)
                    self._close_shut_down(selector)
        finally:
            for key in list(selector.get_map().values()):
                if isinstance(key.data, Connection):
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

    def _advance(self, entry: Connection, selector: selectors.BaseSelector) -> None:
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

    def _start_tls(self, entry: Connection, selector: selectors.BaseSelector) -> bool:
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

    def _hand_to_thread(self, entry: Connection) -> None:
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

    def _close_in_loop(self, entry: Connection, selector: selectors.BaseSelector) -> None:
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

    def _serve_connection(self, entry: Connection) -> None:
        self._current.connection = entry
        try:
            self.RequestHandlerClass(entry.socket, entry.client_address, self)  # type: ignore[arg-type]
        except Exception:
            self.handle_error(entry.socket, entry.client_address)
        finally:
            self.connections.forget(entry)  # before its descriptor is closed, which a new connection may reuse
            self.shutdown_request(entry.socket)

    def current_connection(self) -> Connection | None:
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
