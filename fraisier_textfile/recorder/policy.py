"""The never-raise policy: metrics never fail or stop a deployment.

A problem (a bad value, an unwritable directory, a busy lock, a bug of ours) is noted instead of raised: logged
once per kind, textfile directory and process (and again only once it was resolved and came back), kept for
``get_metrics_summary()`` until the textfile is written again, and raised at the end of the call only by a
strict recorder (for tests). ``never_raising`` applies this to every public record method, ``Problems.guarded``
to each step of a tracked block; the rest of the recorder reports through ``Problems.note``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fraisier_textfile.errors import FraisierTextfileError, InvalidValueError
from fraisier_textfile.recorder import process

if TYPE_CHECKING:
    from fraisier_textfile.recorder.recorder import MetricsRecorder

# Every line of the recorder's, whichever module writes it, under the name of the module users import it from.
log = logging.getLogger("fraisier_textfile.recorder.recorder")

LOCK_BUSY = "lock busy"
"""The problem kind of a record call that found the lock busy and handed its events over: logged once per
process and directory, as a warning."""


class Problems:
    """A recorder's problems: noted, logged once, shown by the summary until resolved, raised only if strict."""

    def __init__(self, directory: str, textfile: str, *, strict: bool) -> None:
        self.strict = strict
        self._directory = directory
        self._textfile = textfile
        self.unresolved: dict[str, str] = {}
        """Problems not yet resolved, by kind: what went wrong and how to fix it."""
        self.last_error: str | None = None
        self.dropped_events = 0
        self.noted: list[BaseException] = []
        """The problems of the call under way: a strict recorder raises the first once the call is done."""

    def note(self, kind: str, message: str, error: BaseException | None, exc_info: bool = False) -> None:
        """A problem: logged once per kind and process (and again only after it was resolved), kept for the
        summary, and raised at the end of the call by a strict recorder."""
        self.unresolved[kind] = message
        self.last_error = message
        key = (self._directory, kind)
        # One cause, one line: a full disk fails the marker and then the merge; the second says nothing new.
        cause = getattr(error, "errno", None)
        cause_key = (self._directory, f"errno {cause}") if isinstance(cause, int) else None
        if cause_key is not None and cause_key in process.logged_problems:
            process.logged_problems.add(key)
        if key not in process.logged_problems:
            process.logged_problems.add(key)
            if cause_key is not None:
                process.logged_problems.add(cause_key)
            # A busy lock loses nothing (the events were handed over): a warning, not an error.
            log.log(logging.WARNING if kind == LOCK_BUSY else logging.ERROR, "fraisier metrics: %s", message)
            if exc_info:  # one line in the deployment's log; the traceback, for a bug report, at debug level
                log.debug("fraisier metrics: where %s came from", kind, exc_info=True)
        else:
            log.debug("fraisier metrics: %s", message)
        self.noted.append(error if error is not None else FraisierTextfileError(message))

    def dropped_value(self, what: str, error: InvalidValueError) -> None:
        self.dropped_events += 1
        # One kind per call and argument: `status` and `duration` problems of one method are logged apart.
        argument = str(error).split("=", 1)[0].split(" ", 1)[0]
        kind = f"value {what} {argument}"
        self.note(kind, f"{what}: {error}; the event was not recorded", error)
        self.unresolved.pop(kind)  # a dropped value is reported, but it is not a lasting state

    def write_problem(self, error: Exception) -> None:
        message = str(error)
        if isinstance(error, OSError):
            message = f"cannot write {self._textfile}: {error}; check the textfile directory"
        elif not isinstance(error, FraisierTextfileError):
            message = (f"writing {self._textfile} failed unexpectedly: {error!r}; please report this as a bug of "
                       "fraisier_textfile (the events are handed over to the next merge)")
        self.note(f"write {type(error).__name__}", message, error,
                  exc_info=not isinstance(error, (OSError, FraisierTextfileError)))

    def resolved(self) -> None:
        """The textfile was written: problems of writing it are over (and are logged again if they come back)."""
        directory = self._directory
        process.logged_problems.difference_update(
            [key for key in process.logged_problems if key[0] == directory and key[1].startswith("errno ")]
        )
        for kind in [kind for kind in self.unresolved if kind.startswith(("write ", LOCK_BUSY, "marker"))]:
            del self.unresolved[kind]
            if kind != LOCK_BUSY:
                # Logged again if it comes back. A busy lock is not: under contention writers take turns, and
                # each turn would log the line again (dozens a second with 8 processes racing).
                process.logged_problems.discard((directory, kind))
            log.info("fraisier metrics: %s is written again", self._textfile)

    def guarded(self, what: str, function: Callable[..., Any], *arguments: object) -> Any:
        """``function(*arguments)``, or None when it raised: the problem is noted."""
        try:
            return function(*arguments)
        except InvalidValueError as error:
            self.dropped_value(what, error)
        except Exception as error:
            self.note(f"unexpected {what}", f"{what} failed unexpectedly: {error!r}; please report this as a "
                      "bug of fraisier_textfile", error, exc_info=True)
        return None

    def raise_first(self) -> None:
        """A strict recorder's end of a call that noted problems: the first is raised, once."""
        problem = self.noted[0]
        self.noted.clear()
        raise problem

    def after_fork(self) -> None:
        self.noted = []


_Method = TypeVar("_Method", bound=Callable[..., None])


def never_raising(method: _Method) -> _Method:
    """A public recording method: a metrics problem is noted (logged once, kept for the summary) instead of
    raised, except by a strict recorder, which raises the first problem of the call once the call is done."""
    name = "a DeploymentMetrics write" if method.__name__ == "_write_family" else method.__name__

    @functools.wraps(method)
    def call(self: MetricsRecorder, *arguments: Any, **keywords: Any) -> None:
        problems = self._problems
        writer = self._writer
        # The batch is inlined rather than `with writer.batch()`: this is the record call's hot path.
        with writer.lock:
            noted = problems.noted
            if noted:
                noted.clear()
            depth = writer.depth
            writer.depth = depth + 1
            try:
                if keywords:
                    method(self, *arguments, **keywords)
                else:
                    method(self, *arguments)
            except InvalidValueError as error:
                problems.dropped_value(name, error)
            except Exception as error:  # a bug of ours must not stop a deployment either
                problems.note(f"unexpected {name}", f"{name} failed unexpectedly: {error!r}; please report this "
                              "as a bug of fraisier_textfile (the event was not recorded)", error, exc_info=True)
            finally:
                writer.depth = depth
                if not depth:
                    if writer.auto_flush:
                        writer.settle()
                    else:  # what settle does then, without the call
                        process.unflushed.add(writer)
            if noted and problems.strict:
                problems.raise_first()

    return call  # type: ignore[return-value]
