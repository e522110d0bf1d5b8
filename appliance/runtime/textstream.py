"""From generated token bytes to the text a client may see: UTF-8 and stop strings.

Token pieces may split a UTF-8 character, so bytes go through an incremental decoder; and
text that could still become the start of a stop string is held back until it cannot, so a
stream never shows a client a stop string (or half of one). Shared by every GGUF backend.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class TextStream:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1  # chars a stop may span
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, raw: bytes) -> str:
        """Take one token's bytes; return the text released now (sets ``stopped``)."""
        self.text += self._decoder.decode(raw)
        cut = first_stop(self.text, self.stops)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
        release = (
            len(self.text) if cut is not None else max(self._emitted, len(self.text) - self._hold)
        )
        piece, self._emitted = self.text[self._emitted : release], release
        return piece

    def close(self) -> str:
        """The text still held back once generation ended (flushes a partial character)."""
        if not self.stopped or not self.stops:
            self.text += self._decoder.decode(b"", final=True)
        rest, self._emitted = self.text[self._emitted :], len(self.text)
        return rest
