"""The connection table (fraisier_textfile/serve/connection_table.py): which connection is closed to make room, when
a waiting one has missed its deadline, and that a connection is never closed twice or after it was forgotten. Real
connected sockets (socket pairs); the far end of each shows what the table did to it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from fraisier_textfile.serve.connection_table import CONNECTION_TIMEOUT, Connection, ConnectionTable


class Pairs:
    """Connected socket pairs: the table gets one end, the test keeps the other (the client)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.clients: dict[int, socket.socket] = {}

    def admit(self, table: ConnectionTable) -> Connection | None:
        ours, client = socket.socketpair()
        self.sockets += [ours, client]
        entry = table.admit(ours, ("127.0.0.1", 0))
        if entry is not None:
            self.clients[id(entry)] = client
        return entry

    def shut_down_by_the_table(self, entry: Connection) -> bool:
        """Whether the client sees the end of the stream: the table shut the connection down (SHUT_RDWR)."""
        client = self.clients[id(entry)]
        client.settimeout(5)
        return client.recv(1) == b""


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    made = Pairs()
    yield made
    for each in made.sockets:
        each.close()


def served(table: ConnectionTable, entry: Connection | None) -> Connection:
    """The serving loop hands the connection to a thread, whose handler has read a whole request."""
    assert entry is not None
    table.hand_to_thread(entry)
    table.request_arrived(entry)
    return entry


def kept_alive(table: ConnectionTable, entry: Connection | None) -> Connection:
    """Served, then its response sent: waiting for its next request."""
    entry = served(table, entry)
    table.waiting_again(entry)
    return entry


def test_at_the_limit_the_longest_waiting_new_connection_makes_room_before_any_kept_alive_one(pairs: Pairs) -> None:
    table = ConnectionTable(limit=3, request_timeout=10.0)
    scraper = kept_alive(table, pairs.admit(table))
    first, second = pairs.admit(table), pairs.admit(table)
    assert first is not None and second is not None and len(table) == 3
    third = pairs.admit(table)
    assert third is not None and len(table) == 3
    assert table.take_closed() == [first]  # the loop owns it (no thread yet): the loop closes it
    assert first.closing and not second.closing and not scraper.closing
    assert table.closed_for_room == 1 and table.refused == 0


def test_with_no_new_connection_waiting_the_kept_alive_one_idle_longest_makes_room(pairs: Pairs) -> None:
    table = ConnectionTable(limit=2, request_timeout=10.0)
    idle_longest = kept_alive(table, pairs.admit(table))
    idle_since = kept_alive(table, pairs.admit(table))
    assert served(table, pairs.admit(table)) is not None
    assert idle_longest.closing and not idle_since.closing
    assert pairs.shut_down_by_the_table(idle_longest)  # in a thread: shut down, for the thread to close
    assert table.take_closed() == []


def test_when_every_connection_is_being_served_a_new_one_is_refused(pairs: Pairs) -> None:
    table = ConnectionTable(limit=2, request_timeout=10.0)
    busy = [served(table, pairs.admit(table)) for _ in range(2)]
    assert pairs.admit(table) is None
    assert table.refused == 1 and not any(entry.closing for entry in busy)


def test_connections_shut_down_but_not_yet_closed_count_against_twice_the_limit(pairs: Pairs) -> None:
    """A connection shut down to make room keeps its descriptor until its thread lets go: live and closing ones
    together stay within twice the limit, so a flood cannot run the process out of descriptors meanwhile."""
    table = ConnectionTable(limit=1, request_timeout=10.0)
    kept_alive(table, pairs.admit(table))
    waiting = pairs.admit(table)  # makes room: the kept-alive one is shut down, its thread has not closed it yet
    assert waiting is not None
    assert pairs.admit(table) is None  # two descriptors held for a limit of one: refused, although one waits
    assert not waiting.closing


def test_a_waiting_connection_is_shut_down_once_its_deadline_passes_however_recently_it_spoke(pairs: Pairs) -> None:
    table = ConnectionTable(limit=10, request_timeout=10.0)
    before = time.monotonic()
    new = pairs.admit(table)
    kept = kept_alive(table, pairs.admit(table))
    busy = served(table, pairs.admit(table))
    assert new is not None
    table.expire(before + 9.0)
    assert table.expired == 0
    table.expire(time.monotonic() + 10.0)  # the new one's deadline, fixed when it was accepted
    assert table.expired == 1 and table.take_closed() == [new]
    assert not kept.closing
    table.expire(time.monotonic() + CONNECTION_TIMEOUT)
    assert table.expired == 2 and pairs.shut_down_by_the_table(kept)
    assert not busy.closing  # a connection being served has no deadline of the table's


def test_a_forgotten_connection_is_never_shut_down_by_the_table(pairs: Pairs) -> None:
    """Its thread forgets it before closing its descriptor, which a newer connection may then reuse: shutting it
    down by that number would cut off the newer one."""
    table = ConnectionTable(limit=2, request_timeout=10.0)
    forgotten = kept_alive(table, pairs.admit(table))
    table.forget(forgotten)
    table.request_arrived(forgotten)  # what its handler still says of it cannot bring it back into the table
    table.waiting_again(forgotten)
    table.close_all()
    table.expire(time.monotonic() + 2 * CONNECTION_TIMEOUT)
    client = pairs.clients[id(forgotten)]
    forgotten.socket.sendall(b"still open")
    assert client.recv(10) == b"still open"
    assert len(table) == 0 and table.expired == 0


def test_close_all_shuts_down_every_connection_each_once(pairs: Pairs) -> None:
    table = ConnectionTable(limit=4, request_timeout=10.0)
    new = pairs.admit(table)
    kept = kept_alive(table, pairs.admit(table))
    busy = served(table, pairs.admit(table))
    table.close_all()
    assert table.take_closed() == [new]
    assert pairs.shut_down_by_the_table(kept) and pairs.shut_down_by_the_table(busy)
    table.close_all()
    assert table.take_closed() == []  # not handed to the loop a second time
