"""Golden responses as a fine-tuning data set (OpenAI chat JSONL).

Every answer an upstream gave is kept beside the request as it left the box (PII already
replaced by placeholders), the local model's answer and its confidence. ``export`` writes
one ``{"messages": [...]}`` line per distinct (prompt, answer) pair: the redacted messages
followed by the upstream's answer as the assistant turn, still with placeholders, so the
data set holds no PII and teaches the small model to keep placeholders as they are.
Upstreams with ``trainable = false`` in config.toml (providers whose terms forbid training
on their outputs), and upstreams no longer configured, are left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.fsutil import replacing
from appliance.outbox import OutboxItem, OutboxResult
from appliance.settings import Settings


@dataclass(frozen=True)
class ExportReport:
    written: int
    duplicates: int
    not_trainable: int  # answers left out because their upstream forbids training
    path: Path


def training_lines(
    golden: Iterable[tuple[OutboxItem, OutboxResult]], settings: Settings
) -> tuple[list[str], int, int]:
    """The JSONL lines, and how many pairs were duplicates or not trainable."""
    trainable = {u.name: u.trainable for u in settings.upstreams}
    seen: set[str] = set()
    lines, duplicates, barred = [], 0, 0
    for item, result in golden:
        if not trainable.get(result.upstream, False):
            barred += 1
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in item.messages]
        messages.append({"role": "assistant", "content": result.text})
        line = json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":"))
        key = hashlib.sha256(line.encode("utf-8")).hexdigest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        lines.append(line)
    return lines, duplicates, barred


def export(
    golden: Iterable[tuple[OutboxItem, OutboxResult]], settings: Settings, out: Path
) -> ExportReport:
    """Write the data set to `out` atomically (a partial file never replaces a good one)."""
    lines, duplicates, barred = training_lines(golden, settings)
    with replacing(out) as f:
        for line in lines:
            f.write(line.encode("utf-8") + b"\n")
    return ExportReport(len(lines), duplicates, barred, out)
