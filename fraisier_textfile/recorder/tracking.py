"""Tracked blocks: ``with recorder.track_deployment(...)`` (and ``track_rollback``, ``track_health_check``)
times a block and records how it ended.

The block's own exception always goes on, unchanged: no metrics problem replaces it, so even a strict recorder
raises its problems only when the block ended normally. An outcome that cannot be recorded as given (a status
that is none of the family's, an exception whose class name cannot be a label value) is recorded as its
fallback and noted. A tracked deployment is in flight from the block's start and always ends with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fraisier_textfile import catalogue, changes, validate
from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.recorder.deployments import Deployments
from fraisier_textfile.recorder.policy import Problems
from fraisier_textfile.recorder.series import ProcessSeries
from fraisier_textfile.recorder.writer import Writer
from fraisier_textfile.store.deployments import Deployment


@dataclass
class Outcome:
    """What a tracked block reports: set ``status`` inside the block to record another status."""

    status: str


def error_type_of(error: BaseException) -> str:
    """The ``error_type`` label recorded for an exception: its class name."""
    return type(error).__name__


class Tracking:
    """A recorder's tracked blocks (the recorder's ``track_*`` methods say what each records)."""

    def __init__(self, series: ProcessSeries, problems: Problems, writer: Writer, deployments: Deployments) -> None:
        self._series = series
        self._problems = problems
        self._writer = writer
        self._deployments = deployments

    @contextmanager
    def deployment(self, provider: str, fraise_type: str) -> Iterator[Outcome]:
        with self._writer.lock:
            self._problems.noted.clear()
            deployment = self._problems.guarded("track_deployment", self._deployments.start, provider, fraise_type)
            earlier = list(self._problems.noted)  # a strict recorder raises them once the block is over, not before
        outcome = Outcome("success")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException as error:
            self._finish_deployment(
                deployment, provider, fraise_type, "failed", time.monotonic() - started, error, earlier
            )
            raise
        self._finish_deployment(
            deployment, provider, fraise_type, outcome.status, time.monotonic() - started, None, earlier
        )

    @contextmanager
    def rollback(self, provider: str, reason: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self._finish(True, "track_rollback", self._series.record, changes.rollback, provider, reason,
                         time.monotonic() - started)
            raise
        self._finish(False, "track_rollback", self._series.record, changes.rollback, provider, reason,
                     time.monotonic() - started)

    @contextmanager
    def health_check(self, provider: str, check_type: str) -> Iterator[Outcome]:
        outcome = Outcome("pass")
        started = time.monotonic()
        try:
            yield outcome
        except BaseException:
            self._finish(True, "track_health_check", self._series.record, changes.health_check, provider,
                         check_type, "fail", time.monotonic() - started)
            raise
        duration = time.monotonic() - started

        def finish() -> None:
            status = self._checked_outcome(
                outcome.status, catalogue.HEALTH_CHECK_STATUSES, catalogue.FALLBACK_HEALTH_CHECK_STATUS
            )
            self._series.record(changes.health_check, provider, check_type, status, duration)

        self._finish(False, "track_health_check", finish)

    def _finish_deployment(
        self, deployment: Deployment | None, provider: str, fraise_type: str, status: object, duration: float,
        error: BaseException | None, earlier: list[BaseException],
    ) -> None:
        """The end of a tracked deployment: its outcome recorded (with fallbacks for what cannot be a label
        value) and, whatever happens, the deployment ended."""

        def finish() -> None:
            with self._writer.batch():
                try:
                    if error is not None:
                        changes.deployment_error(self._series, provider, self._error_type(error))
                    final = self._checked_deployment_status(status)
                    changes.deployment_complete(self._series, provider, fraise_type, final, duration)
                    self._series.events += 1
                finally:
                    self._deployments.end(deployment)

        self._finish(error is not None, "track_deployment", finish, earlier=earlier)

    def _error_type(self, error: BaseException) -> str:
        name = error_type_of(error)
        try:
            return validate.check_label_value("error_type", name)
        except InvalidValueError as problem:
            self._problems.note("error_type", f"{problem}; recorded as error_type={catalogue.FALLBACK_ERROR_TYPE}",
                                problem)
            return catalogue.FALLBACK_ERROR_TYPE

    def _checked_deployment_status(self, status: object) -> str:
        try:
            return catalogue.check_deployment_status(status)
        except InvalidValueError as problem:
            fallback = catalogue.FALLBACK_DEPLOYMENT_STATUS
            self._problems.note("outcome", f"a tracked deployment's outcome: {problem}; recorded as {fallback}",
                                problem)
            return fallback

    def _checked_outcome(self, status: object, allowed: tuple[str, ...], fallback: str) -> str:
        try:
            return validate.check_choice("status", status, allowed)
        except InvalidValueError as problem:
            self._problems.note("outcome", f"a tracked block's outcome: {problem}; recorded as {fallback}", problem)
            return fallback

    def _finish(
        self, block_raised: bool, what: str, function: Callable[..., object], *arguments: object,
        earlier: list[BaseException] | None = None,
    ) -> None:
        """Record the end of a tracked block. While the block's own exception propagates nothing may replace
        it, so even a strict recorder only raises a problem when the block ended normally."""
        with self._writer.lock:
            self._problems.noted[:] = earlier or []
            with self._writer.batch():
                self._problems.guarded(what, function, *arguments)
            if self._problems.strict and self._problems.noted and not block_raised:
                self._problems.raise_first()
