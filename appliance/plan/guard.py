"""The model manager's memory guard: the plan's estimate for the contexts the daemon makes.

A GGUF chat/completion model needs its weights, its KV cache (per layer, per slot, at the
context the daemon gives it, sliding-window layers as the GGUF states them) and llama.cpp's
compute and output buffers (``memory.estimate``: tested against llama.cpp's own figures).
With a GPU the daemon offloads every layer, so the GPU's share must fit in the GPU memory
free now (summed over GPUs: llama.cpp splits layers across them) and the rest in RAM.
A file whose header cannot be read (or an ONNX model) falls back to the weights' size
times ``FALLBACK_OVERHEAD``: a changed or broken file is for the load's own check to name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ModelError
from appliance.plan.facts import facts_of
from appliance.plan.memory import Deployment, estimate

MIB = 2**20
FALLBACK_OVERHEAD = 1.2  # the weights' size times this, where the header cannot be read
FALLBACK_KV_BYTES_PER_TOKEN = 64 * 1024  # bytes per token per slot, the same case


@dataclass(frozen=True)
class Need:
    host_bytes: int
    gpu_bytes: int
    detail: str  # how the figure is made up, for the refusal's message


def need(
    weights: Path, weights_size: int, context: int, slots: int, generates: bool, offload: bool
) -> Need:
    """What loading `weights` takes (see the module's docstring)."""
    try:
        facts = facts_of(weights) if weights.suffix != ".onnx" else None
    except ModelError:
        facts = None
    if facts is None or facts.format != "gguf" or not generates:
        kv = slots * context * FALLBACK_KV_BYTES_PER_TOKEN
        total = int(weights_size * FALLBACK_OVERHEAD) + kv
        return Need(total, 0, f"weights x {FALLBACK_OVERHEAD} + {slots} x {context} x 64 KiB")
    memory = estimate(facts, Deployment(context, slots), facts.n_layer + 1 if offload else 0)
    detail = (
        f"weights {memory.weights_bytes // MIB} MiB, KV cache {memory.kv_cache_bytes // MIB} MiB "
        f"for {slots} slot(s) x {context} tokens, buffers {memory.buffers_bytes // MIB} MiB"
    )
    return Need(memory.host_bytes, memory.gpu_bytes, detail)


def gpu_free_bytes() -> int:
    """GPU memory free now, over all GPUs (nvidia-smi: total less used)."""
    from appliance.runtime.gpu import gpus

    free = 0.0
    for gpu in gpus():
        total, used = gpu.get("memory_total_mib"), gpu.get("memory_used_mib") or 0.0
        if total:
            free += total - used
    return int(free * MIB)
