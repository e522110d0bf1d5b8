"""Find the line on which a dotted key path is written in a TOML text.

tomllib returns plain dicts with no positions, and an operator fixing a policy needs
``policies/x.toml:14``, not just a key. This is a small scanner over text that tomllib has
already accepted: it records the line of every table header (``[classes.finance]``,
``[[x]]``), every key (bare, quoted or dotted, inline tables included) and every array element
(arrays may span lines; multi-line strings are skipped whole, so nothing inside one is taken for
a key). A path not written in the file (a missing key) falls back to its nearest written
parent, usually the table header, and finally to line 1.
"""

from __future__ import annotations

import bisect
import contextlib
import tomllib
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n\r")


class KeyLines:
    """The line of every key path written in one TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        scanner = _Scanner(text, self._lines)
        # On text tomllib refused, keep what was found; lookups fall back to parents.
        with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
            scanner.document()

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line where `path` is written, else its nearest written parent's, else 1."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return 1


class _Scanner:
    def __init__(self, text: str, lines: dict[KeyPath, int]) -> None:
        self.text = text
        self.pos = 0
        self.lines = lines
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        self._array_tables: dict[KeyPath, int] = {}

    # --- helpers -------------------------------------------------------------------------

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def record(self, path: KeyPath, pos: int) -> None:
        line = self.line_at(pos)
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def skip_blanks(self, newlines: bool) -> None:
        """Skip spaces and tabs; also newlines and comments when `newlines`."""
        text, end = self.text, len(self.text)
        while self.pos < end:
            c = text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif newlines and c == "#":
                eol = text.find("\n", self.pos)
                self.pos = end if eol < 0 else eol
            else:
                return

    def skip_line(self) -> None:
        eol = self.text.find("\n", self.pos)
        self.pos = len(self.text) if eol < 0 else eol + 1

    # --- grammar -------------------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blanks(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.peek(2) == "[[":
                self.pos += 2
                key = self.key()
                index = self._array_tables.get(key, 0)
                self._array_tables[key] = index + 1
                table = (*key, index)
                self.record(table, start)
                self.skip_line()
            elif self.peek() == "[":
                self.pos += 1
                table = self.key()
                self.record(table, start)
                self.skip_line()
            else:
                self.key_value(table)

    def key(self) -> KeyPath:
        parts: list[str] = []
        while True:
            self.skip_blanks(newlines=False)
            c = self.peek()
            if c == '"':
                raw = self.basic_string()
                parts.append(tomllib.loads(f"k = {raw}")["k"])
            elif c == "'":
                parts.append(self.literal_string()[1:-1])
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE_KEY_CHARS:
                    self.pos += 1
                if self.pos == start:
                    raise ValueError("not a key")
                parts.append(self.text[start : self.pos])
            self.skip_blanks(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    def key_value(self, table: KeyPath) -> None:
        start = self.pos
        path = (*table, *self.key())
        self.record(path, start)
        self.skip_blanks(newlines=False)
        if self.peek() != "=":
            raise ValueError("expected '='")
        self.pos += 1
        self.skip_blanks(newlines=False)
        self.value(path)

    def value(self, path: KeyPath) -> None:
        c = self.peek()
        if self.peek(3) in ('"""', "'''"):
            self.multiline_string(self.peek(3))
        elif c == '"':
            self.basic_string()
        elif c == "'":
            self.literal_string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1  # [
        index = 0
        while True:
            self.skip_blanks(newlines=True)
            if self.peek() == "]":
                self.pos += 1
                return
            if self.peek() == ",":
                self.pos += 1
                continue
            element = (*path, index)
            self.record(element, self.pos)
            self.value(element)
            index += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1  # {
        while True:
            self.skip_blanks(newlines=True)
            if self.peek() == "}":
                self.pos += 1
                return
            if self.peek() == ",":
                self.pos += 1
                continue
            self.key_value(path)

    def basic_string(self) -> str:
        start = self.pos
        self.pos += 1
        while self.text[self.pos] != '"':
            self.pos += 2 if self.text[self.pos] == "\\" else 1
        self.pos += 1
        return self.text[start : self.pos]

    def literal_string(self) -> str:
        start = self.pos
        end = self.text.index("'", self.pos + 1)
        self.pos = end + 1
        return self.text[start : self.pos]

    def multiline_string(self, quotes: str) -> None:
        self.pos += 3
        while not self.text.startswith(quotes, self.pos):
            self.pos += 2 if quotes == '"""' and self.text[self.pos] == "\\" else 1
        self.pos += 3
        # Up to two more quote characters may close the string's content ("""a"""").
        for _ in range(2):
            if self.peek() == quotes[0]:
                self.pos += 1
