"""fraisier_textfile: Fraisier's deployment metrics from short-lived processes, for Prometheus.

``get_metrics_recorder()`` / ``MetricsRecorder`` record events into a dedicated registry and merge them
into ``<textfile dir>/fraisier.prom``, which node_exporter's textfile collector or ``fraisier metrics``
serve. ``fraisier_textfile.metrics`` is Fraisier's ``fraisier.metrics`` module, name for name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fraisier_textfile.catalogue import DEPLOYMENT_STATUSES, FAMILIES, HEALTH_CHECK_STATUSES, Family
from fraisier_textfile.errors import (
    CorruptTextfileError,
    FraisierTextfileError,
    InvalidValueError,
    LockTimeoutError,
    ServerStartError,
    TextfileError,
    TextfileWriteError,
    WebConfigError,
)
from fraisier_textfile.textfile import TextfileStore, default_textfile_directory

if TYPE_CHECKING:
    from fraisier_textfile.recorder import DeploymentMetrics, MetricsRecorder, Outcome, get_metrics_recorder

__all__ = [
    "DEPLOYMENT_STATUSES",
    "FAMILIES",
    "HEALTH_CHECK_STATUSES",
    "CorruptTextfileError",
    "DeploymentMetrics",
    "Family",
    "FraisierTextfileError",
    "InvalidValueError",
    "LockTimeoutError",
    "MetricsRecorder",
    "Outcome",
    "ServerStartError",
    "TextfileError",
    "TextfileStore",
    "TextfileWriteError",
    "WebConfigError",
    "default_textfile_directory",
    "get_metrics_recorder",
]

_RECORDER_NAMES = {"DeploymentMetrics", "MetricsRecorder", "Outcome", "get_metrics_recorder"}


def __getattr__(name: str) -> Any:
    # The recorder imports prometheus_client, which costs a CLI run ~50 ms: it is loaded on first use, so
    # that `fraisier record` (which never needs it) does not pay for it.
    if name in _RECORDER_NAMES:
        from fraisier_textfile import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module 'fraisier_textfile' has no attribute {name!r}")
