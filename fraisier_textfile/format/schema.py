"""What the format and the store know of metric families: data handed to them, not a catalogue they import.

A :class:`Family` says a family's name, type, labels, help and buckets, and which of its series are written at 0
beside the one recorded (``zero_series``). A :class:`Schema` is the families one writer owns: those it rewrites in
its canonical form, in its order; every other family in a file is kept as the exact text it came in. How values
merge is said by the change itself (summed, observed by bucket, latest, largest: ``changes.Changes``), so the
store needs nothing else to merge a family: Fraisier's catalogue (``catalogue.py``) is one schema among any.
There is no default schema: every reader, document and store is handed the one it works with, so that nothing
below the catalogue depends on having imported it."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import ClassVar


def format_float(value: float) -> str:
    """A value as the Prometheus text format writes it (Go's strconv style for the specials)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


class Kind:
    """A family's type: ``Kind.COUNTER``, ``Kind.GAUGE`` or ``Kind.HISTOGRAM``, compared by identity; ``value`` is
    its name in the text format. Three constants of a plain class, not an enum: making an enum class is start-up
    every `fraisier record` run would pay (bench/README.md)."""

    __slots__ = ("value",)

    COUNTER: ClassVar[Kind]
    GAUGE: ClassVar[Kind]
    HISTOGRAM: ClassVar[Kind]

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Kind.{self.value.upper()}"


Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM = Kind("counter"), Kind("gauge"), Kind("histogram")


class Family:
    """One metric family a schema owns.

    Compared and hashed by identity: each family is one constant, and every record call hashes the families it
    touches (a field-by-field hash would hash every label name and bucket each time). A plain class, not a
    dataclass: `fraisier record` imports this module, and importing dataclasses is start-up a CLI run would
    otherwise not pay (bench/README.md, bench_cli.py)."""

    __slots__ = ("bucket_bounds", "buckets", "help", "kind", "labels", "name", "zero_series")

    def __init__(
        self, name: str, kind: Kind, labels: tuple[str, ...], help: str, buckets: tuple[float, ...] = (),
        zero_series: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.labels = labels
        self.help = help
        self.buckets = buckets
        self.bucket_bounds: tuple[str, ...] = (
            tuple(format_float(b) for b in buckets) + ("+Inf",) if kind is Kind.HISTOGRAM else ()
        )
        """The ``le`` label values, as written in the textfile, ``+Inf`` last (histograms only)."""
        if zero_series is not None and zero_series[0] not in labels:
            raise ValueError(f"{name}: zero_series names the label {zero_series[0]!r}, which it does not have")
        self.zero_series = zero_series
        """(label, values): when a series is recorded, its siblings with each of these values of that label exist
        too (at 0 until recorded), so that ``increase()`` sees their first event; they expire together."""

    def bucket_of(self, value: float) -> int:
        """The index of the bucket ``value`` falls in: that of the first bound not below it (``le`` is inclusive),
        the last (+Inf's) above every bound; NaN in the first, as ``bisect.bisect_left`` places it. A walk over a
        few bounds: the bisect module is a C extension whose loading costs a CLI run more than every search it
        would make (bench/README.md)."""
        index = 0
        for bound in self.buckets:
            if not bound < value:
                break
            index += 1
        return index

    def __repr__(self) -> str:
        return f"Family({self.name!r})"


class Schema:
    """The families one writer owns, in the order it writes them."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families: tuple[Family, ...] = tuple(families)
        self.by_name: dict[str, Family] = {family.name: family for family in self.families}
        if len(self.by_name) != len(self.families):
            raise ValueError("a schema names a family twice")
        self.order: dict[str, int] = {family.name: position for position, family in enumerate(self.families)}
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """A checksum of everything a layout line vouches for (see layout.py): a file written with another schema
        (another version's catalogue) is never taken as written."""
        if self._fingerprint is None:
            described = "\n".join(
                f"{f.name} {f.kind.value} {','.join(f.labels)} {','.join(f.bucket_bounds)} {f.help}"
                for f in self.families
            )
            # The layout's own version first: a change to how blocks or segments are cut must not be read as valid.
            self._fingerprint = f"{zlib.crc32(('1 ' + described).encode('utf-8')):08x}"
        return self._fingerprint

