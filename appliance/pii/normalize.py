"""The text the PII recognizers read: everyday Unicode spellings folded to the ASCII shapes
they match, with a map from every character back to the original text.

The recognizers match ASCII shapes (digits, '@', '-', ' '), and everyday text holds other
spellings of them: an input method in CJK mode types fullwidth digits and at signs; word
processors put no-break, thin and narrow no-break spaces inside numbers and non-breaking
hyphens in SSNs; text pasted from web pages and PDFs carries zero-width spaces and soft
hyphens, which are also the first thing a red-teamer inserts. An upstream model reads all of
them as the plain characters, so they must not hide PII from us. Rather than teach every
pattern every spelling, the analyzer hands every recognizer one normalised view:

- NFKC, per character together with its combining marks: fullwidth forms, ligatures ("ﬁ"),
  circled and superscript digits become their ASCII reading, and an accent typed as a
  combining mark composes with its letter ("u" + U+0308 is one "ü", as in an e-mail address);
- decimal digits of other scripts (Arabic-Indic "٣", Devanagari "३") become ASCII digits,
  and marks on a digit (a keycap, an underline) are dropped;
- invisible characters are removed: format characters (zero-width space and joiners, word
  joiner, BOM, soft hyphen, bidi controls), variation selectors, Hangul fillers, and control
  characters other than tab, newline and carriage return;
- Unicode spaces (no-break, thin, narrow no-break, ideographic …) become a space; line and
  paragraph separators and the other vertical controls become a newline;
- hyphens and minus signs (U+2010-2012, U+2212, U+FE63, U+FF0D) become '-'; en and em
  dashes (U+2013, U+2014) and the horizontal bar (U+2015) only between two digits, as in a
  phone number typed with en dashes: elsewhere they are prose (an em dash right between a
  word and a number), and a '-' there would glue the number to the word before it, which
  the recognizers read as part of an identifier;
- a run of one separator (space, '.', '-', '_') between two digits becomes one:
  "4111  1111" reads as "4111 1111".

Case is kept as typed: recognizers that accept either case do so themselves.

Offsets: the view is the original with a list of edits, each replacing one *chunk* (a
character and its combining marks, or a run of separators collapsed into one) with what it
reads as, possibly nothing; every view character comes from one chunk, or from the original
character at its place. `TextView.span` maps a view span to the original span from the
start of its first character's chunk to the end of its last one's (a binary search in the
edits, so a map costs memory and time per edit, not per character). So it covers whole original
characters, and everything between them, invisible characters included: redacting the
original span leaves nothing of the value behind, and the placeholder maps back to exactly
the characters that were there.

Speed: most prompts are printable ASCII without doubled separators between digits; their
view is the text itself, found out in C-speed checks (microseconds for 2 KB). Other texts
are scanned once for the characters that may read differently (one character class, built
at import); only those are looked at in Python, and when each of them reads as one
character (fullwidth digits, no-break spaces), the view keeps the original offsets and needs
no map. A 2 KB prompt in German, Chinese or Hindi takes tens of microseconds.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# The analyzer joins the views of a request's messages with this character (see
# `appliance.pii.conversation`). The view of one text never contains it (it is a paragraph
# separator, folded to a newline), so a recognizer that sees it knows one message ends here.
MESSAGE_BREAK = "\u2029"

_PLAIN_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r"
_DOUBLED = ("  ", "..", "--", "__")
_DOUBLED_BETWEEN_DIGITS = re.compile(r"(?<=[0-9])([ ._\-])\1+(?=[0-9])")
_PROSE_DASHES = "\u2013\u2014\u2015"  # en dash, em dash, horizontal bar
_DASH = re.compile(r"(?<=[0-9])[\u2013\u2014\u2015](?=[0-9])")  # between digits

_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_HYPHENS = "\u2010\u2011\u2012\u2212\ufe63\uff0d"
# Invisible, but not format characters (category Cf): the combining grapheme joiner,
# Hangul fillers, Khmer inherent vowels, Mongolian variation selectors, variation selectors.
_IGNORABLE = "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
_IGNORABLE += "".join(map(chr, range(0xFE00, 0xFE10)))
_FIXED: dict[str, str] = dict.fromkeys(_LINE_BREAKS, "\n")
_FIXED.update(dict.fromkeys(_HYPHENS, "-"))
_FIXED.update(dict.fromkeys(_IGNORABLE, ""))


def _fold_char(char: str) -> str:
    """What one character (already NFKC) reads as in the view."""
    if " " <= char <= "~" or char in "\t\n\r":
        return char
    fixed = _FIXED.get(char)
    if fixed is not None:
        return fixed
    category = unicodedata.category(char)
    if category == "Nd":
        return str(unicodedata.decimal(char))
    if category == "Zs":
        return " "
    if category in ("Cf", "Cc") or 0xE0100 <= ord(char) <= 0xE01EF:
        return ""
    return char


@lru_cache(maxsize=8192)
def fold_chunk(chunk: str) -> str:
    """What a chunk (a character and its combining marks) reads as in the view."""
    folded = "".join(_fold_char(c) for c in unicodedata.normalize("NFKC", chunk))
    if len(folded) > 1 and "0" <= folded[0] <= "9":  # "4" + keycap or underline: "4"
        folded = folded[0] + "".join(c for c in folded[1:] if not is_mark(c))
    return folded


@lru_cache(maxsize=8192)
def is_mark(char: str) -> bool:
    """Whether `char` is a combining mark (it belongs to the character before it)."""
    return unicodedata.category(char)[0] == "M"


@lru_cache(maxsize=8192)
def _composes(char: str) -> bool:
    """Whether `char` is a mark that NFKC may compose with the character before it, or one
    that encloses it (a keycap): either way it is read together with that character."""
    return unicodedata.combining(char) > 0 or unicodedata.category(char) == "Me"


Edit = tuple[int, int, str]  # original text[start:end] reads as this in the view


@dataclass(frozen=True, slots=True)
class TextView:
    """The normalised `text` of an original one; `span` maps its offsets back.

    The view is the original with `edits` applied: each replaces an original chunk
    ``[start, end)`` (a character and its marks, a run of separators) with what it reads as
    (possibly nothing); `outputs[k]` is where edit k's output starts in the view. Both are
    empty when every view character is the original character at its own offset (the view
    is the text, or only replaces characters one for one).
    """

    text: str
    edits: tuple[Edit, ...] = ()
    outputs: tuple[int, ...] = ()

    @property
    def same_offsets(self) -> bool:
        """Whether view offsets are original offsets."""
        return not self.edits

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span that the non-empty view span [start, end) comes from."""
        if not self.edits:
            return start, end
        if not 0 <= start < end <= len(self.text):
            raise ValueError(f"[{start}, {end}) is no span of a {len(self.text)}-character view")
        return self._chunk(start)[0], self._chunk(end - 1)[1]

    def _chunk(self, index: int) -> tuple[int, int]:
        """The original chunk that view character `index` comes from."""
        k = bisect.bisect_right(self.outputs, index) - 1
        if k < 0:
            return index, index + 1  # before the first edit: offsets unchanged
        start, end, folded = self.edits[k]
        past = index - self.outputs[k] - len(folded)  # characters after the edit's output
        if past < 0:
            return start, end
        return end + past, end + past + 1


