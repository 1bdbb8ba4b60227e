"""Recording in a process: Fraisier's ``record_*`` API over this process's series, merged by the store."""

from fraisier_textfile.recorder.recorder import DeploymentMetrics, MetricsRecorder, Outcome, get_metrics_recorder

__all__ = ["DeploymentMetrics", "MetricsRecorder", "Outcome", "get_metrics_recorder"]
