"""The labels of a fraise's deployments (``provider``, ``fraise_type``), from Fraisier's fraises.yaml.

Fraisier stores neither in its database: the type is the fraise's ``type:`` in its configuration, found as
Fraisier finds it, and read without importing Fraisier (a scrape must not pay for its import). The file also
says where an environment keeps its status file (``status_dir:``), which owners.py reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fraisier_textfile import validate
from fraisier_textfile.errors import InvalidValueError

from .files import read_regular_file

log = logging.getLogger(__name__)

UNKNOWN_FRAISE_TYPE = "unknown"
"""The ``fraise_type`` of a row whose fraise is not (or no longer) in fraises.yaml."""
DEFAULT_PROVIDER = "bare_metal"
MAX_CONFIG_BYTES = 1024 * 1024
"""fraises.yaml is parsed under the textfile's lock, at a scrape too: YAML costs about a second a megabyte
with libyaml (ten without), JSON a hundredth. A megabyte is thousands of fraises."""


def fraisier_config_path() -> Path | None:
    """fraises.yaml, by Fraisier's search order (FRAISIER_CONFIG, then ./fraises.yaml, ./config/fraises.yaml,
    /opt/fraisier/fraises.yaml)."""
    configured = os.environ.get("FRAISIER_CONFIG")
    if configured:
        return Path(configured)
    for candidate in (Path.cwd() / "fraises.yaml", Path.cwd() / "config" / "fraises.yaml",
                      Path("/opt/fraisier/fraises.yaml")):
        if candidate.exists():
            return candidate
    return None


class FraiseLabels:
    """``provider`` and ``fraise_type`` of each fraise, from fraises.yaml, re-read when the file changes.

    ``fraise_type`` is the fraise's ``type:``; ``provider`` is ``docker_compose`` for a ``docker_compose``
    fraise and ``bare_metal`` for any other (Fraisier's own two providers). A fraise not in the file (removed
    since, or the file unreadable) is ``bare_metal`` / ``unknown``. The file is read with a YAML loader that
    takes Fraisier's tags (``!envvar``) as empty values, not with Fraisier's loader: that one validates every
    environment, and a configuration Fraisier refuses for an unrelated reason must not cost the labels."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._types: dict[str, str] = {}
        self._status_dirs: dict[tuple[str, str], Path] = {}

    def refresh(self) -> None:
        """Re-read the file if it changed (once per merge: not once per row of a big backfill)."""
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            status = os.stat(self.path)
        except OSError:
            self._stamp, self._types, self._status_dirs = None, {}, {}
            return
        # The ctime too: see serve/live_config.py (a copy by cp -p from a build that fixes every mtime, a type
        # changed into one as long).
        stamp = (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            data = _load_yaml(self.path)
        except Exception as error:  # a torn or hand-broken file: labels fall back, the merge goes on
            log.warning("cannot read fraise types from %s (%s): its fraises count with fraise_type=%s",
                        self.path, _quoting_nothing(error), UNKNOWN_FRAISE_TYPE)
            self._types, self._status_dirs = {}, {}
            return
        fraises = data.get("fraises") if isinstance(data, dict) else None
        self._types, self._status_dirs = {}, {}
        if not isinstance(fraises, dict):
            return
        for name, fraise in fraises.items():
            if not isinstance(fraise, dict):
                continue
            kind = fraise.get("type")
            if isinstance(kind, str) and kind:
                try:
                    self._types[str(name)] = validate.check_label_value("fraise_type", kind)
                except InvalidValueError:
                    pass
            environments = fraise.get("environments")
            if isinstance(environments, dict):
                for environment, settings in environments.items():
                    if isinstance(settings, dict) and isinstance(settings.get("status_dir"), str):
                        self._status_dirs[(str(name), str(environment))] = Path(settings["status_dir"])

    def of(self, fraise_name: str) -> tuple[str, str]:
        """(provider, fraise_type) of a fraise, as the file was at the last :meth:`refresh`."""
        fraise_type = self._types.get(fraise_name, UNKNOWN_FRAISE_TYPE)
        return ("docker_compose" if fraise_type == "docker_compose" else DEFAULT_PROVIDER), fraise_type

    def status_dir(self, fraise_name: str, environment: str) -> Path | None:
        return self._status_dirs.get((fraise_name, environment))


def _load_yaml(path: Path) -> Any:
    import yaml

    # libyaml's parser when PyYAML has it: the same documents, read in a fraction of the time, which matters because
    # the textfile's lock is held meanwhile (bench/README.md, bench_fraise_labels.py, has the figures).
    class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
        return None

    _Loader.add_multi_constructor("!", _any_tag)
    return yaml.load(read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8"), Loader=_Loader)


def _quoting_nothing(error: Exception) -> str:
    """Why the file was not read, in one line that quotes nothing of it: PyYAML without libyaml shows the line it
    stopped at (and some of its problems a word of it), and fraises.yaml may be a symlink to a file only the
    reader may read. Where it stopped is enough to find the fault."""
    if isinstance(error, OSError | UnicodeDecodeError):
        return str(error)  # the reason and the path (the byte's offset), nothing of the content
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        return f"not YAML that can be read, at line {mark.line + 1}, column {mark.column + 1}"
    return f"not YAML that can be read ({type(error).__name__})"
