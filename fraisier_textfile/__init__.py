"""fraisier_textfile: Fraisier's deployment metrics from short-lived processes, for Prometheus.

``get_metrics_recorder()`` / ``MetricsRecorder`` record events into a dedicated registry and merge them
into ``<textfile dir>/fraisier.prom``, which node_exporter's textfile collector or ``fraisier metrics``
serve. ``fraisier_textfile.metrics`` is Fraisier's ``fraisier.metrics`` module, name for name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: pyproject reads it, `fraisier --version` prints it

from fraisier_textfile.catalogue import DEPLOYMENT_STATUSES, FAMILIES, HEALTH_CHECK_STATUSES, Family
from fraisier_textfile.changes import Changes
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
from fraisier_textfile.store.textfile import TextfileStore, default_textfile_directory

if TYPE_CHECKING:
    from fraisier_textfile.recorder.recorder import DeploymentMetrics, MetricsRecorder, Outcome, get_metrics_recorder
    from fraisier_textfile.serve.server import MetricsServer

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


def __getattr__(name: str) -> Any:
    # The recorder imports prometheus_client, which costs a CLI run ~50 ms: it is loaded on first use, so
    # that `fraisier record` (which never needs it) does not pay for it.
    if name in _RECORDER_NAMES:
        from fraisier_textfile.recorder import recorder

        return getattr(recorder, name)
    if name == "MetricsServer":
        from fraisier_textfile.serve.server import MetricsServer

        return MetricsServer
    raise AttributeError(f"module 'fraisier_textfile' has no attribute {name!r}")
