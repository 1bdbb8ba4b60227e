"""The last-update time of every series: the ``updated-<family>`` bookkeeping line, and reading a series' labels
out of an owned block.

A series counts as updated when a merge changes or merely touches it (lifecycle.py notes the times in every merge);
expiry (selection.py) removes those not updated for long enough. The times live in the textfile itself, beside the
series they describe: see :class:`SeriesTimes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from fraisier_textfile.format.bookkeeping import KeyedBookkeeping, RawValue, Span, text_value
from fraisier_textfile.format.model import Block
from fraisier_textfile.format.syntax import parse_series_key

UPDATED = KeyedBookkeeping("updated-", text_value, text_value, as_bytes=True)
"""``updated-<family>``: the last-update times of that family's series (SeriesTimes' text), held as bytes."""

# A merge touching more series than this rewrites a family's times through a dict instead of in place.
_IN_PLACE_LIMIT = 32
# Edits in place leave the line in pieces (spans of the line read, the minutes put between them); past this many,
# it is joined into one again before the next edit.
_MOST_SPANS = 64


class SeriesTimes:
    """The last-update times of one family's series, as the meta line ``updated-<family>`` keeps them.

    Why in the textfile itself, one line per family, rather than in a sidecar file: it is written by the same
    rename as the series, so after a crash the times always describe the file beside them; a copied or restored
    file carries its own times; and a merge rewrites only the lines of the families it touched. Why this form:
    ``<oldest> <key>=<minute> <key>=<minute> ...``, the key being the label values (percent-encoded, comma
    separated), the time in whole minutes since the epoch. About 30 bytes a series (a counter line is 80-100),
    and a merge that touches a few series edits the line's bytes in place (no decoding, no split of 100k entries,
    the rest written back from where it was read) and, within the same minute, does not change it at all.
    ``oldest`` is never later than the oldest entry (it may be earlier after an update), so an expiring merge
    skips every family whose ``oldest`` is recent, and rescans (and corrects it) only when something may really be
    due."""

    __slots__ = ("_entries", "_value")

    def __init__(self, value: RawValue | str | None) -> None:
        """``value``: the line's value (text, for tests and the first time of a family)."""
        self._value = RawValue.of(value.encode("utf-8")) if isinstance(value, str) else value or RawValue()
        self._entries: dict[str, int] | None = None

    @property
    def oldest(self) -> int | None:
        if self._entries is not None:
            return min(self._entries.values(), default=None)
        if not self._value:
            return None
        data, start, end = self._value.spans[0]  # an edit never reaches the head: it stays in the first span
        space = data.find(b" ", start, end)
        head = data[start : end if space < 0 else space]
        return int(head) if head.isdigit() else None

    def entries(self) -> dict[str, int]:
        if self._entries is None:
            entries: dict[str, int] = {}
            for token in self._value.text().split(" ")[1:]:
                key, _, minute = token.rpartition("=")
                if minute.isdigit():  # anything else was not written by us: that series' time is unknown
                    entries[key] = int(minute)
            self._entries = entries
        return self._entries

    def touch(self, keys: Sequence[str], minute: int) -> None:
        if self._entries is None and len(keys) <= _IN_PLACE_LIMIT and self.oldest is not None:
            self._touch_in_place(keys, minute)
            return
        entries = self.entries()
        for key in keys:
            # Only forward: a process whose clock is behind must not make a series just updated look old (the
            # next expiry would remove it, totals and all), nor break ``oldest``.
            if entries.get(key, -1) < minute:
                entries[key] = minute

    def _touch_in_place(self, keys: Sequence[str], minute: int) -> None:
        """The minutes that change replaced in the line's bytes, new keys added at its end: the line is never
        decoded, and what does not change is written back from where it was read."""
        spans = self._value.spans
        if len(spans) > 1 and len(spans) + 2 * len(keys) > _MOST_SPANS:
            joined = bytes(self._value)
            spans = [(joined, 0, len(joined))]
        new = str(minute).encode()
        edits: dict[tuple[int, int], int] = {}  # (span, start of a minute) -> its end
        appended: list[bytes] = []
        for key in keys:
            needle = f" {key}=".encode()
            number, found = _find(spans, needle)
            if found < 0:
                if "\n" in key or "\r" in key:
                    raise ValueError(f"a series' key {key!r} cannot be written on the one line of its family's times")
                if needle + new not in appended:
                    appended.append(needle + new)
                continue
            data, _, end = spans[number]
            at = found + len(needle)
            stop = data.find(b" ", at, end)
            stop = end if stop < 0 else stop
            if at == stop and number + 1 < len(spans):  # the minute was put there before: the next span is it
                number, (data, at, stop) = number + 1, spans[number + 1]
            # Update times only move forward: a process whose clock is behind must not make a series look old.
            if not data[at:stop].isdigit() or int(data[at:stop]) < minute:
                edits[(number, at)] = stop
        if not edits and not appended:
            return
        edited: list[Span] = []
        for number, (data, start, end) in enumerate(spans):
            for at in sorted(position for span, position in edits if span == number):
                edited += ((data, start, at), (new, 0, len(new)))
                start = edits[(number, at)]
            edited.append((data, start, end))
        edited.extend((line, 0, len(line)) for line in appended)
        self._value = RawValue(edited)

    def forget(self, keys: Iterable[str]) -> None:
        entries = self.entries()
        for key in keys:
            entries.pop(key, None)

    def render(self) -> RawValue:
        if self._entries is not None:
            oldest = self.oldest
            if oldest is None:
                return RawValue()
            text = f"{oldest} " + " ".join(f"{key}={minute}" for key, minute in self._entries.items())
            if "\n" in text or "\r" in text:
                raise ValueError(f"the times {text[:80]!r}... cannot be written on one line")
            return RawValue.of(text.encode("utf-8"))
        return self._value


