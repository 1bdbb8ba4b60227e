"""The deployments a recorder started and has not yet ended.

A deployment starts through the store (``TextfileStore.start_deployment``: its in-flight marker, so that every
process counts it active and the next merge after this process's death counts it ``crashed``). It ends with the
completion or error of the same provider (and fraise type) that this process recorded last, or with its tracked
block: its end goes into the recorder's pending changes, and the store releases its marker once they are written
(store/deployments.py). A marker that cannot be written is a noted problem, never a lost deployment: the
deployment is still recorded when it ends.
"""

from __future__ import annotations

from fraisier_textfile import changes, validate
from fraisier_textfile.errors import FraisierTextfileError
from fraisier_textfile.recorder.policy import Problems
from fraisier_textfile.recorder.series import ProcessSeries
from fraisier_textfile.recorder.writer import Writer
from fraisier_textfile.store.deployments import Deployment


class Deployments:
    """A recorder's deployments in flight, oldest first. The caller holds the recorder's lock."""

    def __init__(self, series: ProcessSeries, problems: Problems, writer: Writer) -> None:
        self._series = series
        self._problems = problems
        self._writer = writer
        self.running: list[Deployment] = []

    def start(self, provider: str, fraise_type: str) -> Deployment:
        provider = validate.check_label_value("provider", provider)
        fraise_type = validate.check_label_value("fraise_type", fraise_type)
        deployment = self._writer.store.start_deployment(provider, fraise_type, self._unmarked)
        with self._writer.batch():
            changes.deployment_started(self._series, provider, fraise_type)
            self.running.append(deployment)
            self._series.events += 1
        return deployment

    def latest(self, provider: object, fraise_type: object | None) -> Deployment | None:
        """The latest deployment started here for that provider (and fraise type, unless None)."""
        if not self.running:
            return None
        provider = validate.plain_value(provider)
        fraise_type = validate.plain_value(fraise_type)
        for deployment in reversed(self.running):
            if deployment.provider == provider and fraise_type in (None, deployment.fraise_type):
                return deployment
        return None

    def end_latest(self, provider: object, fraise_type: object | None) -> None:
        """End the latest deployment started here for that provider (and fraise type, unless None), if any."""
        if self.running:
            self.end(self.latest(provider, fraise_type))

    def end(self, deployment: Deployment | None) -> None:
        if deployment is None or deployment not in self.running:
            return
        self.running.remove(deployment)
        changes.deployment_ended(self._series, deployment.provider, deployment)

    def _unmarked(self, error: BaseException, where: str) -> None:
        if isinstance(error, FraisierTextfileError):
            self._problems.note("marker", f"{error} (the deployment is recorded when it ends, but until then other "
                                "processes do not see it as active)", error)
        else:  # whatever a probe of the directory raises, the deployment is recorded
            self._problems.note("marker", f"writing a marker in {where} failed unexpectedly: {error!r}; please "
                                "report this as a bug of fraisier_textfile (the deployment is recorded when it ends, "
                                "but until then other processes do not see it as active)", error, exc_info=True)

    def after_fork(self) -> None:
        """In a forked child: the parent's deployments are the parent's (their markers name its pid)."""
        self.running = []
