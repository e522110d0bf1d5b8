"""The LoRA fine-tune itself: transformers loads the GGUF, peft adds the adapter, torch trains.

The base weights are the box's own: transformers reads the same GGUF file and dequantizes
it, so the adapter learns corrections to exactly the weights llama.cpp serves (a float
original would be a different model by the quantization error). Nothing is fetched from a
hub: config, weights and vocabulary all come from the GGUF.

Two things make this fast enough for a CPU (measured in ../shared/MEASURED.md: about 2 s a
step for SmolLM2, batch 8): the output layer runs only where an answer token is predicted
(the prompt positions' logits are never needed; for Gemma's 262k-word vocabulary they
would dominate), and ``torch.set_flush_denormal(True)``, without which late steps on x86
fall onto the denormal slow path (4x slower). A GPU is used when torch sees one.

Resumable: every ``checkpoint_every`` steps the adapter, the optimiser, the schedule and
the random state go to ``checkpoint/`` (a new folder renamed over the old, so a crash
leaves one whole checkpoint). Run the same command again and it goes on from there; the
batch order is a function of the seed and the step, so a resumed run trains on the same
batches as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from appliance.distill.base import BaseModel
from appliance.distill.encoding import IGNORE, Encoded
from appliance.distill.rundir import RunDir, read_json, write_json
from appliance.errors import DistillError


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: int = 32  # peft scales the update by alpha / rank; llama.cpp reads it too
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 200
    batch_size: int = 8  # pairs per step
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    seed: int = 0
    checkpoint_every: int = 25  # steps
    threads: int = 0  # CPU threads for torch (0: one per physical core)

    def fingerprint(self, data: bytes, base_sha256: str) -> str:
        """What must match for a checkpoint to be resumed (not how often it is written)."""
        chosen = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "threads")}
        text = json.dumps({"settings": chosen, "base": base_sha256}, sort_keys=True)
        return hashlib.sha256(text.encode() + hashlib.sha256(data).digest()).hexdigest()


@dataclass(frozen=True)
class Step:
    step: int  # 1-based, of `total`
    total: int
    loss: float  # mean over the answer tokens of this step's batch
    seconds: float  # wall time of this step


@dataclass
class Trained:
    steps: int
    resumed_at: int  # 0 for a fresh run
    losses: list[float]
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    seconds_per_step: float
    device: str
    trainable_parameters: int
    config: dict[str, Any] = field(default_factory=dict)  # the base's transformers config


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(base: BaseModel, device: str) -> Any:
    """The GGUF as a float32 transformers model (dequantized), from local files only."""
    import transformers

    # transformers' own logging helpers carry no annotations: called through Any
    logging: Any = transformers.utils.logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    auto: Any = transformers.AutoModelForCausalLM
    try:
        with _quiet_gguf_loader():
            model = auto.from_pretrained(
                str(base.gguf.parent),
                gguf_file=base.gguf.name,
                dtype=torch.float32,
                local_files_only=True,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DistillError(f"transformers cannot load {base.gguf.name}: {e}") from e
    return model.to(device)


@contextlib.contextmanager
def _quiet_gguf_loader() -> Any:
    """transformers' GGUF loader draws its own tqdm bar, which no setting turns off; the
    caller shows progress its own way."""
    loader = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    original = getattr(loader, "tqdm", None)
    if original is None:
        yield
        return
    setattr(loader, "tqdm", lambda items, **_: items)  # noqa: B010 (a module attribute)
    try:
        yield
    finally:
        setattr(loader, "tqdm", original)  # noqa: B010


def _batches(count: int, size: int, steps: int, seed: int) -> np.ndarray:
    """Example indices for every step: seeded epoch permutations, end to end."""
    epochs = math.ceil(steps * size / count)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(count) for _ in range(epochs)])
    return order[: steps * size].reshape(steps, size)


def _collate(examples: Sequence[Encoded], device: str) -> tuple[torch.Tensor, ...]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):  # right padding: causal attention never sees it
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def answer_loss(model: Any, examples: Sequence[Encoded], device: str) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, computing logits only where they are needed."""
    ids, labels, mask = _collate(examples, device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]  # position t predicts token t + 1
    wanted = targets != IGNORE
    logits = head(hidden[:, :-1][wanted]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 style: the served model caps its logits, so the trained one must too
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets[wanted])


