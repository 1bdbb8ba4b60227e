"""fraisier_textfile: Fraisier's deployment metrics from short-lived processes, for Prometheus.

``get_metrics_recorder()`` / ``MetricsRecorder`` record events into a dedicated registry and merge them
into ``<textfile dir>/fraisier.prom``, which node_exporter's textfile collector or ``fraisier metrics``
serve. ``fraisier_textfile.metrics`` is Fraisier's ``fraisier.metrics`` module, name for name.

The layers, data flowing one way: ``recorder/`` (this process's series, Fraisier's API) and ``cli/`` hand changes
to ``store/`` (one directory shared by processes), which reads and writes the file through ``format/`` (pure:
bytes in, bytes out); ``serve/`` reads the file back. ``catalogue`` is Fraisier's families, one schema among any.

Glossary. A *merge* adds a process's *changes* (what its events add to which series) to ``fraisier.prom`` as one
*transaction* (store/transaction.py): under the lock, the file is loaded, each *participant* (one per protocol: the
in-flight markers, the hand-overs, *sources* such as Fraisier's state database, the lifecycle) *collects* its part,
the changes are *applied* (each family by its merge rule), and the new file is written and renamed over the old one;
every participant keeps its *bookkeeping line* (``# fraisier_textfile <key>: ...``, format/bookkeeping.py) in that
same rename, so a process killed at any point leaves all of it or none. A *hand-over* is a file of changes a process
could not merge because the lock stayed busy: the next merge of any process applies it once and lists it as
*applied* until the file is gone; every holder of the lock looks for *late* hand-overs after releasing it, and a
call's *follow-up* (the try once more after its hand-over, the look after its merge) is a recorder's background
thread's (recorder/process.py), the caller's own elsewhere (the CLI). While writers race, a record call *joins* the
hand-overs waiting (hands over behind them without trying the lock) and leaves their merge to that thread
(store/group_commit.py). The *lock-wait budget* bounds what a process spends writing and *refills* at that much a
minute. A merge holds the *replaced version* (the file its rename unlinks) open until after the rename and has a
*closer* thread close it, off the call, so that freeing it costs the call nothing (store/files.py); the exit waits
for closers. A *deployment in flight* is one a process runs
(store/deployments.py): its *marker* is a file held (locked) while it runs, so every merge counts it active; once
its end is written the marker is *released*, and a marker whose process died unreleased counts the deployment
``crashed``. A marker whose deployment the file accounts for (ended, or counted crashed) is *retired*: listed until
its file is removed, so that nothing is counted twice. The *layout line* lists the file's blocks with checksums: a
file whose bytes still match it is *vouched* for and read as written, without checking a line (a merge takes what
the line *claims* and checks the checksums while it writes, renaming nothing before they hold: store/vouching.py).
The series' update times are *held as bytes* (bookkeeping.RawValue), edited in place, decoded only by a merge that
needs every entry (an expiry). A block of ours in our canonical form is held as a *span* of the file's bytes, edited
where an event changes it without being split into lines (format/span.py). The *lifecycle* forgets, *expires* (drops
series not updated for long) and *bounds* series, and *migrates* histograms to new buckets. A *schema* is the
families a writer owns and rewrites, handed to the store as data; the *Fraisier store* (``fraisier_store.py``, the
public ``TextfileStore``) is the store opened with Fraisier's schema and its markers' rules. The textfile directory
is opened by a *walk* of its path, one directory at a time, following only symlinks where root or the process's own
user may write (store/walk.py); what root makes in another user's directory is *given* to that user (fs.give), and
only what it has *just made* (fs.just_made, ``O_EXCL``). The *dispatcher* is our ``fraisier`` script beside
Fraisier's commands; the *bridge* points Fraisier's ``fraisier.metrics`` at the textfile.
"""

from __future__ import annotations

# The one place: pyproject reads it, `fraisier-textfile --version` prints it; CHANGELOG.md's latest release.
__version__ = "0.2.0"

from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    InvalidValueError,
    LockTimeoutError,
    ServerStartError,
    TextfileError,
    TextfileWriteError,
    UnexpectedFileError,
    WebConfigError,
)

# typing is not imported here: the `fraisier` script imports this module before anything else, outside the
# CLI's paused collector (cli.LastingImports), and typing with re, enum and the rest it imports made the
# collector run over them there (bench/README.md). mypy reads any TYPE_CHECKING as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from fraisier_textfile.catalogue import DEPLOYMENT_STATUSES, FAMILIES, HEALTH_CHECK_STATUSES, Family
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.fraisier_store import FraisierStore as TextfileStore
    from fraisier_textfile.recorder.recorder import DeploymentMetrics, MetricsRecorder, Outcome, get_metrics_recorder
    from fraisier_textfile.serve.server import MetricsServer
    from fraisier_textfile.store.files import default_textfile_directory

__all__ = [
    "DEPLOYMENT_STATUSES",
    "FAMILIES",
    "HEALTH_CHECK_STATUSES",
    "Changes",
    "CorruptTextfileError",
    "DeploymentMetrics",
    "Family",
    "FraisierTextfileError",
    "InvalidValueError",
    "LockTimeoutError",
    "MetricsRecorder",
    "MetricsServer",
    "Outcome",
    "ServerStartError",
    "TextfileError",
    "TextfileStore",
    "TextfileWriteError",
    "UnexpectedFileError",
    "WebConfigError",
    "__version__",
    "default_textfile_directory",
    "get_metrics_recorder",
]

_RECORDER_NAMES = {"DeploymentMetrics", "MetricsRecorder", "Outcome", "get_metrics_recorder"}
_CATALOGUE_NAMES = {"DEPLOYMENT_STATUSES", "FAMILIES", "HEALTH_CHECK_STATUSES", "Family"}


def __getattr__(name: str) -> Any:
    # The recorder imports prometheus_client, the largest import of all (bench/bench_cli.py shows it): it is loaded
    # on first use, so that `fraisier record` (which never needs it) does not pay for it.
    if name in _RECORDER_NAMES:
        from fraisier_textfile.recorder import recorder

        return getattr(recorder, name)
    # Loaded on first use, so that importing a lower layer (format/ and store/, whose modules import this package
    # first) loads neither the layers above it nor Fraisier's catalogue: the store knows merge rules, not Fraisier.
    if name in _CATALOGUE_NAMES:
        from fraisier_textfile import catalogue

        return getattr(catalogue, name)
    if name == "TextfileStore":  # Fraisier's: the store with Fraisier's families and markers' rules
        from fraisier_textfile.fraisier_store import FraisierStore

        return FraisierStore
    if name == "default_textfile_directory":
        from fraisier_textfile.store.files import default_textfile_directory

        return default_textfile_directory
    if name == "Changes":
        from fraisier_textfile.changes import Changes

        return Changes
    if name == "MetricsServer":
        from fraisier_textfile.serve.server import MetricsServer

        return MetricsServer
    raise AttributeError(f"module 'fraisier_textfile' has no attribute {name!r}")
