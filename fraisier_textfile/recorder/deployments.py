"""The deployments a recorder started and has not yet ended: what makes them visible to other processes.

A started deployment writes an in-flight marker (store/inflight.py), so that every process counts it active and
the next merge after this process's death counts it ``crashed``. It ends with the completion or error of the
same provider (and fraise type) that this process recorded last, or with its tracked block; its marker is
released only once that end is written (the writer's rule). A marker that cannot be written is a noted problem,
never a lost deployment: the deployment is still recorded when it ends.
"""

from __future__ import annotations

from fraisier_textfile import catalogue, changes
from fraisier_textfile.errors import FraisierTextfileError, write_error
from fraisier_textfile.recorder.policy import Problems
from fraisier_textfile.recorder.series import ProcessSeries
from fraisier_textfile.recorder.writer import Writer
from fraisier_textfile.store import inflight


class InFlight:
    """A deployment started by this process and not yet ended."""

    __slots__ = ("fraise_type", "marker", "provider")

    def __init__(self, provider: str, fraise_type: str, marker: inflight.Marker | None) -> None:
        self.provider = provider
        self.fraise_type = fraise_type
        self.marker = marker
        """None when the marker could not be written: the deployment is then not visible to other processes."""


class Deployments:
    """A recorder's deployments in flight, oldest first. The caller holds the recorder's lock."""

    def __init__(self, series: ProcessSeries, problems: Problems, writer: Writer) -> None:
        self._series = series
        self._problems = problems
        self._writer = writer
        self.running: list[InFlight] = []

    def start(self, provider: str, fraise_type: str) -> InFlight:
        provider = catalogue.check_label_value("provider", provider)
        fraise_type = catalogue.check_label_value("fraise_type", fraise_type)
        marker: inflight.Marker | None = None
        directory = self._writer.store.directory
        try:
            marker = inflight.create_marker(directory, provider, fraise_type)
        except (OSError, FraisierTextfileError) as error:
            problem = (
                error if isinstance(error, FraisierTextfileError)
                else write_error(inflight.marker_directory(directory), "write a marker in", error)
            )
            self._problems.note("marker", f"{problem} (the deployment is recorded when it ends, but until then "
                                "other processes do not see it as active)", problem)
        except Exception as error:  # whatever a probe of the directory raises, the deployment is recorded
            self._problems.note("marker", f"writing a marker in {inflight.marker_directory(directory)} failed "
                                f"unexpectedly: {error!r}; please report this as a bug of fraisier_textfile (the "
                                "deployment is recorded when it ends, but until then other processes do not see it "
                                "as active)", error, exc_info=True)
        deployment = InFlight(provider, fraise_type, marker)
        with self._writer.batch():
            changes.deployment_started(self._series, provider, fraise_type)
            self.running.append(deployment)
            self._series.events += 1
        return deployment

    def latest(self, provider: object, fraise_type: object | None) -> InFlight | None:
        """The latest deployment started here for that provider (and fraise type, unless None)."""
        if not self.running:
            return None
        provider = catalogue.plain_value(provider)
        fraise_type = catalogue.plain_value(fraise_type)
        for deployment in reversed(self.running):
            if deployment.provider == provider and fraise_type in (None, deployment.fraise_type):
                return deployment
        return None

    def end_latest(self, provider: object, fraise_type: object | None) -> None:
        """End the latest deployment started here for that provider (and fraise type, unless None), if any."""
        if self.running:
            self.end(self.latest(provider, fraise_type))

    def end(self, deployment: InFlight | None) -> None:
        if deployment is None or deployment not in self.running:
            return
        self.running.remove(deployment)
        marker = deployment.marker
        changes.deployment_ended(self._series, deployment.provider, None if marker is None else marker.id)
        if marker is not None:
            self._writer.release_once_written(marker)

    def after_fork(self) -> None:
        """In a forked child: the parent's deployments are the parent's (their markers name its pid)."""
        self.running = []
