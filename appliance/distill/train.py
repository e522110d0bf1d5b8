"""``appliance distill train``: golden JSONL in, a checked GGUF LoRA adapter out.

The step an operator runs on a workstation (the ``[train]`` extra: torch, transformers,
peft, gguf): find the base's exact weights, clean and split the pairs, fine-tune, convert,
check. Everything lands in one run folder (see ``rundir``); running the same command again
resumes an interrupted fine-tune.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.distill import base as bases
from appliance.distill.prepare import prepare
from appliance.distill.rundir import RunDir, write_json
from appliance.home import Home

if TYPE_CHECKING:
    from appliance.distill.trainer import Step, TrainSettings

DEFAULT_HELDOUT = 0.2  # share of distinct prompts held out
DEFAULT_MAX_TOKENS = 1024  # prompt + answer tokens of one training pair, at most


@dataclass(frozen=True)
class TrainReport:
    run: Path
    document: dict[str, Any]  # what training.json holds

    @property
    def losses(self) -> list[float]:
        return list(self.document["losses"])


def run(
    golden: Path,
    model: str,
    out: Path,
    home: Home,
    settings: TrainSettings | None = None,
    heldout_share: float = DEFAULT_HELDOUT,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_phase: Callable[[str], None] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> TrainReport:
    """Train an adapter for `model` (bundle file, GGUF or installed name) into `out`."""
    from appliance.distill import convert, trainer  # torch: only when training

    settings = settings or trainer.TrainSettings()
    phase = on_phase or (lambda _: None)
    folder = RunDir(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    phase(f"reading the base model {model}")
    base = bases.resolve(model, folder.base_files, home)
    write_json(folder.base, base.to_json())
    prepared = prepare(golden, folder, base, heldout_share, settings.seed, max_tokens)
    timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    phase(
        f"training on {len(prepared.train)} pairs ({len(prepared.heldout)} held out), "
        f"{settings.steps} steps"
    )
    trained = trainer.train(
        folder, base, prepared.train, prepared.heldout_encoded, settings, on_step
    )
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    phase("converting to a GGUF adapter")
    tensors = convert.convert(folder.peft, base, trained.config, folder.adapter)
    timings["convert_s"] = time.perf_counter() - t0

    document = {
        "golden": str(golden),
        "base": base.to_json(),
        "settings": {**asdict(settings), "heldout_share": heldout_share, "max_tokens": max_tokens},
        "data": prepared.counts,
        "screened_out": prepared.dropped,
        "device": trained.device,
        "trainable_parameters": trained.trainable_parameters,
        "resumed_at_step": trained.resumed_at,
        "losses": trained.losses,
        "heldout_loss_before": trained.heldout_loss_before,
        "heldout_loss_after": trained.heldout_loss_after,
        "seconds_per_step": round(trained.seconds_per_step, 3),
        "adapter_tensors": tensors,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "base_config": trained.config,
    }
    write_json(folder.training, document)
    return TrainReport(folder.root, document)
