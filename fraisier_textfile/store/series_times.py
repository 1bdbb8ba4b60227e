"""The last-update time of every series: the ``updated-<family>`` bookkeeping line, and reading a series' labels
out of an owned block.

A series counts as updated when a merge changes or merely touches it (lifecycle.py notes the times in every merge);
expiry (selection.py) removes those not updated for long enough. The times live in the textfile itself, beside the
series they describe: see :class:`SeriesTimes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from fraisier_textfile.format.bookkeeping import KeyedBookkeeping, text_value
from fraisier_textfile.format.model import Block
from fraisier_textfile.format.syntax import parse_series_key

UPDATED = KeyedBookkeeping("updated-", text_value, text_value)
"""``updated-<family>``: the last-update times of that family's series (SeriesTimes' text)."""

# A merge touching more series than this rewrites a family's times through a dict instead of in place.
_IN_PLACE_LIMIT = 32


class SeriesTimes:
    """The last-update times of one family's series, as the meta line ``updated-<family>`` keeps them.

    Why in the textfile itself, one line per family, rather than in a sidecar file: it is written by the same
    rename as the series, so after a crash the times always describe the file beside them; a copied or restored
    file carries its own times; and a merge rewrites only the lines of the families it touched. Why this form:
    ``<oldest> <key>=<minute> <key>=<minute> ...``, the key being the label values (percent-encoded, comma
    separated), the time in whole minutes since the epoch. About 30 bytes a series (a counter line is 80-100),
    and a merge that touches a few series edits the line in place (no split of 100k entries) and, within the
    same minute, does not change it at all. ``oldest`` is never later than the oldest entry (it may be earlier
    after an update), so an expiring merge skips every family whose ``oldest`` is recent, and rescans (and
    corrects it) only when something may really be due."""

    __slots__ = ("_entries", "_text")

    def __init__(self, text: str | None) -> None:
        self._text = text or ""
        self._entries: dict[str, int] | None = None

    @property
    def oldest(self) -> int | None:
        if self._entries is not None:
            return min(self._entries.values(), default=None)
        head = self._text.partition(" ")[0]
        return int(head) if head.isdigit() else None

    def entries(self) -> dict[str, int]:
        if self._entries is None:
            entries: dict[str, int] = {}
            for token in self._text.split(" ")[1:]:
                key, _, minute = token.rpartition("=")
                if minute.isdigit():  # anything else was not written by us: that series' time is unknown
                    entries[key] = int(minute)
            self._entries = entries
        return self._entries

    def touch(self, keys: Sequence[str], minute: int) -> None:
        if self._entries is None and len(keys) <= _IN_PLACE_LIMIT and self.oldest is not None:
            # The line is rebuilt once, from the spans between the minutes that change (a copy of the whole
            # line per key cost a merge milliseconds at 100,000 series).
            text = self._text
            new = str(minute)
            spans: dict[int, int] = {}
            appended: list[str] = []
            for key in keys:
                start = text.find(f" {key}=")
                if start < 0:
                    if f" {key}={new}" not in appended:
                        appended.append(f" {key}={new}")
                    continue
                start += len(key) + 2
                end = text.find(" ", start)
                end = len(text) if end < 0 else end
                # Update times only move forward: a process whose clock is behind must not make a series look old.
                if not text[start:end].isdigit() or int(text[start:end]) < minute:
                    spans[start] = end
            if spans or appended:
                parts: list[str] = []
                last = 0
                for start in sorted(spans):
                    parts += (text[last:start], new)
                    last = spans[start]
                parts.append(text[last:])
                self._text = "".join(parts + appended)
            return
        entries = self.entries()
        for key in keys:
            # Only forward: a process whose clock is behind must not make a series just updated look old (the
            # next expiry would remove it, totals and all), nor break ``oldest``.
            if entries.get(key, -1) < minute:
                entries[key] = minute

    def forget(self, keys: Iterable[str]) -> None:
        entries = self.entries()
        for key in keys:
            entries.pop(key, None)

    def render(self) -> str:
        if self._entries is not None:
            oldest = self.oldest
            if oldest is None:
                return ""
            return f"{oldest} " + " ".join(f"{key}={minute}" for key, minute in self._entries.items())
        return self._text


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
