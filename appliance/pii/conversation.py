"""One view of all the messages of a request, so that PII split across messages is found.

A card number typed as "My card: 4111 1111" in one message and "1111 1111" in the next
matches in neither message alone, yet an upstream reads the messages together (the
Anthropic client even merges consecutive messages of one role into one text). So the
analyzer also reads the messages' views joined by `MESSAGE_BREAK`, where context words
reach across messages too, and `JoinedView.pieces` cuts each finding of the joined view back
into one span per message it touches, in that message's original offsets. A recognizer
that lets a value run on across messages (only the card recognizer does) sees the break
character, never a newline: inside one message a newline ends a number, so a list of part
numbers, one per line, is no card.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from appliance.pii.findings import Finding
from appliance.pii.normalize import MESSAGE_BREAK, TextView


@dataclass(frozen=True, slots=True)
class JoinedView:
    """The views of a request's messages, joined by `MESSAGE_BREAK`."""

    text: str
    views: tuple[TextView, ...]
    offsets: tuple[int, ...]  # where each message's view starts in `text`

    @classmethod
    def of(cls, views: Sequence[TextView]) -> JoinedView:
        offsets = []
        position = 0
        for view in views:
            offsets.append(position)
            position += len(view.text) + len(MESSAGE_BREAK)
        text = MESSAGE_BREAK.join(view.text for view in views)
        return cls(text, tuple(views), tuple(offsets))

    def pieces(self, finding: Finding) -> Iterator[tuple[int, Finding]]:
        """(message index, the part of `finding` in that message, in its original offsets).

        Blanks at either end of a part (before a break, after one) are left out of it.
        """
        first = bisect.bisect_right(self.offsets, finding.start) - 1
        for index in range(max(first, 0), len(self.views)):
            offset = self.offsets[index]
            if offset >= finding.end:
                break
            view = self.views[index].text
            start = max(finding.start, offset) - offset
            end = min(finding.end, offset + len(view)) - offset
            while start < end and view[start].isspace():
                start += 1
            while end > start and view[end - 1].isspace():
                end -= 1
            if start < end:
                begin, stop = self.views[index].span(start, end)
                yield index, dataclasses.replace(finding, start=begin, end=stop)
