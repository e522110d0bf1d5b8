"""The folder one distillation run writes (``--out DIR``), and what each file in it is.

train writes everything up to ``adapter.gguf``; eval adds ``eval.json``; pack reads both and
adds ``bundle-src/``. Each step reads only these files, so the steps can run on different
days, and ``DIR`` is what an operator copies from the workstation back to USB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import DistillError
from appliance.fsutil import replacing


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def train_set(self) -> Path:  # the pairs trained on (chat JSONL)
        return self.root / "train.jsonl"

    @property
    def heldout_set(self) -> Path:  # the pairs never trained on (chat JSONL)
        return self.root / "heldout.jsonl"

    @property
    def base(self) -> Path:  # which weights the adapter was trained on (base.BaseModel)
        return self.root / "base.json"

    @property
    def base_files(self) -> Path:  # the base GGUF, when it came out of a bundle file
        return self.root / "base"

    @property
    def checkpoint(self) -> Path:  # the latest training state, for resuming
        return self.root / "checkpoint"

    @property
    def peft(self) -> Path:  # the adapter in peft's format (safetensors + adapter_config.json)
        return self.root / "peft"

    @property
    def adapter(self) -> Path:  # the adapter as a GGUF LoRA, what llama.cpp loads
        return self.root / "adapter.gguf"

    @property
    def training(self) -> Path:  # the settings, the data counts and the losses
        return self.root / "training.json"

    @property
    def evaluation(self) -> Path:  # base vs base + adapter on the held-out pairs
        return self.root / "eval.json"

    @property
    def bundle_source(self) -> Path:  # bundle.toml + adapter.gguf, packed by pack
        return self.root / "bundle-src"

    def need(self, path: Path, made_by: str) -> Path:
        if not path.exists():
            raise DistillError(f"{path} is missing: run `appliance distill {made_by}` first")
        return path


def write_json(path: Path, document: Any) -> None:
    """Write a JSON document atomically (a crash never leaves half a file)."""
    with replacing(path) as f:
        f.write(json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DistillError(f"cannot read {path}: {e}") from e
