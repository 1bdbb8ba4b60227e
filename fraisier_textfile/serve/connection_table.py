"""The connections a server holds, and the two bounds that keep silent clients from locking Prometheus out: at
most ``limit`` held at once (at the limit, the one waiting longest without a whole request is closed for the
new one), and a deadline by which a waiting connection's whole request must have arrived, which trickled
bytes do not push back. The serving loop (``connections``) and the request handler (``server``) tell the
table where each connection is; the table decides which to close, and never blocks on a socket."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)


# The most connections held at once, as Prometheus's own --web.max-connections.
DEFAULT_MAX_CONNECTIONS = 512


# A new connection's TLS handshake, request line and headers must all have arrived this many seconds after
# it was accepted (Go's ReadHeaderTimeout, with the handshake in it): a scraper sends its request at once.
REQUEST_TIMEOUT = 10.0


# A kept-alive connection's next request must have arrived in full this many seconds after the last response
# (Prometheus scrapes every 15 s by default and keeps its connection); also the socket timeout of each read
# and write.
CONNECTION_TIMEOUT = 30.0


LIMIT_WARNING_INTERVAL = 60.0


class Connection:
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


class ConnectionTable:
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
        self._held: set[Connection] = set()
        """Every connection whose descriptor is open: waiting, served, or shut down and not yet closed."""
        self._new: OrderedDict[Connection, None] = OrderedDict()
        """Live connections waiting for their first request, the longest waiting first."""
        self._kept: OrderedDict[Connection, None] = OrderedDict()
        """Live kept-alive connections waiting for their next request, the longest idle first."""
        self._served: set[Connection] = set()
        self.closed_for_room = 0
        self.refused = 0
        self.expired = 0
        self._warned_at: float | None = None
        self._for_the_loop: list[Connection] = []
        """Connections shut down while the serving loop owns them: it closes them (take_closed)."""

    def admit(self, connection: socket.socket, client_address: Any) -> Connection | None:
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
                entry = Connection(connection, client_address, time.monotonic() + self.request_timeout)
                self._held.add(entry)
                self._new[entry] = None
        if made_room or refused:
            self._warn_at_the_limit()
        return entry

    def make_room(self) -> None:
        """Shut down the connection that has been waiting longest, if any."""
        with self._lock:
            self._make_room()

    def hand_to_thread(self, connection: Connection) -> None:
        with self._lock:
            connection.in_thread = True
            if connection.closing:  # shut down meanwhile: the thread finds it at end of file
                self._shut_down(connection)

    def take_closed(self) -> list[Connection]:
        """The connections the serving loop owns that were shut down (made room for, expired): the loop
        unregisters and closes them."""
        with self._lock:
            taken, self._for_the_loop = self._for_the_loop, []
            return taken

    def request_arrived(self, connection: Connection | None) -> None:
        with self._lock:
            if connection is None or connection.closing:
                return
            self._new.pop(connection, None)
            self._kept.pop(connection, None)
            self._served.add(connection)

    def waiting_again(self, connection: Connection | None) -> None:
        """A response was sent on a kept-alive connection: the next request must arrive in full within
        CONNECTION_TIMEOUT."""
        with self._lock:
            if connection is None or connection.closing:
                return
            self._served.discard(connection)
            connection.deadline = time.monotonic() + CONNECTION_TIMEOUT
            self._kept[connection] = None

    def forget(self, connection: Connection) -> None:
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

    def _shut_down(self, connection: Connection) -> None:
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
