"""The whole of `appliance plan`: read the model, size it for each target, ask llama.cpp for
this box's figures, and with ``--measure`` run it and compare.

On this box the memory is llama.cpp's own (the no-allocation trial of ``llama_probe``) when
it can give it, the closed form otherwise and for every catalog target; both are in the
document so a reader sees how far apart they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, UsageError
from appliance.home import Home
from appliance.plan import catalog as catalog_mod
from appliance.plan.catalog import Hardware
from appliance.plan.facts import ModelFacts, facts_of
from appliance.plan.host import this_box
from appliance.plan.llama_probe import probe
from appliance.plan.memory import CACHE_TYPES, Deployment, MemoryEstimate, contexts_for, estimate
from appliance.plan.planner import Planner, TargetPlan
from appliance.plan.source import open_source
from appliance.plan.speed import DEFAULT_USD_PER_KWH, workload
from appliance.settings import load_settings


@dataclass(frozen=True)
class PlanRequest:
    model: str
    context: int | None = None  # tokens per slot; None: the manifest's, capped by config
    slots: int | None = None  # None: the manifest's, else config.toml's [runtime] slots
    cache_type: str = "f16"
    targets: tuple[str, ...] = ()  # catalog names; () = this box and the whole catalog
    catalog_files: tuple[Path, ...] = ()
    measure: bool = False
    use_llama: bool = True  # ask llama.cpp for this box's figures
    usd_per_kwh: float = DEFAULT_USD_PER_KWH


def _deployment(request: PlanRequest, home: Home, context: int, slots: int | None) -> Deployment:
    settings = load_settings(home.config_file).runtime
    if request.cache_type not in CACHE_TYPES:
        raise UsageError(f"--cache-type {request.cache_type}: one of {', '.join(CACHE_TYPES)}")
    if request.context is not None:
        context = request.context
    elif settings.context_length:
        context = min(context, settings.context_length)
    chosen = request.slots or slots or settings.slots
    if context < 1 or chosen < 1:
        raise UsageError("--context and --slots must be at least 1")
    return Deployment(context=context, slots=chosen, cache_type=request.cache_type)


def _llama_memory(facts: ModelFacts, deployment: Deployment, gpu_layers: int) -> MemoryEstimate:
    """llama.cpp's own figures for this box (its weights, KV cache and buffers)."""
    found = probe(facts.path, contexts_for(deployment), n_gpu_layers=gpu_layers)
    closed = estimate(facts, deployment, gpu_layers)
    return dataclasses.replace(
        closed,
        weights_bytes=found.weights_bytes + (closed.weights_bytes - facts.weights_bytes),
        kv_cache_bytes=found.kv_bytes,
        buffers_bytes=found.buffers_bytes,
        source="llama.cpp",
    )


def make_plan(request: PlanRequest, home: Home) -> dict[str, Any]:
    """The plan document (what --json prints)."""
    catalog = catalog_mod.load_catalog(home.root / "hardware.toml", *request.catalog_files)
    chosen = [catalog_mod.find(catalog, name) for name in request.targets]
    with open_source(request.model, home) as source:
        facts = facts_of(source.path)
        deployment = _deployment(request, home, source.context_length, source.slots)
        host = this_box(catalog)
        local: list[Hardware] = [*host.gpus, host.cpu]
        overrides: dict[str, MemoryEstimate] = {}
        closed_local: dict[str, Any] = {}
        probe_error = None
        if request.use_llama and facts.format == "gguf":
            # the daemon offloads every layer when there is a GPU (llama.cpp's CPU build
            # reports host buffers whatever it is asked)
            layers = facts.n_layer + 1 if host.gpus else 0
            try:
                overrides[local[0].name] = _llama_memory(facts, deployment, layers)
                closed = estimate(facts, deployment, layers)
                closed_local = {
                    "kv_cache_bytes": closed.kv_cache_bytes,
                    "buffers_bytes": closed.buffers_bytes,
                    "weights_bytes": closed.weights_bytes,
                }
            except ApplianceError as e:
                probe_error = str(e)
        planner = Planner(facts, deployment, host.cpu, request.usd_per_kwh, overrides)
        targets = local + (chosen or [h for h in catalog])
        plans = [planner.plan(hw) for hw in targets]
        document: dict[str, Any] = {
            "model": _model_json(facts, source.label),
            "deployment": dataclasses.asdict(deployment),
            "targets": [p.to_json() for p in plans],
            "closed_form_on_this_box": closed_local,
            "llama_cpp_error": probe_error,
            "host_bandwidth_gbs": host.cpu.bandwidth_gbs,
        }
        if request.measure:
            measured = _measure(facts, deployment, source.role, plans[0], local[0])
            document["measured"] = measured
            document["targets"][0].update(
                {k: v for k, v in measured.items() if k.startswith("measured_")}
            )
    return document


def _model_json(facts: ModelFacts, label: str) -> dict[str, Any]:
    return {
        "label": label,
        "path": str(facts.path),
        "format": facts.format,
        "architecture": facts.architecture,
        "name": facts.name,
        "file_type": facts.file_type,
        "n_params": facts.n_params,
        "weights_bytes": facts.weights_bytes,
        "n_layer": facts.n_layer,
        "n_vocab": facts.n_vocab,
        "context_train": facts.context_train,
        "sliding_window": facts.sliding_window,
        "sliding_window_layers": sorted(facts.swa_layers),
        "sliding_window_pattern_known": facts.swa_pattern_known,
    }


def _measure(
    facts: ModelFacts, deployment: Deployment, role: str, predicted: TargetPlan, hw: Hardware
) -> dict[str, Any]:
    from appliance.plan.measure import measure

    if facts.format != "gguf":
        raise UsageError("--measure runs GGUF models (ONNX models are not timed yet)")
    found = measure(facts.path, deployment, role)
    work = workload(facts, min(deployment.context, 512), deployment.cache_type)
    fixed = work.n_layer * hw.us_per_layer * 1e-6
    per_token = 1 / found.decode_tokens_per_s - fixed
    return {
        "hardware": predicted.hardware,
        "measured_decode_tokens_per_s": found.decode_tokens_per_s,
        "measured_prefill_tokens_per_s": found.prefill_tokens_per_s,
        "measured_rss_bytes": found.rss_bytes,
        "measured_model_rss_bytes": found.model_rss_bytes,
        "predicted_decode_tokens_per_s": predicted.decode_tokens_per_s,
        "predicted_prefill_tokens_per_s": predicted.prefill_tokens_per_s,
        "predicted_total_bytes": predicted.total_bytes,
        "decode_ratio": found.decode_tokens_per_s / predicted.decode_tokens_per_s,
        "prefill_ratio": found.prefill_tokens_per_s / predicted.prefill_tokens_per_s,
        "memory_ratio": found.model_rss_bytes / predicted.total_bytes,
        # what this box's figures would have to be for the estimate to match it
        "calibrated_decode_efficiency": work.decode_bytes / (hw.bandwidth_gbs * 1e9 * per_token)
        if per_token > 0
        else None,
        "calibrated_prefill_efficiency": found.prefill_tokens_per_s
        * work.prefill_flops
        / (hw.fp16_tflops * 1e12),
        "prompt_tokens": found.prompt_tokens,
        "generated_tokens": found.generated_tokens,
    }
