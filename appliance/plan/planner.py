"""Per target: does the model fit, with how many layers on the GPU, how fast, at what cost,
and where it does not fit, what would: a shorter context, fewer slots, a partial offload, a
smaller quantization.

A GPU target fits when all layers and the output layer go to its memory (``gpu_layers`` =
block count + 1), else with as many of the last layers as fit (the rest in host memory, at
the host's speed); a Jetson shares one memory between CPU and GPU; a CPU target holds it
all in RAM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from appliance.plan.catalog import Hardware
from appliance.plan.facts import ModelFacts
from appliance.plan.memory import Deployment, MemoryEstimate, estimate
from appliance.plan.speed import (
    DEFAULT_USD_PER_KWH,
    cost,
    estimate_speed,
    partial_offload_speed,
    workload,
)

QUANTIZATIONS = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0", "Q3_K", "Q2_K")
CONTEXT_STEP = 256  # tokens: llama.cpp pads contexts to this


@dataclass
class TargetPlan:
    hardware: str
    kind: str
    memory_bytes: int  # what the target offers (free now, on this box)
    weights_bytes: int
    kv_cache_bytes: int
    buffers_bytes: int
    total_bytes: int
    gpu_bytes: int
    fits: bool
    gpu_layers: int
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    usd_per_hour: float
    usd_per_mtok: float
    tokens_per_s_per_usd_hour: float
    tokens_per_s_per_watt: float
    memory_source: str
    price_source: str = ""
    price_date: str = ""
    would_fit: dict[str, Any] = field(default_factory=dict)
    quantizations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def requantized(facts: ModelFacts, type_name: str) -> ModelFacts:
    """`facts` as if every quantized tensor were `type_name` (F32 tensors stay F32)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    f32 = facts.tensor_types.get("F32", 0)
    quantized_params = facts.n_params - f32
    old = facts.weights_bytes - 4 * f32
    new = quantized_params * size // block
    ratio = new / old if old else 1.0
    return dataclasses.replace(
        facts,
        weights_bytes=4 * f32 + new,
        layer_bytes=tuple(int(b * ratio) for b in facts.layer_bytes),
        embedding_bytes=int(facts.embedding_bytes * ratio),
        output_bytes=int(facts.output_bytes * ratio),
        file_type=type_name,
        tensor_types={"F32": f32, type_name: quantized_params},
    )