def _mean_loss(model: Any, examples: Sequence[Encoded], device: str, size: int) -> float | None:
    if not examples:
        return None
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            n = sum(e.answer_tokens for e in chunk)
            total += float(answer_loss(model, chunk, device)) * n
            tokens += n
    model.train()
    return total / tokens


def _lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA weights only (the embeddings are not trained: no need to look for a config)."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().contiguous()
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }


def _save_checkpoint(
    folder: Path, model: Any, optimizer: Any, schedule: Any, step: int, state: dict[str, Any]
) -> None:
    from safetensors.torch import save_file

    fresh = folder.with_name(folder.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    save_file(_lora_state(model), str(fresh / "adapter.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": torch.get_rng_state(),
        },
        fresh / "state.pt",
    )
    write_json(fresh / "state.json", {**state, "step": step})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _resume(
    folder: Path, fingerprint: str, model: Any, optimizer: Any, schedule: Any
) -> dict[str, Any]:
    """Load the checkpoint in `folder` when it is of this run: its state.json, else {}."""
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and (old / "state.json").exists():  # a crash between two renames
        old.rename(folder)
    if not (folder / "state.json").exists():
        return {}
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state: dict[str, Any] = read_json(folder / "state.json")
    if state.get("fingerprint") != fingerprint:
        raise DistillError(
            f"{folder} holds a run with other data or settings: give another --out, or "
            "delete that folder to start again"
        )
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors")))
    saved = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    torch.set_rng_state(saved["rng"])
    return state


def base_config(model: Any) -> dict[str, Any]:
    """The base's transformers config, without the GGUF loader's quantization entry."""
    config: dict[str, Any] = model.config.to_dict()
    config.pop("quantization_config", None)
    config.setdefault("architectures", [type(model).__name__])
    return config


def train(
    run: RunDir,
    base: BaseModel,
    train_set: Sequence[Encoded],
    heldout: Sequence[Encoded],
    settings: TrainSettings,
    on_step: Callable[[Step], None] | None = None,
) -> Trained:
    """Fine-tune a LoRA on `train_set`; write it to ``run.peft`` in peft's format."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    torch.set_flush_denormal(True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    device = _device()
    model = load_base(base, device)
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers about a deprecated name
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as e:  # a target module the architecture does not have
        raise DistillError(f"cannot put a LoRA on {', '.join(settings.targets)}: {e}") from e
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    schedule = _schedule(optimizer, settings)
    fingerprint = settings.fingerprint(run.train_set.read_bytes(), base.sha256)
    state = _resume(run.checkpoint, fingerprint, model, optimizer, schedule)
    start = int(state.get("step", 0))
    losses: list[float] = state.get("losses", [])
    timings: list[float] = state.get("step_seconds", [])
    batches = _batches(len(train_set), settings.batch_size, settings.steps, settings.seed)
    if start == 0:
        state["heldout_loss_before"] = _mean_loss(model, heldout, device, settings.batch_size)
    for step in range(start, settings.steps):
        t0 = time.perf_counter()
        loss = answer_loss(model, [train_set[i] for i in batches[step]], device)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 5))
        timings.append(round(time.perf_counter() - t0, 3))
        if on_step is not None:
            on_step(Step(step + 1, settings.steps, losses[-1], timings[-1]))
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            state.update(fingerprint=fingerprint, losses=losses, step_seconds=timings)
            _save_checkpoint(run.checkpoint, model, optimizer, schedule, done, state)
    after = _mean_loss(model, heldout, device, settings.batch_size)
    run.peft.mkdir(parents=True, exist_ok=True)
    save_file(_lora_state(model), str(run.peft / "adapter_model.safetensors"))
    lora.save_pretrained(str(run.peft))
    return Trained(
        steps=settings.steps,
        resumed_at=start,
        losses=losses,
        heldout_loss_before=state.get("heldout_loss_before"),
        heldout_loss_after=after,
        seconds_per_step=sum(timings) / len(timings) if timings else 0.0,
        device=device,
        trainable_parameters=sum(p.numel() for p in parameters),
        config=base_config(model.get_base_model()),
    )


def _schedule(optimizer: Any, settings: TrainSettings) -> Any:
    """Linear warm-up, then cosine decay to a tenth of the learning rate."""
    warmup, total = min(settings.warmup_steps, settings.steps // 2), settings.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
