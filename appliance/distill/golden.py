"""Golden pairs: the prompt as it left the box and the upstream's answer, read from JSONL.

``appliance distill export`` writes one OpenAI chat line per pair, ``{"messages": [...]}``,
whose last message is the upstream's answer (the assistant turn). Training, evaluation and
the split all work on `GoldenPair`: the turns before that answer, and the answer. A line
that is not such a conversation is an error naming its line number: a training set that is
silently smaller than the file is worse than one that stops.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import DistillError
from appliance.fsutil import replacing

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class GoldenPair:
    """The turns a device sent (placeholders for PII) and the answer the upstream gave."""

    messages: tuple[tuple[str, str], ...]  # (role, content), oldest first
    answer: str

    @property
    def chat(self) -> list[dict[str, str]]:
        """The prompt turns as the daemon's chat template takes them."""
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def prompt_key(self) -> str:
        """One string per distinct prompt: pairs with the same key fall on the same side."""
        return json.dumps(self.messages, ensure_ascii=False, separators=(",", ":"))

    def to_line(self) -> str:
        messages = [*self.chat, {"role": "assistant", "content": self.answer}]
        return json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":"))


def parse_line(text: str, where: str) -> GoldenPair:
    """One JSONL line as a pair; DistillError naming `where` when it is not one."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistillError(f"{where}: not JSON ({e.msg})") from None
    messages = document.get("messages") if isinstance(document, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        raise DistillError(f'{where}: expected {{"messages": [...]}} with two turns or more')
    turns: list[tuple[str, str]] = []
    for number, message in enumerate(messages, 1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise DistillError(
                f"{where}: message {number} needs a role ({', '.join(ROLES)}) and text content"
            )
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        raise DistillError(f"{where}: the last message must be the assistant's answer")
    if not turns[-1][1].strip():
        raise DistillError(f"{where}: the answer is empty")
    if all(role != "user" for role, _ in turns[:-1]):
        raise DistillError(f"{where}: no user message before the answer")
    return GoldenPair(tuple(turns[:-1]), turns[-1][1])


def read_pairs(path: Path) -> list[GoldenPair]:
    """Every pair in `path`, in file order (blank lines skipped)."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DistillError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DistillError(f"cannot read {path}: {e}") from e
    pairs = [
        parse_line(line, f"{path.name} line {number}")
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]
    if not pairs:
        raise DistillError(f"{path} holds no golden pairs")
    return pairs


def write_pairs(path: Path, pairs: Iterable[GoldenPair]) -> None:
    """Write `pairs` as chat JSONL, atomically."""
    with replacing(path) as f:
        for pair in pairs:
            f.write(pair.to_line().encode("utf-8") + b"\n")


def drop_duplicates(pairs: Sequence[GoldenPair]) -> tuple[list[GoldenPair], int]:
    """The pairs with repeats left out (first kept), and how many repeats there were."""
    seen: set[GoldenPair] = set()
    kept = []
    for pair in pairs:
        if pair not in seen:
            seen.add(pair)
            kept.append(pair)
    return kept, len(pairs) - len(kept)
