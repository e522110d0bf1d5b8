"""peft's LoRA as a GGUF adapter that llama.cpp loads on top of the box's GGUF.

This follows llama.cpp's ``convert_lora_to_gguf.py`` (it ships in the llama-cpp-python
sdist, not in site-packages, and wants the base's Hugging Face config folder), written with
the ``gguf`` package's writer:

- ``general.type = adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``: llama.cpp
  scales the update by alpha / rank, as peft does, so ``lora_scale = 1`` reproduces training;
- each pair is named after the base tensor it updates plus ``.lora_a`` / ``.lora_b``
  (``blk.3.attn_q.weight.lora_a``), names from gguf's own tensor map of the architecture;
- Llama's query and key rows are permuted: llama.cpp's converter reorders them for its
  rotary embedding (``LlamaModel.permute``) and transformers undoes that when it loads a
  GGUF, so the model trained on is in Hugging Face order and ``lora_b``, whose rows are the
  output rows, must be put back in GGUF order (``lora_a`` is untouched).

The result is checked with ``runtime.adapters.check_adapter``, the daemon's own check, so a
file that would not load on the box never leaves the workstation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.distill.base import BaseModel
from appliance.errors import DistillError, ModelLoadError
from appliance.runtime.adapters import check_adapter

_PREFIX = "base_model.model."
_PARTS = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}
# Architectures whose query/key rows llama.cpp's converter permutes, and which heads count.
_PERMUTED = {"llama": {"q_proj": "num_attention_heads", "k_proj": "num_key_value_heads"}}
SUPPORTED = ("llama", "gemma3")  # what this converter knows to be right (the demo models)


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of a weight's output rows, for `heads` heads."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _pairs(state: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """{hf module name: {"lora_a": A, "lora_b": B}} from peft's state dict."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        part = next((p for suffix, p in _PARTS.items() if key.endswith(suffix)), None)
        if part is None or not key.startswith(_PREFIX):
            raise DistillError(f"unexpected tensor {key} in the adapter (only LoRA pairs convert)")
        module = key[len(_PREFIX) : -len(next(s for s in _PARTS if key.endswith(s)))]
        pairs.setdefault(module, {})[part] = tensor.float().numpy()
    return pairs


def convert(peft_dir: Path, base: BaseModel, config: dict[str, Any], out: Path) -> int:
    """Write the peft adapter in `peft_dir` as a GGUF LoRA to `out`; returns its tensor count.

    `config` is the base's transformers config (``trainer.base_config``): layer and head
    counts for the names and the permutation.
    """
    from safetensors.torch import load_file

    settings = json.loads((peft_dir / "adapter_config.json").read_text("utf-8"))
    if settings.get("use_rslora") or settings.get("use_dora"):
        raise DistillError("rsLoRA and DoRA adapters have no GGUF form here; train plain LoRA")
    if base.architecture not in SUPPORTED:
        raise DistillError(
            f"converting adapters for {base.architecture} is not supported "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[base.architecture]
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    permuted = _PERMUTED.get(base.architecture, {})
    pairs = _pairs(load_file(str(peft_dir / "adapter_model.safetensors")))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), base.architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
        for module, pair in sorted(pairs.items()):
            target = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if target is None or set(pair) != {"lora_a", "lora_b"}:
                raise DistillError(f"the adapter's {module} has no GGUF counterpart")
            lora_b = pair["lora_b"]
            heads = next((h for proj, h in permuted.items() if module.endswith(proj)), None)
            if heads is not None:
                lora_b = permute(lora_b, int(config[heads]))
            # numpy (rank, n_in) is GGUF ne [n_in, rank]: what llama.cpp expects of lora_a
            writer.add_tensor(f"{target}.lora_a", np.ascontiguousarray(pair["lora_a"]))
            writer.add_tensor(f"{target}.lora_b", np.ascontiguousarray(lora_b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        check_adapter(base.gguf, tmp, out.name)
        os.replace(tmp, out)
    except ModelLoadError as e:
        raise DistillError(f"the converted adapter does not fit its base: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return 2 * len(pairs)