def _plain(text: str) -> bool:
    """Whether `text` is its own view: printable ASCII, no doubled separator in a number."""
    if not text.isascii() or text.encode("ascii").translate(None, _PLAIN_BYTES):
        return False  # (translate deletes the plain bytes: what is left is a control)
    if any(doubled in text for doubled in _DOUBLED):
        return _DOUBLED_BETWEEN_DIGITS.search(text) is None
    return True


def _foldable() -> re.Pattern[str]:
    """Runs of the characters that may read differently in the view, as one character class.

    Built once, at import, from the running Python's Unicode tables (about 30 ms): every BMP
    character that NFKC changes or `fold_chunk` maps or removes, the marks that compose
    with the character before them (the second half of a canonical composition, conjoining
    Hangul vowels and finals, the generic combining-diacritics blocks, enclosing marks),
    every character outside the BMP (emoji included: rare enough to look at one by one),
    and ASCII controls. A text without any of them (most CJK, Cyrillic or Devanagari prose)
    is left as it is at the cost of one scan in C.
    """
    bmp = [chr(i) for i in range(0x80, 0x10000) if not 0xD800 <= i <= 0xDFFF]
    nfkc = unicodedata.normalize("NFKC", "\n".join(bmp)).split("\n")  # one C call, per char
    foldable = {
        char
        for char, folded in zip(bmp, nfkc, strict=True)
        if folded != char or not char.isprintable() or char.isdecimal() or char in _FIXED
    }
    for char in bmp:
        parts = unicodedata.decomposition(char).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            second = chr(int(parts[1], 16))
            if unicodedata.normalize("NFC", chr(int(parts[0], 16)) + second) == char:
                foldable.add(second)
    ranges: list[list[int]] = []
    for code in sorted(map(ord, foldable)):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    members = "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges)
    return re.compile(
        f"[{members}\\u1161-\\u1175\\u11a8-\\u11c2\\u0300-\\u036f\\u1ab0-\\u1aff\\u1dc0-\\u1dff"
        f"\\u20d0-\\u20ff\\ufe20-\\ufe2f\\U00010000-\\U0010ffff\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]+"
    )


