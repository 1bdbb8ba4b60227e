"""A hand-over file's content: the changes it holds, as JSON, and the checks a merge makes before applying it.

What a hand-over holds is written by another process, maybe another version, maybe anyone who can write the
directory: everything is checked as the recorder checks its own values, and a file that cannot be applied is
refused with UnreadableHandover (the merge sets it aside) rather than failing this merge and every later one.
"""

from __future__ import annotations

from typing import Any

from fraisier_textfile.errors import InvalidValueError
from fraisier_textfile.format.schema import Family, Schema
from fraisier_textfile.store.changes import Changes, HistogramDelta
from fraisier_textfile.validate import check_label_value

FORMAT_VERSION = 2
"""The newest format this version reads, and the one it writes the hand-overs of any schema but
FIRST_FORMAT_SCHEMA's in. It is the first format (1) with the writer's fingerprint always in it. It exists for
0.2.0, which reads only the first, against its own catalogue, sets aside (loses) one naming a family that catalogue
lacks, and leaves in place one of a newer format: so a store of another schema (an application's families beside
Fraisier's) sharing the directory with a 0.2.0 still running has its hand-overs left for it."""
FIRST_FORMAT = 1
LARGEST = 64 * 1024 * 1024
"""Bytes a hand-over may hold at most; a larger one is set aside unread (handovers.read). A hand-over holds one
process's changes since its last merge: one touching 10,000 series in each of Fraisier's families (the default
series bound) is about 17 MiB. A file of any size may be planted there (a sparse one takes no disk), and reading
it whole would take the merging process's memory, at every merge."""
FIRST_FORMAT_SCHEMA = "29ff05db"
"""The fingerprint (Schema.fingerprint) of the one schema that readers of the first format know: 0.2.0 reads a
hand-over against its catalogue, Fraisier's families as released, and wrote no fingerprint in its own. A hand-over
without one is of that schema (a store of another schema leaves it for a store of that one), and the hand-overs
of that schema are still written in the first format, which 0.2.0 applies (a downgrade loses none)."""
# Every field of Changes that a merge uses, serialised. A test checks this against Changes itself, so that
# a field added there cannot be silently dropped here.
FIELDS = ("added", "observed", "latest", "maximum", "active_providers", "retired_markers")


class UnreadableHandover(ValueError):
    """A hand-over file this version cannot apply (corrupt, or written by a version with other families). The
    store sets such a file aside: this never escapes it."""


class NewerHandover(UnreadableHandover):
    """A hand-over in a newer format than this version's: left in place for a merger of that version (during
    an upgrade both run), never set aside, which would lose its events for it too."""


class StaleHandover(UnreadableHandover):
    """A hand-over whose bytes are those of another, applied one: the spent file its writer took back
    (handover_reuse.py) renamed into place, its new bytes lost with the power before its fsync. Set aside, never
    applied: its events were counted when it was applied under its own name."""


class ForeignHandover(UnreadableHandover):
    """A hand-over written by a store of another schema sharing the directory (an application's families beside
    Fraisier's): left in place for a merger of that schema, never set aside, which would lose its events."""


# Encoding


def encode(changes: Changes, schema: Schema, handover_id: str = "") -> bytes:
    """``schema``: the writing store's, whose fingerprint the hand-over carries
    so that a store of another schema on the same directory leaves it for its own (see :func:`decode`).
    ``handover_id``: the hand-over's own id, written first (handover_reuse.header), which :func:`decode` checks
    against its name."""
    import json  # here, not at the top: only a process that hands over pays for it

    content: dict[str, Any] = {"id": handover_id} if handover_id else {}
    content |= {
        "version": FIRST_FORMAT if schema.fingerprint == FIRST_FORMAT_SCHEMA else FORMAT_VERSION,
        "schema": schema.fingerprint,
        "added": [[family.name, list(labels), amount] for (family, labels), amount in changes.added.items()],
        "observed": [
            [family.name, list(labels), delta.buckets, delta.sum, delta.count]
            for (family, labels), delta in changes.observed.items()
        ],
        "latest": [[family.name, list(labels), value] for (family, labels), value in changes.latest.items()],
        "maximum": [[family.name, list(labels), value] for (family, labels), value in changes.maximum.items()],
        "active_providers": sorted(changes.active_providers),
        "retired_markers": sorted(changes.retired_markers),
    }
    data = json.dumps(content, separators=(",", ":")).encode("utf-8")
    return _with_checksum(data) if handover_id else data


