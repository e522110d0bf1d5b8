"""Tokens per second and what a token costs, from memory bandwidth and compute.

Decode (one request at a time): each generated token reads every layer's weights, the
output matrix, and the KV cache written so far, so its time is

    bytes read per token / (decode_efficiency x bandwidth)  +  n_layer x us_per_layer

or the compute time (2 FLOPs per weight, at the prefill efficiency) where that is longer:
a CPU with few cores is bound by arithmetic before memory. Prefill is compute: 2 FLOPs per
weight of the layers per prompt token (the output matrix runs for the last token only) plus
attention, at ``prefill_efficiency`` of the dense FP16 peak. Both efficiencies and the fixed
cost come from the catalog (fitted to published llama.cpp figures where there are any) and
``appliance plan --measure`` calibrates them on this box.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.plan.catalog import Hardware
from appliance.plan.facts import ModelFacts
from appliance.plan.gguf_header import tensor_nbytes

DEFAULT_USD_PER_KWH = 0.15


@dataclass(frozen=True)
class Workload:
    decode_bytes: float  # read per generated token
    decode_flops: float  # per generated token
    prefill_flops: float  # per prompt token
    n_layer: int


def workload(facts: ModelFacts, context_tokens: int, cache_type: str = "f16") -> Workload:
    """What one token costs with `context_tokens` already in the context (its KV read)."""
    embedding_params = facts.n_vocab * facts.n_embd
    tied = facts.output_bytes == facts.embedding_bytes
    layer_params = facts.n_params - embedding_params - (0 if tied else embedding_params)
    kv_read = 0
    attention_flops = 0
    for layer in range(facts.n_layer):
        k, v = facts.kv_width(layer)
        seen = context_tokens
        if layer in facts.swa_layers and facts.sliding_window:
            seen = min(seen, facts.sliding_window)
        kv_read += seen * (
            tensor_nbytes(cache_type.upper(), k) + tensor_nbytes(cache_type.upper(), v)
        )
        attention_flops += 2 * seen * facts.n_head[layer] * (facts.head_dim_k + facts.head_dim_v)
    return Workload(
        decode_bytes=sum(facts.layer_bytes) + facts.output_bytes + kv_read,
        decode_flops=2.0 * (layer_params + embedding_params) + attention_flops,
        prefill_flops=2.0 * layer_params + attention_flops / 2,  # on average half the prompt
        n_layer=facts.n_layer,
    )


@dataclass(frozen=True)
class Speed:
    decode_tokens_per_s: float
    prefill_tokens_per_s: float


def estimate_speed(work: Workload, hw: Hardware) -> Speed:
    """Tokens/s with everything on `hw`."""
    bandwidth = hw.decode_efficiency * hw.bandwidth_gbs * 1e9
    flops = hw.prefill_efficiency * hw.fp16_tflops * 1e12
    memory_s = work.decode_bytes / bandwidth
    compute_s = work.decode_flops / flops
    fixed_s = work.n_layer * hw.us_per_layer * 1e-6
    decode_s = max(memory_s, compute_s) + fixed_s
    return Speed(1.0 / decode_s, flops / work.prefill_flops)


def partial_offload_speed(work: Workload, gpu: Hardware, host: Hardware, gpu_share: float) -> Speed:
    """Tokens/s with `gpu_share` of the bytes read per token on the GPU, the rest on the host."""
    on_gpu = estimate_speed(work, gpu)
    on_host = estimate_speed(work, host)
    decode_s = (
        gpu_share / on_gpu.decode_tokens_per_s + (1 - gpu_share) / on_host.decode_tokens_per_s
    )
    prefill_s = (
        gpu_share / on_gpu.prefill_tokens_per_s + (1 - gpu_share) / on_host.prefill_tokens_per_s
    )
    return Speed(1.0 / decode_s, 1.0 / prefill_s)


@dataclass(frozen=True)
class Cost:
    usd_per_hour: float  # hardware (reference) + electricity at TDP
    usd_per_mtok: float  # per million generated tokens, one request at a time
    tokens_per_s_per_usd_hour: float
    tokens_per_s_per_watt: float


def cost(
    hw: Hardware, decode_tokens_per_s: float, usd_per_kwh: float = DEFAULT_USD_PER_KWH
) -> Cost:
    hourly = hw.usd_per_hour + hw.tdp_watts / 1000 * usd_per_kwh
    per_mtok = hourly / (decode_tokens_per_s * 3600) * 1e6 if decode_tokens_per_s > 0 else 0.0
    return Cost(
        usd_per_hour=hourly,
        usd_per_mtok=per_mtok,
        tokens_per_s_per_usd_hour=decode_tokens_per_s / hourly if hourly else 0.0,
        tokens_per_s_per_watt=decode_tokens_per_s / hw.tdp_watts if hw.tdp_watts else 0.0,
    )
