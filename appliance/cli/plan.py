"""`appliance plan MODEL`: will it fit, how fast, at what cost per token (parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.plan.run import PlanRequest, make_plan
from appliance.plan.speed import DEFAULT_USD_PER_KWH

MIB = 2**20


def _mib(value: int | float) -> str:
    return f"{value / MIB:,.0f}"


def _tps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _advice(would_fit: dict[str, Any]) -> str:
    parts = []
    if would_fit.get("context"):
        parts.append(f"context {would_fit['context']}")
    if would_fit.get("slots"):
        parts.append(f"slots {would_fit['slots']}")
    if would_fit.get("gpu_layers"):
        parts.append(f"{would_fit['gpu_layers']} GPU layers")
    if would_fit.get("quantization"):
        parts.append(would_fit["quantization"])
    return " or ".join(parts) if parts else ("nothing smaller fits" if would_fit else "")


def plan(
    model: str = typer.Argument(
        ..., help="An installed model's name, a bundle file, or a GGUF/ONNX file."
    ),
    context: int = typer.Option(
        0, "--context", help="Tokens per slot (default: the manifest's, capped by config.toml)."
    ),
    slots: int = typer.Option(
        0, "--slots", help="Requests served at once (default: the manifest's or config.toml's)."
    ),
    cache_type: str = typer.Option(
        "f16", "--cache-type", help="KV cache type: f16, q8_0, q4_0, ..."
    ),
    target: list[str] = typer.Option(
        [], "--target", help="Catalog entries to size for (repeatable; default: all)."
    ),
    catalog: list[Path] = typer.Option(
        [], "--catalog", help="More hardware entries (TOML, as hardware.toml)."
    ),
    measure: bool = typer.Option(
        False, "--measure", help="Run a short benchmark here and compare."
    ),
    closed_form: bool = typer.Option(
        False, "--closed-form", help="Do not ask llama.cpp for this box's figures."
    ),
    usd_per_kwh: float = typer.Option(
        DEFAULT_USD_PER_KWH, "--usd-per-kwh", help="Electricity price."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Memory, tokens/s and cost per token of MODEL on this box and on catalog hardware."""
    request = PlanRequest(
        model=model,
        context=context or None,
        slots=slots or None,
        cache_type=cache_type,
        targets=tuple(target),
        catalog_files=tuple(catalog),
        measure=measure,
        use_llama=not closed_form,
        usd_per_kwh=usd_per_kwh,
    )
    document = make_plan(request, home())
    if as_json:
        print_json(document)
        return
    _print(document)


def _print(document: dict[str, Any]) -> None:
    m, d = document["model"], document["deployment"]
    console.print(
        f"{m['label']}: {m['architecture']} {m['file_type']}, {m['n_params'] / 1e6:,.0f} M "
        f"parameters, {_mib(m['weights_bytes'])} MiB of weights; {d['slots']} slot(s) x "
        f"{d['context']} tokens, KV cache {d['cache_type']}",
        markup=False,
    )
    if m["sliding_window"]:
        console.print(
            f"sliding window {m['sliding_window']} tokens on {len(m['sliding_window_layers'])} "
            f"of {m['n_layer']} layers (the daemon keeps a full-size cache for them)",
            markup=False,
        )
    table = Table(title_justify="left")
    for column in (
        "hardware",
        "MiB weights",
        "KV",
        "buffers",
        "total",
        "fits",
        "GPU layers",
        "decode tok/s",
        "prefill tok/s",
        "$/Mtok",
        "tok/s per $/h",
        "tok/s per W",
        "would fit",
    ):
        table.add_column(column, overflow="fold")
    for t in document["targets"]:
        table.add_row(
            t["hardware"] + (" *" if t["memory_source"] == "llama.cpp" else ""),
            _mib(t["weights_bytes"]),
            _mib(t["kv_cache_bytes"]),
            _mib(t["buffers_bytes"]),
            f"{_mib(t['total_bytes'])} / {_mib(t['memory_bytes'])}",
            "yes" if t["fits"] else "NO",
            str(t["gpu_layers"]) if t["kind"] != "cpu" else "-",
            _tps(t["decode_tokens_per_s"]),
            _tps(t["prefill_tokens_per_s"]),
            f"{t['usd_per_mtok']:.3f}" if t["usd_per_hour"] else "-",
            f"{t['tokens_per_s_per_usd_hour']:,.0f}" if t["usd_per_hour"] else "-",
            f"{t['tokens_per_s_per_watt']:.2f}" if t["tokens_per_s_per_watt"] else "-",
            _advice(t["would_fit"]),
        )
    console.print(table)
    console.print(
        "* memory as llama.cpp itself reports it (a no-allocation trial load); the rest is the "
        "closed form. Speeds: one request at a time. Prices are reference only (see "
        "hardware.toml: source and date of each).",
        markup=False,
    )
    if document.get("llama_cpp_error"):
        console.print(
            f"llama.cpp's figures unavailable: {document['llama_cpp_error']}", markup=False
        )
    if "measured" in document:
        r = document["measured"]
        console.print(
            f"measured on {r['hardware']}: decode {_tps(r['measured_decode_tokens_per_s'])} tok/s "
            f"(predicted {_tps(r['predicted_decode_tokens_per_s'])}, "
            f"ratio {r['decode_ratio']:.2f}), "
            f"prefill {_tps(r['measured_prefill_tokens_per_s'])} tok/s (predicted "
            f"{_tps(r['predicted_prefill_tokens_per_s'])}, ratio {r['prefill_ratio']:.2f}), "
            f"model RSS {_mib(r['measured_model_rss_bytes'])} MiB (predicted "
            f"{_mib(r['predicted_total_bytes'])}, ratio {r['memory_ratio']:.2f})",
            markup=False,
        )
