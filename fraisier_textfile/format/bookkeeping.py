"""The bookkeeping lines at the top of a textfile: ``# fraisier_textfile <key>: <value>``, one per key.

They hold what a merge must know about the file beyond its samples, written by the same atomic rename as the
samples they account for: which hand-overs and in-flight markers the counts already hold, when each series was
last updated, which blocks the layout line vouches for, how far a source has read. node_exporter reads them as
comments and ignores them.

Each kind of line is declared once, by the protocol that owns it, as a typed :class:`Bookkeeping` (or a
:class:`WordSet`); nothing else reads or writes ``Document.meta`` by key. Declaring a key twice is an error at
import, so two protocols can never write the same line. Values are one line: no newline, and (for word sets)
words without blanks; a value that cannot be written so is refused when it is put, not when the file is written.
A family of lines declared ``as_bytes`` (the series' update times, a fifth of a big file) is held as the file's
bytes, a :class:`RawValue`, which its protocol edits in place: nobody decodes it unless they ask for its text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from fraisier_textfile.format.syntax import _has_blank

if TYPE_CHECKING:
    from fraisier_textfile.format.model import Document

T = TypeVar("T")

_declared: set[str] = set()
_declared_prefixes: set[str] = set()
_bytes_prefixes: set[str] = set()

Span = tuple[bytes, int, int]
"""``data[start:end]``, named without copying it."""


class RawValue:
    """A bookkeeping line's value held as bytes: spans of the file read and bytes put between them, never decoded
    or joined until someone asks for its text. The lines of series' update times are a fifth of a big file: a
    merge edits the few minutes that change and writes the rest back from where it was read."""

    __slots__ = ("spans",)

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self.spans = [span for span in spans if span[2] > span[1]]

    @classmethod
    def of(cls, data: bytes) -> RawValue:
        return cls([(data, 0, len(data))])

    def views(self) -> Iterator[memoryview]:
        for data, start, end in self.spans:
            yield memoryview(data)[start:end]

    def __bytes__(self) -> bytes:
        if len(self.spans) == 1:
            data, start, end = self.spans[0]
            return data if start == 0 and end == len(data) else data[start:end]
        return b"".join(self.views())

    def text(self) -> str:
        return bytes(self).decode("utf-8")

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawValue) and bytes(self) == bytes(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RawValue({bytes(self)[:60]!r})"


MetaValue = str | RawValue
"""A value in ``Document.meta``: text, or bytes for the lines declared to be held as bytes (:func:`held_as_bytes`)."""


def held_as_bytes(key: str) -> bool:
    """Whether the readers keep the value of ``key``'s line as bytes (a :class:`RawValue`), not decoded."""
    return any(key.startswith(prefix) for prefix in _bytes_prefixes)


def text_of(value: MetaValue) -> str:
    return value if isinstance(value, str) else value.text()


def _check_key(key: str) -> None:
    if not key or ":" in key or _has_blank(key):
        raise ValueError(f"bookkeeping key {key!r}: it must be non-empty, without ':' or blanks")


def _declare(key: str, prefix: bool) -> None:
    _check_key(key)
    clash = key in _declared or any(key.startswith(p) for p in _declared_prefixes)
    if prefix:  # a prefix also clashes with every key and prefix it would cover, or that covers it
        clash = clash or any(k.startswith(key) for k in _declared | _declared_prefixes)
    if clash:
        raise ValueError(f"bookkeeping key {key!r} is declared twice")
    (_declared_prefixes if prefix else _declared).add(key)


class Bookkeeping(Generic[T]):
    """One bookkeeping line: its key, and how its value is decoded and encoded.

    ``decode("")`` is the value of a file without the line; a value that encodes to ``""`` removes the line."""

    def __init__(self, key: str, decode: Callable[[str], T], encode: Callable[[T], str], *,
                 declare: bool = True) -> None:
        if declare:
            _declare(key, prefix=False)
        else:
            _check_key(key)
        self.key = key
        self._decode = decode
        self._encode = encode

    def get(self, document: Document) -> T:
        return self._decode(text_of(document.meta.get(self.key, "")))

    def put(self, document: Document, value: T) -> None:
        text = self._encode(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"bookkeeping {self.key!r}: {text!r} is not one line")
        current = document.meta.get(self.key)
        if not text:
            document.meta.pop(self.key, None)
        elif isinstance(current, RawValue):
            if current.text() != text:
                document.meta[self.key] = RawValue.of(text.encode("utf-8"))
        elif current != text:
            # Only a changed value is replaced: an unchanged one stays the very string read, which the writer
            # copies back from the bytes read instead of encoding it again (Document.meta_read).
            document.meta[self.key] = text

    def get_raw(self, document: Document) -> RawValue:
        """The value as bytes (empty without the line), for a line held as bytes (see :func:`held_as_bytes`)."""
        value = document.meta.get(self.key, "")
        return value if isinstance(value, RawValue) else RawValue.of(value.encode("utf-8"))

    def put_raw(self, document: Document, value: RawValue) -> None:
        """Make ``value`` the line's (an empty value removes it). Its spans of the line read are one line; the
        caller makes sure of the bytes it puts between them (not checked here: that would read the whole line)."""
        if value:
            document.meta[self.key] = value
        else:
            document.meta.pop(self.key, None)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _joined(words: Iterable[str]) -> str:
    listed = sorted(words)
    for word in listed:
        if not word or _has_blank(word):
            raise ValueError(f"{word!r} cannot be one word of a bookkeeping line")
    return " ".join(listed)


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _listed(words: Iterable[str]) -> str:
    listed = list(words)
    _joined(listed)  # the check only: the order is kept
    return " ".join(listed)


class WordList(Bookkeeping[tuple[str, ...]]):
    """A line holding ids in an order that matters (the order they were applied in), space-separated."""

    def __init__(self, key: str) -> None:
        super().__init__(key, _word_list, _listed)


class WordSet(Bookkeeping[frozenset[str]]):
    """A line holding a set of ids, space-separated, sorted (so that the same set is the same bytes)."""

    def __init__(self, key: str, *, declare: bool = True) -> None:
        super().__init__(key, _words, _joined, declare=declare)

    def add(self, document: Document, words: Iterable[str]) -> None:
        self.put(document, self.get(document) | frozenset(words))


class KeyedBookkeeping(Generic[T]):
    """A family of lines ``<prefix><name>``, one per name (e.g. the update times of each metric family).
    ``as_bytes``: the readers hold their values as bytes (:class:`RawValue`), for lines too long to decode whole."""

    def __init__(self, prefix: str, decode: Callable[[str], T], encode: Callable[[T], str], *,
                 as_bytes: bool = False) -> None:
        _declare(prefix, prefix=True)
        if as_bytes:
            _bytes_prefixes.add(prefix)
        self.prefix = prefix
        self._decode = decode
        self._encode = encode
        self._lines: dict[str, Bookkeeping[T]] = {}

    def at(self, name: str) -> Bookkeeping[T]:
        line = self._lines.get(name)
        if line is None:
            line = self._lines[name] = Bookkeeping(self.prefix + name, self._decode, self._encode, declare=False)
        return line


def reserve(key: str) -> str:
    """Declare a key that its module reads and writes itself (the layout line): no protocol may take it."""
    _declare(key, prefix=False)
    return key


def text_value(text: str) -> str:
    """The identity codec, for a line whose value is plain text (already one line)."""
    return text
