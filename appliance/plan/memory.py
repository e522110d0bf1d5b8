"""The closed form: the memory a GGUF model takes as the daemon runs it.

Weights, KV cache and buffers, for the contexts the daemon's backends make (``contexts_for``
mirrors ``runtime.batched`` and ``runtime.llama_backend``), split between a GPU and host
memory by the number of layers offloaded. Every rule here is llama.cpp's own (0.3.36's
vendored source), and tests/test_plan.py checks each figure against what llama.cpp itself
reports for the same contexts (``llama_probe``):

- KV cache: llama.cpp pads each sequence's context to 256 cells; every layer keeps, per cell,
  ``head_dim_k x kv_heads`` K values and as many V values at the cache type (f16: 2 bytes;
  q8_0: 34 bytes per 32); a sliding-window layer keeps ``window + n_ubatch`` cells (padded
  to 256) unless the cache is full-size (``swa_full``: what the daemon asks for, so that
  prompt prefixes stay reusable).
- Output buffer: one row of logits (vocabulary x 4 bytes) per sequence.
- Compute buffer: the larger of the output stage (``n_ubatch`` rows of logits and a few
  activations) and, without flash attention, the attention stage (the ``n_kv x n_ubatch``
  score matrix per head). An approximation of llama.cpp's graph allocator: within a few
  percent on the demo models (the test says how close).
- Offload (llama.cpp's ``n_gpu_layers``): the last N layers go to the GPU, the output layer
  counting as one more; the token embedding always stays in host memory; a layer's KV cache
  sits beside its weights. A tied output matrix (no ``output.weight``) is copied to the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from appliance.plan.facts import ModelFacts
from appliance.plan.gguf_header import tensor_nbytes
from appliance.plan.llama_probe import ContextShape

KV_PAD = 256  # cells: llama.cpp pads each sequence's context and the SWA cache to this
ACTIVATION_ROWS = 4  # n_embd-wide f32 activations live beside the logits (fitted, see above)
# The batched backend's holder context (runtime.batched.HOLDER_CTX) and prefill chunk
HOLDER_CTX = 64  # tokens
PREFILL_CHUNK = 256  # tokens
SINGLE_BATCH = 512  # llama_cpp.Llama's default n_batch / n_ubatch
QUANTIZED_CACHE = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
CACHE_TYPES = ("f16", "bf16", "f32", *QUANTIZED_CACHE)


@dataclass(frozen=True)
class Deployment:
    """How the model is run: tokens of context per slot, slots, KV cache type."""

    context: int
    slots: int = 1
    cache_type: str = "f16"


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    buffers_bytes: int  # compute + output buffers
    gpu_layers: int  # layers offloaded (n_layer + 1 = all, output layer included)
    gpu_bytes: int  # of the total, what sits in GPU memory
    source: str = "closed form"  # or "llama.cpp" where llama.cpp itself gave the figures

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.buffers_bytes

    @property
    def host_bytes(self) -> int:
        return self.total_bytes - self.gpu_bytes


def _pad(value: int, to: int = KV_PAD) -> int:
    return (value + to - 1) // to * to


def contexts_for(deployment: Deployment) -> list[ContextShape]:
    """The llama.cpp contexts the daemon makes for `deployment` (see runtime.batched and
    runtime.llama_backend): with several slots a small holder context (llama_cpp.Llama,
    flash attention off) and one batched context of a KV sequence per slot; with one slot,
    one llama_cpp.Llama context."""
    k = v = deployment.cache_type
    if deployment.slots > 1:
        chunk = PREFILL_CHUNK + deployment.slots
        return [
            ContextShape(HOLDER_CTX, 1, HOLDER_CTX, HOLDER_CTX, flash_attn=False),
            ContextShape(
                deployment.context * deployment.slots,
                deployment.slots,
                chunk,
                chunk,
                kv_unified=False,
                swa_full=True,
                type_k=k,
                type_v=v,
            ),
        ]
    batch = min(deployment.context, SINGLE_BATCH)
    # llama.cpp quantizes the V cache only with flash attention: a what-if for that case
    flash = None if k in QUANTIZED_CACHE else False
    return [ContextShape(deployment.context, 1, batch, batch, flash_attn=flash, type_k=k, type_v=v)]


def _cells(facts: ModelFacts, shape: ContextShape) -> tuple[int, int, int]:
    """Streams, cells per stream of a global layer, cells per stream of a window layer."""
    n_ctx = _pad(shape.n_ctx)
    streams = 1 if shape.kv_unified else shape.n_seq_max
    per_stream = n_ctx if shape.kv_unified else _pad(n_ctx // shape.n_seq_max)
    ubatch = min(shape.n_ubatch, shape.n_batch)
    if shape.swa_full or not facts.sliding_window:
        window = per_stream
    else:
        seqs = shape.n_seq_max if shape.kv_unified else 1
        window = min(per_stream, _pad(facts.sliding_window * seqs + ubatch))
    return streams, per_stream, window


def kv_cache_bytes(facts: ModelFacts, shape: ContextShape, layers: range | None = None) -> int:
    """Bytes of the KV cache of context `shape` (of `layers` only, when given)."""
    streams, cells, window = _cells(facts, shape)
    total = 0
    for layer in layers if layers is not None else range(facts.n_layer):
        k, v = facts.kv_width(layer)
        per_cell = tensor_nbytes(shape.type_k.upper(), k) + tensor_nbytes(shape.type_v.upper(), v)
        total += streams * (window if layer in facts.swa_layers else cells) * per_cell
    return total


def output_bytes(facts: ModelFacts, shape: ContextShape) -> int:
    return facts.n_vocab * 4 * shape.n_seq_max


def compute_bytes(facts: ModelFacts, shape: ContextShape) -> int:
    ubatch = min(shape.n_ubatch, shape.n_batch)
    logits_stage = ubatch * 4 * (facts.n_vocab + ACTIVATION_ROWS * facts.n_embd)
    if shape.flash_attn is not False:  # llama.cpp's auto turns it on for CPU and CUDA
        return logits_stage
    _, n_kv, _ = _cells(facts, shape)
    heads = max(facts.n_head, default=0)
    attention_stage = n_kv * ubatch * 4 * (heads + 1) + ubatch * 4 * ACTIVATION_ROWS * facts.n_embd
    return max(logits_stage, attention_stage)


def _offloaded(facts: ModelFacts, gpu_layers: int) -> tuple[range, bool]:
    """The layers on the GPU (llama.cpp offloads the last ones) and whether the output is."""
    gpu_layers = max(0, min(gpu_layers, facts.n_layer + 1))
    repeating = min(gpu_layers, facts.n_layer)
    return range(facts.n_layer - repeating, facts.n_layer), gpu_layers > facts.n_layer


def estimate(facts: ModelFacts, deployment: Deployment, gpu_layers: int = 0) -> MemoryEstimate:
    """The closed form for `deployment` with `gpu_layers` offloaded (0: CPU only)."""
    if facts.format != "gguf":
        return MemoryEstimate(facts.weights_bytes, 0, 0, 0, 0)
    shapes = contexts_for(deployment)
    on_gpu, output_on_gpu = _offloaded(facts, gpu_layers)
    kv = sum(kv_cache_bytes(facts, s) for s in shapes)
    buffers = sum(compute_bytes(facts, s) + output_bytes(facts, s) for s in shapes)
    weights = facts.weights_bytes
    gpu = 0
    if gpu_layers > 0:
        gpu += sum(facts.layer_bytes[i] for i in on_gpu)
        gpu += sum(kv_cache_bytes(facts, s, on_gpu) for s in shapes)
        gpu += sum(compute_bytes(facts, s) for s in shapes)
        if output_on_gpu:
            gpu += facts.output_bytes
            if facts.output_bytes and facts.output_bytes == facts.embedding_bytes:
                weights += facts.output_bytes  # tied: a second copy on the GPU
    return MemoryEstimate(weights, kv, buffers, max(0, min(gpu_layers, facts.n_layer + 1)), gpu)


def with_source(memory: MemoryEstimate, source: str) -> MemoryEstimate:
    return replace(memory, source=source)
