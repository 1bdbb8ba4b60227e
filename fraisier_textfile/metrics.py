"""Fraisier's ``fraisier.metrics`` module, writing to the textfile.

Change one import and Fraisier's code records into ``fraisier.prom``::

    from fraisier.metrics import get_metrics_recorder           # before
    from fraisier_textfile.metrics import get_metrics_recorder  # after

Every name of Fraisier 0.84.2's module is here with the same signature: ``MetricsRecorder`` (its 12 methods
and ``get_metrics_summary()``), ``DeploymentMetrics``, ``get_metrics_recorder()``, ``PROMETHEUS_AVAILABLE`` and
the ``_metrics_recorder`` singleton, which a test may set to None to get a new recorder.
"""

from __future__ import annotations

import sys
import types

from prometheus_client import Counter, Gauge, Histogram

from fraisier_textfile.recorder import recorder as _recorder
from fraisier_textfile.recorder.recorder import (
    PROMETHEUS_AVAILABLE,
    DeploymentMetrics,
    MetricsRecorder,
    get_metrics_recorder,
)

__all__ = [
    "PROMETHEUS_AVAILABLE",
    "Counter",
    "DeploymentMetrics",
    "Gauge",
    "Histogram",
    "MetricsRecorder",
    "get_metrics_recorder",
]


class _FraisierMetricsModule(types.ModuleType):
    """``_metrics_recorder`` reads and writes the recorder module's singleton, so that there is one
    process-wide recorder whichever module hands it out, and Fraisier's ``metrics._metrics_recorder = None``
    resets it as it does in Fraisier."""

    @property
    def _metrics_recorder(self) -> MetricsRecorder | None:
        return _recorder._metrics_recorder

    @_metrics_recorder.setter
    def _metrics_recorder(self, value: MetricsRecorder | None) -> None:
        _recorder._metrics_recorder = value


sys.modules[__name__].__class__ = _FraisierMetricsModule
