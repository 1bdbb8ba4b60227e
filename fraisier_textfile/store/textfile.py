"""The textfile store: the API every writer and reader of one textfile directory calls.

Every process merges what it recorded since its last flush into ``<directory>/fraisier.prom``, which
node_exporter's textfile collector (or ``fraisier metrics``) serves:

    lock fraisier.prom.lock -> read fraisier.prom (or reuse what this process wrote last) -> apply the
    hand-overs waiting in .fraisier-handover/ -> merge -> render -> write .fraisier.prom.tmp.<random> -> fsync
    -> rename over fraisier.prom -> unlock -> fsync dir -> delete the hand-overs applied

The file holds the true totals over every process that ever ran: counters and histograms are summed, so an
increment is neither lost nor counted twice whatever number of processes race, and a process killed at any
moment leaves either the old file or the new one, never a partial one. A process that cannot get the lock in
time may hand its changes over (see handovers.py) instead of waiting longer.

Who does what: :class:`TextfileStore` builds the participants in their order and keeps the public methods;
group_commit.py holds the hand-over policy around a merge (merge or hand over, the hand-overs that arrived during
one); transaction.py runs each merge; files.py reads the file and writes its new versions.

The store's paths are only ever what it created: fraisier.prom and the lock a regular file, its directories
directories. Anything else there (a symlink, a FIFO, a device) is refused with UnexpectedFileError, never
followed and never opened in a way that could block.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from fraisier_textfile import logger, validate
from fraisier_textfile.errors import CorruptTextfileError
from fraisier_textfile.format.model import Document
from fraisier_textfile.format.schema import Schema
from fraisier_textfile.store import fs, handovers, inflight
from fraisier_textfile.store import markers as marker_files
from fraisier_textfile.store.changes import Changes
from fraisier_textfile.store.files import TEXTFILE_NAME, FileVersion, Textfile
from fraisier_textfile.store.group_commit import GroupCommit
from fraisier_textfile.store.lifecycle import LifecycleParticipant, SeriesLifecycle
from fraisier_textfile.store.lock import DEFAULT_LOCK_TIMEOUT, LOCK_SUFFIX, Lock
from fraisier_textfile.store.transaction import Participant, Transaction, count_running

if TYPE_CHECKING:
    from pathlib import Path

    from fraisier_textfile.store import deployments

log = logger.get_logger(__name__)


class TextfileStore:
    """One textfile directory: merges changes into ``fraisier.prom`` and reads it back."""

    def __init__(self, directory: fs.PathName, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, *, schema: Schema,
                 markers: inflight.MarkerRules | None = None, lifecycle: SeriesLifecycle | None = None,
                 participants: Iterable[Participant] = ()) -> None:
        """``schema``: the families this store's file owns and rewrites, with their merge rules (format/schema.py);
        changes merged must name families of it. ``markers``: what markers of deployments in flight count
        (inflight.MarkerRules); None, none (a store whose writers mark no deployments). The store knows no
        schema of its own: Fraisier's store (fraisier_store.py) hands it Fraisier's families and rules.
        ``lifecycle``: the settings of expiry and the series bound; by default read from the environment
        (``SeriesLifecycle.from_environment``, which raises InvalidValueError for a bad value).
        ``participants``: sources that take part in every merge (see store/transaction.py), after the markers
        and the hand-overs and before the lifecycle."""
        # The store works with strings: pathlib is loaded only by those who ask for the Path attributes below.
        self._directory = os.fspath(directory)
        self.schema = schema
        self.marker_rules = markers
        self._path = os.path.join(self._directory, TEXTFILE_NAME)
        self._lock_path = os.path.join(self._directory, TEXTFILE_NAME + LOCK_SUFFIX)
        self.lock_timeout = validate.check_seconds("lock timeout", lock_timeout)
        self.file = Textfile(self._directory, self.schema)
        """The file on disk: reading it, writing its new versions (files.py)."""
        # Expiry, the series bound, bucket migration and forgetting, run inside each merge (lifecycle.py).
        self.lifecycle = SeriesLifecycle.from_environment(self._path) if lifecycle is None else lifecycle
        self.sources: list[Participant] = list(participants)
        """The participants given (sources read under the lock), in their order."""
        self.handovers = handovers.Handovers()
        self.markers = None if markers is None else inflight.InFlightMarkers(markers)
        self.lifecycle.active = None if markers is None else markers.active
        # The order is the ordering rule (see transaction.py).
        order: list[Participant] = [
            *([self.markers] if self.markers is not None else []), self.handovers, *self.sources,
            LifecycleParticipant(self.lifecycle),
        ]
        litter = [(marker_files.open_directory, marker_files.remove_stale_temporaries),
                  (handovers.open_directory, handovers.remove_stale_temporaries)]
        self.transaction = Transaction(self.file, Lock(self._lock_path), order, self.sources, litter)
        """Each merge, from the lock to the clean-up after the rename, over the participants (transaction.py)."""
        self.group_commit = GroupCommit(self._directory, self.file, self.transaction, self.handovers, self.schema)
        """The hand-over policy around each merge: merge or hand over, and what each owes the others' hand-overs
        (group_commit.py)."""

    @property
    def directory(self) -> Path:
        """The textfile directory."""
        from pathlib import Path

        return Path(self._directory)

    @property
    def path(self) -> Path:
        """``fraisier.prom`` in it."""
        from pathlib import Path

        return Path(self._path)

    @property
    def lock_path(self) -> Path:
        """Its lock, ``fraisier.prom.lock``."""
        from pathlib import Path

        return Path(self._lock_path)

    # Reading

    def read(self) -> Document:
        """The file as it is now, without taking the lock: it is only ever replaced whole, so a reader sees
        the old file or the new one. A missing file is an empty document. Histograms with other bounds than
        the catalogue's are read as they are: the next merge migrates them (migration.migrate_histogram)."""
        return self.read_version(check_histograms=False)[1]

    def read_version(self, check_histograms: bool = True) -> tuple[FileVersion | None, Document]:
        """The file as :meth:`read` gives it, and the version of exactly the bytes read (None if there is no
        file): a reader can skip reading again while ``version.is_current()``."""
        version, data = self.read_data()
        return version, self.parse_data(data, check_histograms)

    def read_text(self) -> tuple[FileVersion | None, str]:
        """The file's text ("" if there is none) and its version, unparsed (see :meth:`read_data`)."""
        version, data = self.read_data()
        try:
            return version, data.decode("utf-8")
        except UnicodeDecodeError as error:
            if version is not None:
                version.close()
            raise CorruptTextfileError(self._path, f"not UTF-8 text (byte {error.start})") from None

    def read_data(self) -> tuple[FileVersion | None, bytes]:
        """The file's bytes (empty if there is none) and its version, unparsed. Anything but a regular file at
        the path (a symlink, a FIFO, a device, a directory) is refused without being followed or read."""
        return self.file.read_data()

    def parse_data(self, data: bytes, check_histograms: bool = True) -> Document:
        """The document of the file's bytes (see format.reader.parse_bytes: one this package wrote is not
        checked line by line again)."""
        return self.file.parse_data(data, check_histograms)

    def active_deployments(self, retired_markers: Collection[str]) -> dict[str, int]:
        """Deployments running now in live processes, by provider (for a reader serving the file live).
        ``retired_markers`` are those the file already accounts for (``inflight.RETIRED_MARKERS``)."""
        counts: dict[str, int] = {}
        textfile = fs.open_directory(self._directory)
        if textfile is not None and self.markers is not None:
            with textfile:
                counts = self.markers.active_deployments(textfile, retired_markers)
        count_running(self.sources, counts)
        return counts

    def served_in_flight(self, document: Document) -> inflight.ServedActive | None:
        """What a reader serving ``document`` live shows of the deployments in flight (see
        inflight.ServedActive): taken from the document now, counted from the markers at each render. None: this
        store counts no deployments in flight (no marker rules)."""
        if self.marker_rules is None:
            return None
        family = self.marker_rules.active
        block = document.block(family)
        return inflight.ServedActive(family, tuple(block.lines), inflight.RETIRED_MARKERS.get(document),
                                     self.active_deployments)

    # Deployments in flight

    def start_deployment(
        self, provider: str, fraise_type: str, problem: deployments.MarkerProblem
    ) -> deployments.Deployment:
        """A deployment of ``fraise_type`` on ``provider`` starts in this process: its in-flight marker is written
        and held, so that every process counts it active, and the first merge after this process's death counts it
        crashed. Its end goes into the changes that record it (``changes.end_deployment(deployment)``); the marker
        is released once this store merged or handed them over (store/deployments.py). Never raises: a marker that
        cannot be written is told to ``problem`` and the deployment goes on without it."""
        from fraisier_textfile.store import deployments

        return deployments.start(self._directory, provider, fraise_type, problem)

    # Merging

    def merge(self, changes: Changes, *, timeout: float | None = None) -> None:
        """Merge ``changes``, and every hand-over waiting, into the textfile under the lock, waiting for it
        at most ``timeout`` seconds (None: the store's lock timeout; 0: not at all). On success ``changes``
        is emptied, and the markers of the deployments it ends are released. On any error nothing is written,
        the file is left byte-identical, and ``changes`` is untouched so that it can be merged again later.
        Raises only FraisierTextfileError subclasses (LockTimeoutError when the lock stayed busy)."""
        self.group_commit.merge(changes, self.lock_timeout if timeout is None else timeout)

    def hand_over(self, changes: Changes, *, durable: bool = True) -> None:
        """Write ``changes`` for the next merge by any process to apply exactly once, without the lock, and
        empty ``changes``. ``durable``: fsynced (two fsyncs, milliseconds on a disk), so that they survive a
        power loss; without, they survive this process's death, not the machine's. Once written, the markers of
        the deployments they end are released. Raises TextfileWriteError (``changes`` untouched) if they cannot be
        written."""
        self.group_commit.hand_over(changes, durable=durable)

    def merge_or_hand_over(self, changes: Changes, wait: float, *, durable: bool = True, follow_up: bool = True,
                           join: bool = False) -> bool:
        """Merge ``changes``, waiting at most ``wait`` seconds for the lock; if it stays busy, hand them over.
        True: merged now. False: handed over; the next merge by any process writes them (this process tries
        once more at once). Either way ``changes`` is emptied. Raises what :meth:`merge` raises for other
        problems (a corrupt file, a full disk), with ``changes`` untouched. ``follow_up=False`` leaves to the
        caller what the call owes the hand-over invariant once its own part is done (:attr:`late_handovers` says
        whether a merge is, :meth:`merge_waiting` makes it); ``join=True`` hands over behind the hand-overs
        waiting without trying the lock, if their counter says some wait (:attr:`joined`; see
        GroupCommit.merge_or_hand_over)."""
        return self.group_commit.merge_or_hand_over(changes, wait, durable=durable, follow_up=follow_up, join=join)

    @property
    def late_handovers(self) -> bool:
        """After :meth:`merge_or_hand_over` with ``follow_up=False``: whether the caller owes a merge of the
        hand-overs waiting (see GroupCommit.late_handovers)."""
        return self.group_commit.late_handovers

    @property
    def joined(self) -> bool:
        """After :meth:`merge_or_hand_over`: whether it joined the hand-overs waiting (``join=True``)."""
        return self.group_commit.joined

    def merge_waiting(self, seen: Collection[str] = (), *, look: bool = True) -> bool:
        """Merge the hand-overs waiting that no merge by this store has seen (nor are in ``seen``), if there are
        any and the lock is free, without waiting for it (``look=False``: without listing them first). True:
        none is left waiting by this try; False: the lock was busy or the merge failed. Never raises
        FraisierTextfileError (see GroupCommit.merge_waiting)."""
        return self.group_commit.merge_waiting(seen, look=look)

    def handovers_waiting(self) -> bool:
        """Whether hand-overs wait in the directory that no merge by this store has seen yet."""
        return self.group_commit.handovers_waiting()

    def merge_backlog(self, *, timeout: float | None = None) -> None:
        """Merge until no hand-over is left (each merge applies at most handovers.HANDOVERS_PER_MERGE), and return
        once the files of those applied are deleted: for a command whose job is a complete file and a tidy
        directory (``fraisier textfile refresh``), not for a record call. Raises what :meth:`merge` raises."""
        self.group_commit.merge_backlog(self.lock_timeout if timeout is None else timeout)