_FOLDABLE = _foldable()


def normalize(text: str) -> TextView:
    """The view of `text` the recognizers read (see the module docstring)."""
    if _plain(text):
        return TextView(text)
    edits = list(_edits(text))
    view = _apply(text, edits)
    # Between digits: en and em dashes read as '-', and a doubled separator as one. Both are
    # found in the view, and become edits of the original, in place of the ones they cover.
    later: list[Edit] = []
    if any(dash in view for dash in _PROSE_DASHES):
        first = TextView(view, tuple(edits), _outputs(edits))
        later += ((*first.span(m.start(), m.end()), "-") for m in _DASH.finditer(view))
    if any(doubled in view for doubled in _DOUBLED):
        first = TextView(view, tuple(edits), _outputs(edits))
        runs = _DOUBLED_BETWEEN_DIGITS.finditer(view)
        later += ((*first.span(*m.span()), m.group(1)) for m in runs)
    if later:
        edits = _merged(edits, later)
        view = _apply(text, edits)
    if all(end - start == 1 == len(folded) for start, end, folded in edits):
        return TextView(view)  # one for one (or nothing): the offsets stand
    return TextView(view, tuple(edits), _outputs(edits))


def _edits(text: str) -> Iterator[Edit]:
    """The chunks of `text` that read differently in the view, in order."""
    done = 0
    for run in _FOLDABLE.finditer(text):
        index, stop = run.span()
        if index > done and _composes(text[index]):
            index -= 1  # the character before a combining mark is part of its chunk
        while index < stop:
            end = index + 1
            while end < stop and _composes(text[end]):
                end += 1
            chunk = text[index:end]
            folded = fold_chunk(chunk)
            if folded != chunk:
                yield index, end, folded
            index = end
        done = stop


def _apply(text: str, edits: list[Edit]) -> str:
    pieces: list[str] = []
    done = 0
    for start, end, folded in edits:
        pieces += (text[done:start], folded)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _outputs(edits: list[Edit]) -> tuple[int, ...]:
    """Where each edit's output starts in the view."""
    outputs = []
    shift = 0  # view offset minus original offset
    for start, end, folded in edits:
        outputs.append(start + shift)
        shift += len(folded) - (end - start)
    return tuple(outputs)


def _merged(edits: list[Edit], later: list[Edit]) -> list[Edit]:
    """`edits` and `later` in order, without the edits that a later one covers (both lists
    hold disjoint edits, and each edit lies wholly inside or outside each later one)."""
    later.sort()
    merged: list[Edit] = []
    k = 0
    for edit in edits:
        while k < len(later) and later[k][1] <= edit[0]:
            merged.append(later[k])
            k += 1
        if k < len(later) and later[k][0] <= edit[0] and edit[1] <= later[k][1]:
            continue  # replaced by the later edit
        merged.append(edit)
    merged += later[k:]
    return merged
