"""Reading a textfile's samples the way a scraper does, independently of the package's own parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def sample_values(source: Path | str) -> dict[str, float]:
    """``{'name{a="x",b="y"}': value}`` for every sample, labels in the order the text gives them."""
    text = source.read_text() if isinstance(source, Path) else source
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def canonical_samples(text: str, prefix: str = "") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples whose name starts with ``prefix``, keyed so that two exporters' renderings compare equal:
    label order ignored, ``le="1"`` and ``le="1.0"`` the same."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix):
                continue
            labels = dict(sample.labels)
            if "le" in labels:
                labels["le"] = repr(float(labels["le"]))
            values[(sample.name, frozenset(labels.items()))] = sample.value
    return values


def samples_in(path: Path) -> dict[str, float]:
    """Every sample line of a file this package wrote, as written (``{}`` while the file does not exist yet): for
    polling a file that another process is about to write."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: float(value) for key, value in pairs}