class Planner:
    def __init__(
        self,
        facts: ModelFacts,
        deployment: Deployment,
        host_cpu: Hardware,
        usd_per_kwh: float = DEFAULT_USD_PER_KWH,
        overrides: dict[str, MemoryEstimate] | None = None,
    ) -> None:
        self.facts = facts
        self.deployment = deployment
        self.host_cpu = host_cpu  # where layers that are not offloaded run
        self.usd_per_kwh = usd_per_kwh
        self.overrides = overrides or {}  # llama.cpp's own figures, by target name

    def _placement(
        self, facts: ModelFacts, deployment: Deployment, hw: Hardware
    ) -> tuple[MemoryEstimate, bool]:
        """The memory with the most layers offloaded that fit, and whether it fits at all."""
        if facts.format != "gguf" or hw.kind != "gpu":
            memory = estimate(facts, deployment, facts.n_layer + 1 if hw.kind == "soc" else 0)
            return memory, memory.total_bytes <= hw.memory_bytes
        host_room = self.host_cpu.memory_bytes if self.host_cpu.measured else None
        for layers in range(facts.n_layer + 1, 0, -1):
            memory = estimate(facts, deployment, layers)
            if memory.gpu_bytes <= hw.memory_bytes:
                fits = host_room is None or memory.host_bytes <= host_room
                return memory, fits
        return estimate(facts, deployment, 0), False

    def _speed(
        self, facts: ModelFacts, memory: MemoryEstimate, hw: Hardware
    ) -> tuple[float, float]:
        work = workload(facts, min(self.deployment.context, 512), self.deployment.cache_type)
        if hw.kind == "gpu" and memory.gpu_layers <= facts.n_layer and facts.format == "gguf":
            layers = memory.gpu_layers
            on_gpu = sum(facts.layer_bytes[facts.n_layer - layers :]) if layers else 0
            share = on_gpu / work.decode_bytes if work.decode_bytes else 0.0
            speed = partial_offload_speed(work, hw, self.host_cpu, share)
        else:
            speed = estimate_speed(work, hw)
        return speed.decode_tokens_per_s, speed.prefill_tokens_per_s

    def plan(self, hw: Hardware) -> TargetPlan:
        memory, fits = self._placement(self.facts, self.deployment, hw)
        memory = self.overrides.get(hw.name, memory)
        if hw.name in self.overrides:
            fits = (memory.gpu_bytes if hw.kind == "gpu" else memory.total_bytes) <= hw.memory_bytes
        decode, prefill = self._speed(self.facts, memory, hw)
        money = cost(hw, decode, self.usd_per_kwh)
        target = TargetPlan(
            hardware=hw.name,
            kind=hw.kind,
            memory_bytes=hw.memory_bytes,
            weights_bytes=memory.weights_bytes,
            kv_cache_bytes=memory.kv_cache_bytes,
            buffers_bytes=memory.buffers_bytes,
            total_bytes=memory.total_bytes,
            gpu_bytes=memory.gpu_bytes,
            fits=fits,
            gpu_layers=memory.gpu_layers,
            decode_tokens_per_s=decode,
            prefill_tokens_per_s=prefill,
            usd_per_hour=money.usd_per_hour,
            usd_per_mtok=money.usd_per_mtok,
            tokens_per_s_per_usd_hour=money.tokens_per_s_per_usd_hour,
            tokens_per_s_per_watt=money.tokens_per_s_per_watt,
            memory_source=memory.source,
            price_source=hw.price_source,
            price_date=hw.price_date,
        )
        if self.facts.format == "gguf":
            target.quantizations = self._quantizations(hw)
            all_layers = memory.gpu_layers > self.facts.n_layer
            if not fits or (hw.kind == "gpu" and not all_layers):
                target.would_fit = self._would_fit(hw)
        return target

    def _fits(self, facts: ModelFacts, deployment: Deployment, hw: Hardware) -> bool:
        memory, fits = self._placement(facts, deployment, hw)
        return fits and (hw.kind != "gpu" or memory.gpu_layers > facts.n_layer)

    def _would_fit(self, hw: Hardware) -> dict[str, Any]:
        """What would fit entirely: the largest context per slot, the most slots, the
        smallest quantization step that does, and the offload split that fits now."""
        d = self.deployment
        advice: dict[str, Any] = {}
        low, high = 0, d.context // CONTEXT_STEP
        while low < high:  # the largest multiple of 256 tokens that fits
            mid = (low + high + 1) // 2
            if self._fits(self.facts, dataclasses.replace(d, context=mid * CONTEXT_STEP), hw):
                low = mid
            else:
                high = mid - 1
        advice["context"] = low * CONTEXT_STEP or None
        slots = next(
            (
                s
                for s in range(d.slots - 1, 0, -1)
                if self._fits(self.facts, dataclasses.replace(d, slots=s), hw)
            ),
            None,
        )
        advice["slots"] = slots
        memory, fits = self._placement(self.facts, d, hw)
        advice["gpu_layers"] = memory.gpu_layers if hw.kind == "gpu" and fits else None
        advice["quantization"] = next(
            (
                q
                for q in QUANTIZATIONS
                if requantized(self.facts, q).weights_bytes < self.facts.weights_bytes
                and self._fits(requantized(self.facts, q), d, hw)
            ),
            None,
        )
        return advice

    def _quantizations(self, hw: Hardware) -> list[dict[str, Any]]:
        rows = []
        for q in QUANTIZATIONS:
            facts = requantized(self.facts, q)
            memory, fits = self._placement(facts, self.deployment, hw)
            decode, _ = self._speed(facts, memory, hw)
            rows.append(
                {
                    "type": q,
                    "weights_bytes": facts.weights_bytes,
                    "total_bytes": memory.total_bytes,
                    "fits": fits,
                    "gpu_layers": memory.gpu_layers,
                    "decode_tokens_per_s": decode,
                    "usd_per_mtok": cost(hw, decode, self.usd_per_kwh).usd_per_mtok,
                }
            )
        return rows
