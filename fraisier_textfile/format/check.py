"""Checks beyond parsing, as promtool and node_exporter's registry make them: duplicate series, histograms
whose buckets are not cumulative or lack ``+Inf``, negative counters; and a description of a document."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fraisier_textfile.format.model import Document
from fraisier_textfile.format.reader import _Scan
from fraisier_textfile.format.schema import Family, Kind, Schema, format_float
from fraisier_textfile.format.syntax import ParseError, canonical_float, canonical_key, series_key


def check_text(text: str, schema: Schema, other_bounds: bool = False) -> list[ParseError]:
    """Every problem of a file, each with its line number, in file order: what Go's parser refuses (in its
    words), timestamps, and what it lets through that breaks the file for its readers or for our merges:
    a series that appears twice (node_exporter then serves only one of them), a family of ours with another
    type, negative or NaN counters, histograms without the catalogue's buckets, not cumulative, or whose
    +Inf bucket differs from their count. Empty: the file is sound. ``other_bounds``: histograms whose bounds
    are not the catalogue's are not a problem (a merge migrates them: migration.migrate_histogram)."""
    problems: list[ParseError] = []
    scan = _Scan(text, problems, schema)
    scan.run()
    samples: list[_Sample] = [
        (number, block.owned, block.name, name, pairs, value) for number, block, name, pairs, value in scan.samples
    ]
    problems.extend(ParseError(problem, number) for number, problem in _sample_problems(samples, other_bounds))
    problems.sort(key=lambda error: error.line_number or 0)
    return problems


_Sample = tuple[int | None, Family | None, str, str, list[tuple[str, str]], float]


def _sample_problems(samples: list[_Sample], other_bounds: bool = False) -> Iterator[tuple[int | None, str]]:
    seen: dict[tuple[str, frozenset[tuple[str, str]]], int | None] = {}
    histograms: dict[tuple[Family, str], dict[str, Any]] = {}
    for number, family, _, name, pairs, value in samples:
        identity = (name, frozenset(pairs))
        if identity in seen:
            first = seen[identity]
            where = f" (first on line {first})" if first else ""
            yield number, f"the series {series_key(name, [p[0] for p in pairs], [p[1] for p in pairs])} appears " \
                f"twice{where}: node_exporter serves only one of them"
        else:
            seen[identity] = number
        if family is None:
            continue
        key = canonical_key(family, name, pairs)
        if family.kind is Kind.COUNTER and not value >= 0:
            yield number, f"counter {key} is {format_float(value)}"
        if family.kind is Kind.HISTOGRAM:
            labels = dict(pairs)
            le = labels.pop("le", None)
            series = canonical_key(family, family.name, labels.items())
            state = histograms.setdefault((family, series), {"line": number, "les": [], "values": []})
            if name == family.name + "_bucket" and le is not None:
                state["les"].append(canonical_float(le))
                state["values"].append(value)
            elif name == family.name + "_count":
                state["count"] = value
    for (family, series), state in histograms.items():
        number = state["line"]
        les, values = state["les"], state["values"]
        if tuple(les) != family.bucket_bounds and not other_bounds:
            yield number, (
                f"{series} has buckets le={','.join(les)} but the catalogue's are le={','.join(family.bucket_bounds)}"
            )
        if any(later < earlier for earlier, later in zip(values, values[1:])):
            yield number, f"the buckets of {series} are not cumulative"
        if "count" not in state:
            yield number, f"{series} has no _count sample"
        elif values and state["count"] != values[-1]:
            yield number, f"the +Inf bucket of {series} is {values[-1]} but its count is {state['count']}"


def describe(document: Document) -> Iterator[str]:
    """A readable listing: one line per family (name, type, series, help), then its samples indented."""
    for block in document.blocks.values():
        lines = block.lines
        yield f"{block.name} ({block.type or 'untyped'}, {len(lines)} samples): {block.help or ''}".rstrip()
        for line in lines:
            yield f"  {line}"
