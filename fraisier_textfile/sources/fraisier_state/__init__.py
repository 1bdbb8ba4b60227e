"""The deployments Fraisier writes down itself, read from its state database and status files, exactly once.

Fraisier's deployers never call a metrics recorder, but every deployment, from every entry point (CLI,
webhook, daemon, ``ship``), is a row of ``tb_deployment`` in its SQLite database: ``in_progress``, then
``success`` or ``failed``, possibly ``rolled_back`` (at once, or later). :class:`FraisierStateSource` is a
participant of the store's merge (see store/transaction.py): under the store's lock it reads what changed
since the cursor kept in the textfile's bookkeeping line ``fraisier-state``, and returns the events for it. The
cursor is written by the same atomic rename as the counts, so a process killed anywhere leaves both or
neither: nothing is lost, nothing counted twice.

One module a responsibility:

- ``source.py``: the participant (collect, after_commit, has_news, active_deployments) and :func:`participants`;
- ``reader.py``: what a row counts, read since the cursor (the counting rules, late rollbacks, full checks);
- ``cursor.py``: the cursor and its bookkeeping line;
- ``database.py``: where Fraisier's database is, and opening it read-only without holding Fraisier up;
- ``owners.py``: whether a deployment in progress still has an owner (boot, pid, status files);
- ``labels.py``: ``provider`` and ``fraise_type`` of each fraise, from fraises.yaml;
- ``vocabulary.py``: Fraisier's statuses, its error messages as a bounded ``error_type``, its stored times;
- ``files.py``: reading a small file anyone who may write its directory may replace.
"""

from __future__ import annotations

from .cursor import META_KEY
from .labels import MAX_CONFIG_BYTES, FraiseLabels
from .reader import ROW_COLUMNS, checked_since
from .source import FraisierStateSource, participants
from .vocabulary import error_type

__all__ = [
    "MAX_CONFIG_BYTES", "META_KEY", "ROW_COLUMNS", "FraiseLabels", "FraisierStateSource", "checked_since", "error_type",
    "participants",
]