_CHECKSUM = b',"crc32":"%08x"}'
_CHECKSUM_SIZE = len(_CHECKSUM % 0)


def _with_checksum(data: bytes) -> bytes:
    """``data`` (a JSON object) with a last member, the CRC-32 of every byte before it. A hand-over written over a
    spent one (handover_reuse.py) and torn by a power loss, its first sectors new and the rest the old
    hand-over's, can still be JSON with its own id, holding events applied before: its checksum tells. 0.2.0
    ignores the member, as any reader of a JSON object ignores one it does not know."""
    import zlib

    body = data[:-1]
    return body + _CHECKSUM % zlib.crc32(body)


def _checksum_matches(data: bytes) -> bool:
    import zlib

    body = data[:-_CHECKSUM_SIZE]
    return data[-_CHECKSUM_SIZE:] == _CHECKSUM % zlib.crc32(body)


def decode(data: bytes, schema: Schema, handover_id: str | None = None) -> Changes:
    """The changes a hand-over holds, of ``schema``'s families. Raises
    UnreadableHandover if they cannot be applied by this version, StaleHandover if it holds another hand-over's
    id than ``handover_id`` (its name's)."""
    import json

    families = schema.by_name

    try:
        content = json.loads(data)
        version = content.get("version")
        if version.__class__ is int and version > FORMAT_VERSION:
            raise NewerHandover(f"format version {version}, newer than this version's {FORMAT_VERSION}")
        if version.__class__ is not int or version not in (FIRST_FORMAT, FORMAT_VERSION):  # `true` == 1: no version
            raise UnreadableHandover(f"format version {version!r}, not {FIRST_FORMAT} or {FORMAT_VERSION}")
        if "crc32" in content and not _checksum_matches(data):
            raise UnreadableHandover(
                "its bytes do not match their checksum: written over a spent hand-over and torn by a power loss "
                "before its fsync, or changed since"
            )
        own = content.get("id", handover_id)
        if handover_id is not None and own != handover_id:
            raise StaleHandover(
                f"it holds the bytes of the hand-over {str(own)[:80]!r}, applied before: its file was taken back "
                "for this one, whose writer stopped (a power loss) before its bytes reached the disk"
            )
        theirs = content.get("schema", FIRST_FORMAT_SCHEMA)
        # Another schema's fingerprint alone is no reason: another version's catalogue (an upgrade) differs too,
        # and its hand-overs are applied as long as this schema has their families.
        if theirs.__class__ is str and theirs != schema.fingerprint and any(
            entry[0] not in families for field in ("added", "observed", "latest", "maximum") for entry in content[field]
        ):
            raise ForeignHandover(f"written by a store of another schema ({theirs[:16]!r}, not {schema.fingerprint})")
        changes = Changes()
        for name, labels, amount in content["added"]:
            changes.added[_series(families, name, labels)] = _number(name, amount)
        for name, labels, buckets, total, count in content["observed"]:
            key = _series(families, name, labels)
            if len(buckets) != len(key[0].buckets) + 1:
                raise UnreadableHandover(f"{name} has {len(buckets)} buckets here, not {len(key[0].buckets) + 1}")
            # As the recorder writes them, the buckets are ints >= 0: checked in one pass, not one call each.
            if buckets.__class__ is list and all(bucket.__class__ is int for bucket in buckets) and min(buckets) >= 0:
                delta = HistogramDelta(buckets)
            else:
                delta = HistogramDelta([_whole_number(name, bucket) for bucket in buckets])
            delta.sum = _number(name, total)
            delta.count = _whole_number(name, count)
            if delta.count != sum(delta.buckets):  # else the file's +Inf bucket and count would disagree
                raise UnreadableHandover(f"{name} has the count {count!r}, not the sum of its buckets")
            changes.observed[key] = delta
        for name, labels, value in content["latest"]:
            changes.latest[_series(families, name, labels)] = _number(name, value)
        for name, labels, value in content["maximum"]:
            changes.maximum[_series(families, name, labels)] = _number(name, value)
        changes.active_providers.update(_label_value("provider", value) for value in content["active_providers"])
        changes.retired_markers.update(_marker_id(marker) for marker in content["retired_markers"])
    except UnreadableHandover:
        raise
    except InvalidValueError as error:
        raise UnreadableHandover(str(error)) from None
    # RecursionError: json's decoder recurses into arrays; a file of nested brackets must be set aside too.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise UnreadableHandover(f"not a hand-over this version can read ({type(error).__name__}: {error})") from None
    return changes


