"""What `fraisier metrics` serves: the textfile (with its live active-deployments count), or a registry, rendered
once per version and gzipped once."""

from __future__ import annotations

import gzip
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    LockTimeoutError,
    TextfileError,
    UnexpectedFileError,
)
from fraisier_textfile.format.model import Block, Document
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.files import FileVersion
from fraisier_textfile.store.inflight import ServedActive
from fraisier_textfile.store.textfile import TextfileStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


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
    in_flight: ServedActive | None = None
    """The active-deployments block, between ``before`` and ``after``, counted live (None: the store counts none)."""
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
        """Merge what is new for the file, so that this scrape shows it: what the store's sources (Fraisier's
        state database) hold, a deployment Fraisier finished, and the hand-overs that no merge of this server
        saw. Writers that raced and exited while the lock was busy can leave their last hand-overs waiting (a
        merge applies only so many), and on a quiet host no record call comes to merge them. A source says
        cheaply whether anything changed, the hand-over directory by its time and then a listing; only then is
        the file merged, without waiting for its lock (busy: the next scrape, or its holder, takes it). One scrape
        looks and merges at a time; the others serve the file as it is. Never fails a scrape."""
        if time.monotonic() < self._news_retry_at:
            return
        if not self._taking_news.acquire(blocking=False):
            return
        try:
            if not any(getattr(source, "has_news", lambda: True)() for source in self.store.sources) \
                    and not self.store.handovers_waiting():
                return
            self.store.merge(Changes(), timeout=0)
        except LockTimeoutError:
            pass  # another process is merging: the next scrape tries again
        except FraisierTextfileError as error:
            # A directory this server may only read (systemd's BindReadOnlyPaths) fails every merge: the
            # refresh timer takes Fraisier's state and the hand-overs there, and scrapes do not try again at once.
            self._news_retry_at = time.monotonic() + NEWS_RETRY_SECONDS
            log.debug("Fraisier's state or hand-overs not merged at this scrape: %s", error)
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
                document = self.store.parse_data(data, check_histograms=False)  # served as written
                snapshot = _split(version, document, self.store)
            except FraisierTextfileError as error:
                snapshot = _Snapshot(version, error=_unservable(self.store, error))
            if current is not None and current.version is not None:
                current.version.close()
            self._snapshot = snapshot
            return snapshot

    def _live_block(self, snapshot: _Snapshot) -> str:
        if snapshot.in_flight is None:
            return ""
        try:
            return snapshot.in_flight.render()
        except FraisierTextfileError as error:
            raise _unservable(self.store, error) from None


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


def _split(version: FileVersion | None, document: Document, store: TextfileStore) -> _Snapshot:
    for family in store.schema.families:
        document.block(family)
    in_flight = store.served_in_flight(document)
    blocks = list(document.blocks.values())
    if in_flight is None:
        return _Snapshot(version, before=_served(blocks))
    position = next(n for n, block in enumerate(blocks) if block.name == in_flight.family.name)
    # The retired-markers comment is the store's bookkeeping, not a metric: it is not served.
    return _Snapshot(
        version,
        before=_served(blocks[:position]),
        after=_served(blocks[position + 1 :]),
        in_flight=in_flight,
    )


def _served(blocks: list[Block]) -> bytes:
    """The blocks as served: their bytes, without the file's meta lines (the store's bookkeeping, not metrics)."""
    return b"".join(part for block in blocks for part in block.parts())