def _find(spans: Sequence[Span], needle: bytes) -> tuple[int, int]:
    """The first span holding ``needle`` and where in its data; (-1, -1) if none does."""
    for number, (data, start, end) in enumerate(spans):
        found = data.find(needle, start, end)
        if found >= 0:
            return number, found
    return -1, -1


def times_key(values: Iterable[str]) -> str:
    return ",".join(_encode(value) for value in values)


def _encode(value: str) -> str:
    """A label value with no space, comma or '=' (the separators of the times line), reversibly."""
    # A newline too: the text format escapes it in a label value, but the times are one meta line.
    if "%" in value or " " in value or "," in value or "=" in value or "\n" in value:
        return (
            value.replace("%", "%25").replace(" ", "%20").replace(",", "%2C").replace("=", "%3D").replace("\n", "%0A")
        )
    return value



# Reading series out of an owned block. Keys inside an owned block are canonical (catalogue label order,
# `le` last), so a series' labels are the text between the braces, minus `le` for a bucket.


def label_text_of_key(key: str) -> str:
    brace = key.find("{")
    if brace < 0:
        return ""
    inner = key[brace + 1 : -1]
    le = inner.rfind('le="')
    if le >= 0 and key[:brace].endswith("_bucket") and (le == 0 or inner[le - 1] == ","):
        inner = inner[: max(le - 1, 0)]
    return inner


def label_text(line: str) -> str:
    return label_text_of_key(line[: line.rindex(" ")])


def series_texts(block: Block) -> Iterator[str]:
    """The label text of each series of an owned block, once each, in file order."""
    seen: set[str] = set()
    for line in block.lines:
        text = label_text(line)
        if text not in seen:
            seen.add(text)
            yield text


def labels_of(text: str) -> dict[str, str]:
    if "\\" not in text:  # no escapes: no value holds a quote, so '",' ends a value
        labels = {}
        for pair in text.rstrip('"').split('",') if text else ():
            name, _, value = pair.partition('="')
            labels[name] = value
        return labels
    return parse_series_key("x{" + text + "}")[1]