def _number(name: str, value: object) -> float:
    """A value as the recorder makes them: a finite number >= 0 (what else would poison every later merge)."""
    if value.__class__ is float and 0 <= value < _INFINITY:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise UnreadableHandover(f"{name} has the value {value!r}, not a finite number >= 0")
    try:
        return float(value)
    except OverflowError:
        # A JSON integer has no bound, and every int is < inf: one past the largest float cannot be converted.
        # Escaping as OverflowError, it would fail this merge and every later one instead of being set aside.
        raise UnreadableHandover(f"{name} has the value {value!r:.40}..., not a finite number >= 0") from None


def _whole_number(name: str, value: object) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise UnreadableHandover(f"{name} has the count {value!r}, not a whole number")
    return int(number)


_INFINITY = float("inf")
_checked_series: dict[tuple[int, str, tuple[object, ...]], tuple[Family, tuple[str, ...]]] = {}
"""Series already checked by :func:`_series`: a merge under contention reads a hundred hand-overs of the same
few series, and checking their label values again cost most of reading them."""


def _series(families: dict[str, Family], name: str, labels: object) -> tuple[Family, tuple[str, ...]]:
    if labels.__class__ is list:
        seen = (id(families), name, tuple(labels))
        known = _checked_series.get(seen)
        if known is not None:
            return known
        checked = _check_series(families, name, labels)
        if len(_checked_series) >= 10_000:
            _checked_series.clear()
        # Only strings are kept: the tuple's items are compared by ==, and 1 == 1.0 == True.
        if all(value.__class__ is str for value in seen[2]):
            _checked_series[seen] = checked
        return checked
    return _check_series(families, name, labels)


def _check_series(families: dict[str, Family], name: str, labels: object) -> tuple[Family, tuple[str, ...]]:
    family = families.get(name)
    if family is None:
        raise UnreadableHandover(f"the family {name} is not in this store's schema (this version's catalogue)")
    if not isinstance(labels, list) or len(labels) != len(family.labels):
        raise UnreadableHandover(f"{name} has labels {labels!r}, not values for {', '.join(family.labels)}")
    # Checked as the recorder checks them: a newline or a lone surrogate would make every merge fail.
    return family, tuple(_label_value(label, value) for label, value in zip(family.labels, labels))


def _label_value(label: str, value: object) -> str:
    if value.__class__ is not str:
        raise UnreadableHandover(f"{label}={value!r} is not a string")
    return check_label_value(label, value)


def _marker_id(value: object) -> str:
    if value.__class__ is not str or not value or not value.isprintable() or " " in value or "/" in value:
        raise UnreadableHandover(f"the marker id {value!r} is not one fraisier writes")
    return str(value)
