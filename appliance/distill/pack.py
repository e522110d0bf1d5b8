"""``appliance distill pack``: the trained adapter as an unsigned ``kind = "adapter"`` bundle.

The bundle names its base three ways: ``model.base`` (the model bundle's name: what the box
applies it to), ``model.base_digest`` (the exact model bundle it was trained on) and
``model.base_sha256`` (the GGUF's hash). It carries the held-out evaluation in
``model.distill`` (publishers may add keys to ``model``), so whoever installs it can see
what it was measured to do before trusting it. An adapter that did worse than its base on
the held-out pairs is refused unless ``force``: packing it would ship a regression with a
valid signature. Sign the result with ``appliance bundle sign`` like any bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundles.manifest import Manifest, format_timestamp
from appliance.bundles.pack import BUNDLE_TOML
from appliance.bundles.pack import pack as pack_bundle
from appliance.distill.base import BaseModel
from appliance.distill.rundir import RunDir, read_json
from appliance.errors import DistillError
from appliance.fsutil import sha256_file

ADAPTER_FILE = "adapter.gguf"
SUMMARY = ("exact_match", "token_f1", "escalation_rate", "upstream_cost_per_1000_usd")


@dataclass(frozen=True)
class Packed:
    manifest: Manifest
    path: Path
    forced: list[str]  # where the adapter was worse, packed anyway with force


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # a JSON string is a TOML basic string (no surrogates here)
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(fields: dict[str, Any], table: str = "") -> str:
    """`fields` as TOML: scalars first, then each nested dict as a [table]; None left out."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in fields.items() if not isinstance(v, dict | None)]
    text = (f"\n[{table}]\n" if table else "") + "\n".join(lines) + "\n"
    for key, value in fields.items():
        if isinstance(value, dict):
            text += to_toml(value, f"{table}.{key}" if table else key)
    return text


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    chosen = {key: figures.get(key) for key in SUMMARY}
    chosen["mean_confidence"] = figures["confidence"]["mean"]
    return chosen


def bundle_fields(
    base: BaseModel,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    name: str,
    version: str,
    sequence: int,
    created: str,
) -> dict[str, Any]:
    """What bundle.toml says: the manifest's fields but ``schema`` and ``files``."""
    settings, data = training["settings"], training["data"]
    return {
        "name": name,
        "version": version,
        "sequence": sequence,
        "kind": "adapter",
        "requires": ">=0.1",
        "created": created,
        "description": (
            f"LoRA adapter for {base.name} {base.version}, distilled from "
            f"{data['train']} golden pairs ({evaluation['heldout_pairs']} held out)"
        )[:1024],
        "model": {
            "format": "gguf",
            "role": base.role,
            "context_length": base.context_length,
            "file": ADAPTER_FILE,
            "base": base.name,
            "base_version": base.version,
            "base_digest": base.bundle_digest,
            "base_sha256": base.sha256,
            "scale": 1.0,
            "distill": {
                "rank": settings["rank"],
                "alpha": settings["alpha"],
                "targets": ",".join(settings["targets"]),
                "steps": settings["steps"],
                "seed": settings["seed"],
                "train_pairs": data["train"],
                "heldout_pairs": evaluation["heldout_pairs"],
                "eval": {
                    "policy": evaluation["policy"]["name"],
                    "confidence_measure": evaluation["policy"]["confidence_measure"],
                    "confidence_threshold": evaluation["policy"]["confidence_threshold"],
                    "base": _summary(evaluation["base"]),
                    "adapter": _summary(evaluation["adapter"]),
                },
            },
        },
    }


def pack(
    run: RunDir,
    out: Path,
    name: str | None = None,
    version: str | None = None,
    sequence: int | None = None,
    force: bool = False,
) -> Packed:
    base = BaseModel.from_json(read_json(run.need(run.base, "train")))
    if base.name is None or base.bundle_digest is None:
        raise DistillError(
            "this adapter was trained on a bare GGUF, so nothing says which model bundle it "
            "fits: train it with --base set to the model's bundle file or installed name"
        )
    training = read_json(run.need(run.training, "train"))
    evaluation = read_json(run.need(run.evaluation, "eval"))
    adapter = run.need(run.adapter, "train")
    if evaluation.get("adapter_sha256") != sha256_file(adapter):
        raise DistillError(f"{adapter} changed since it was evaluated: run distill eval again")
    if evaluation["worse"] and not force:
        raise DistillError(
            f"the adapter is worse than its base on the held-out pairs "
            f"({'; '.join(evaluation['worse'])}); --force packs it anyway"
        )
    now = datetime.now(UTC)
    fields = bundle_fields(
        base,
        training,
        evaluation,
        name=name or f"{base.name}-tuned",
        version=version or now.strftime("%Y%m%d.%H%M%S"),
        sequence=sequence or int(time.time()),
        created=format_timestamp(now),
    )
    source = run.bundle_source
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    shutil.copyfile(adapter, source / ADAPTER_FILE)
    (source / BUNDLE_TOML).write_text(to_toml(fields), "utf-8")
    manifest = pack_bundle(source, out, now)
    return Packed(manifest, out, list(evaluation["worse"]) if force else [])
