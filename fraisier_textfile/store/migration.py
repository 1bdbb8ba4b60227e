"""Bucket migration: a histogram written with other bounds than its schema's is rewritten at the next merge.

A bound both have keeps its count; a new bound starts from the cumulative count of the largest old bound below it
(0 if none), so it never claims observations it cannot know were below it; a removed bound goes; ``+Inf``,
``_sum`` and ``_count`` stay. Totals, rates and averages are kept exactly; only quantiles around the new bound
are coarser until new observations fill it. (The lifecycle runs it in every merge: see lifecycle.py.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fraisier_textfile.format.model import Block, Document, check_buckets
from fraisier_textfile.format.schema import Family, Kind, format_float
from fraisier_textfile.format.syntax import ParseError, parse_series_key, series_key
from fraisier_textfile.store.changes import Labels


def migrate_histograms(
    document: Document, touched: Iterable[Family] = (), targets: Iterable[Family] | None = None
) -> list[str]:
    """Give every owned histogram of ``document`` the catalogue's buckets (or those of ``targets``, for the
    families named there), by the rule in this module's docstring. The histograms in ``touched`` are checked
    series by series; the others by their first series (this store writes every series of a family with the
    same buckets). Returns one note per family migrated. Raises ParseError for a histogram that cannot be read
    (a bucket without ``le``, a series without _count)."""
    notes = []
    touched = set(touched)
    by_name = None if targets is None else {family.name: family for family in targets}
    for name, block in list(document.blocks.items()):
        family = block.owned if by_name is None else by_name.get(name)
        if family is None or family.kind is not Kind.HISTOGRAM or block.raw is not None:
            continue
        if family not in touched and _first_series_matches(block, family):
            continue
        try:
            check_buckets(block, family)
            continue
        except ParseError:
            pass
        migrated, note = migrate_histogram(block, family)
        document.blocks[name] = migrated
        notes.append(note)
    return notes


def _first_series_matches(block: Block, family: Family) -> bool:
    bounds = family.bucket_bounds
    head = block.head(len(bounds) + 2)
    if not head:
        return True
    if len(head) < len(bounds) + 2:
        return False
    prefix = family.name + "_bucket{"
    for line, bound in zip(head, bounds):
        if not line.startswith(prefix) or not line[: line.rindex(" ")].endswith(f'le="{bound}"}}'):
            return False
    return head[-2].startswith(family.name + "_sum") and head[-1].startswith(family.name + "_count")


def migrate_histogram(block: Block, family: Family) -> tuple[Block, str]:
    """A copy of ``block`` with ``family``'s buckets (see the module's docstring), and a note saying what
    changed. Raises ParseError if a series cannot be read."""
    series: dict[Labels, dict[str, float]] = {}
    buckets: dict[Labels, dict[float, float]] = {}
    old_bounds: set[float] = set()
    for key, value in block.samples():
        name, labels = parse_series_key(key)
        suffix = name[len(family.name) :] if name.startswith(family.name) else name
        le = labels.pop("le", None) if suffix == "_bucket" else None
        if suffix not in ("_bucket", "_sum", "_count") or set(labels) != set(family.labels):
            raise ParseError(f"{key} is not a series of {family.name} (labels {', '.join(family.labels)})")
        values = tuple(labels[label] for label in family.labels)
        parts = series.setdefault(values, {})
        if suffix == "_bucket":
            if le is None:
                raise ParseError(f"a bucket of {family.name} has no le label: {key[:80]}")
            try:
                bound = float(le)
            except ValueError:
                raise ParseError(f"a bucket of {family.name} has le={le!r}, which is not a number") from None
            buckets.setdefault(values, {})[bound] = value
            old_bounds.add(bound)
        else:
            parts[suffix] = value
    rebuilt = Block(block.name, help=block.help, type=block.type, owned=family)
    for values, parts in series.items():
        if "_count" not in parts or "_sum" not in parts:
            raise ParseError(f"{series_key(family.name, family.labels, values)} has no _sum or no _count sample")
        old = buckets.get(values, {})
        below = sorted(bound for bound in old if bound != math.inf)
        for text in family.bucket_bounds:
            bound = float(text)
            if bound in old:
                count = old[bound]
            elif bound == math.inf:
                count = parts["_count"]
            else:
                lower = [b for b in below if b < bound]
                count = old[lower[-1]] if lower else 0.0
            rebuilt.set(series_key(family.name + "_bucket", (*family.labels, "le"), (*values, text)), count)
        rebuilt.set(series_key(family.name + "_sum", family.labels, values), parts["_sum"])
        rebuilt.set(series_key(family.name + "_count", family.labels, values), parts["_count"])
    new_bounds = {float(text) for text in family.bucket_bounds}
    added = sorted(new_bounds - old_bounds)
    removed = sorted(old_bounds - new_bounds)
    note = f"{family.name}: buckets " + "; ".join(
        part for part in (
            f"le={','.join(format_float(b) for b in added)} added (from the count of the bound below)"
            if added else "",
            f"le={','.join(format_float(b) for b in removed)} removed" if removed else "",
        ) if part
    ) if added or removed else f"{family.name}: buckets put in the catalogue's order"
    return rebuilt, note


def migration_notes(document: Document) -> list[str]:
    """What the next merge will migrate, one note per histogram family (``document`` is not changed).
    Raises ParseError for a histogram that cannot be migrated."""
    notes = []
    for block in document.blocks.values():
        family = block.owned
        if family is None or family.kind is not Kind.HISTOGRAM or block.raw is not None:
            continue
        try:
            check_buckets(block, family)
        except ParseError:
            notes.append(migrate_histogram(block, family)[1])
    return notes
