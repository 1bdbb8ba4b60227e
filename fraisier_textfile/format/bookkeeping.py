"""The bookkeeping lines at the top of a textfile: ``# fraisier_textfile <key>: <value>``, one per key.

They hold what a merge must know about the file beyond its samples, written by the same atomic rename as the
samples they account for: which hand-overs and in-flight markers the counts already hold, when each series was
last updated, which blocks the layout line vouches for, how far a source has read. node_exporter reads them as
comments and ignores them.

Each kind of line is declared once, by the protocol that owns it, as a typed :class:`Bookkeeping` (or a
:class:`WordSet`); nothing else reads or writes ``Document.meta`` by key. Declaring a key twice is an error at
import, so two protocols can never write the same line. Values are one line: no newline, and (for word sets)
words without blanks; a value that cannot be written so is refused when it is put, not when the file is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from fraisier_textfile.format.model import Document

T = TypeVar("T")

_declared: set[str] = set()
_declared_prefixes: set[str] = set()


def _check_key(key: str) -> None:
    if not key or ":" in key or any(character.isspace() for character in key):
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
        return self._decode(document.meta.get(self.key, ""))

    def put(self, document: Document, value: T) -> None:
        text = self._encode(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"bookkeeping {self.key!r}: {text!r} is not one line")
        if not text:
            document.meta.pop(self.key, None)
        elif document.meta.get(self.key) != text:
            # Only a changed value is replaced: an unchanged one stays the very string read, which the writer
            # copies back from the bytes read instead of encoding it again (Document.meta_read).
            document.meta[self.key] = text


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _joined(words: Iterable[str]) -> str:
    listed = sorted(words)
    for word in listed:
        if not word or any(character.isspace() for character in word):
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
    """A family of lines ``<prefix><name>``, one per name (e.g. the update times of each metric family)."""

    def __init__(self, prefix: str, decode: Callable[[str], T], encode: Callable[[T], str]) -> None:
        _declare(prefix, prefix=True)
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
