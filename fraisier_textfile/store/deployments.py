"""A deployment this process runs, as the store sees it: started with its in-flight marker, ended by the changes
that retire the marker, its marker released once those changes are written.

This is the writer's side of the in-flight markers' protocol (markers.py writes and reads the files,
inflight.py accounts for them in every merge). Its one rule is an order: a deployment's marker is held while
the deployment runs, and released only once the changes recording its end (which list the marker's id in
``Changes.retired_markers``) are merged or handed over. Released before, the marker of a live deployment whose
end is not in the file yet would be counted crashed by the next merger, and its end counted again later; never
released, it is alive until this process exits. So the end goes into the changes through :meth:`Changes.end_deployment`
(store/changes.py), and the store releases the markers of the deployments those changes end once it wrote them
(``TextfileStore.merge`` and ``hand_over``): a process killed in between leaves its marker to the kernel, which
drops its lock, and to the next merge, which counts the deployment once (crashed if its end was not written,
ended if it was).

A marker that cannot be written never stops the deployment: it is then recorded when it ends, but other processes
do not see it in flight meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fraisier_textfile.errors import FraisierTextfileError, write_error
from fraisier_textfile.logger import get_logger
from fraisier_textfile.store.markers import Marker, create_marker, marker_directory

log = get_logger(__name__)

MarkerProblem = Callable[[BaseException, str], None]
"""Told why a deployment's marker could not be written, and where (the marker directory), from inside the except
clause (a traceback can be logged): a FraisierTextfileError (TextfileWriteError for the system's errors), or any
other exception (a bug)."""


class Deployment:
    """A deployment started by this process and not yet written as ended."""

    __slots__ = ("_marker", "fraise_type", "provider")

    def __init__(self, provider: str, fraise_type: str, marker: Marker | None) -> None:
        self.provider = provider
        self.fraise_type = fraise_type
        self._marker = marker

    @property
    def marker_id(self) -> str | None:
        """The id its end retires; None when its marker could not be written (other processes do not see it)."""
        return None if self._marker is None else self._marker.id

    def written(self) -> None:
        """The changes that end it are merged or handed over: its marker is released (it is no longer alive)."""
        if self._marker is None:
            return
        try:
            self._marker.release()
        except OSError as error:  # the end is written: nothing may fail the call that wrote it
            log.debug("releasing the marker %s failed: %r", self._marker.id, error)


def start(directory: str, provider: str, fraise_type: str, problem: MarkerProblem) -> Deployment:
    """A deployment of ``fraise_type`` on ``provider`` starts now in this process: its marker is written in the
    textfile directory ``directory`` and held. Never raises: a marker that cannot be written is told to ``problem``,
    and the deployment goes on without it. The label values are the caller's to check."""
    marker: Marker | None = None
    try:
        marker = create_marker(directory, provider, fraise_type)
    except (OSError, FraisierTextfileError) as error:
        where = marker_directory(directory)
        problem(error if isinstance(error, FraisierTextfileError) else write_error(where, "write a marker in", error),
                where)
    except Exception as error:  # whatever a probe of the directory raises, the deployment goes on
        problem(error, marker_directory(directory))
    return Deployment(provider, fraise_type, marker)


def release_written(deployments: Iterable[Deployment]) -> None:
    """The changes that end ``deployments`` are merged or handed over: their markers are released."""
    for deployment in deployments:
        deployment.written()
