"""LoRA adapters: checked against their base model before llama.cpp is given them.

llama.cpp 0.3.36 does not check every shape of a LoRA pair against the base model's tensor
and crashes the process on some mismatches (measured: an ``lora_a`` of the wrong width is a
segmentation fault). An adapter comes in a signed bundle, but a publisher's mistake must
not take the daemon down, so its header is read first (memory-mapped, no weights loaded)
and every pair is checked the way llama.cpp uses it: for a base tensor ``W`` with
``ne = [n_in, n_out]``, ``lora_a`` is ``[n_in, r]`` and ``lora_b`` is ``[r, n_out]``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
# GGUF value types: sizes of the fixed-size ones (8 = string, 9 = array are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufHeader:
    strings: dict[str, str]  # the string-valued keys (general.type, general.architecture, ...)
    tensors: dict[str, list[int]]  # tensor name -> ne (dimensions, innermost first)


def read_header(path: Path) -> GgufHeader:
    """A GGUF file's string keys and tensor shapes, reading the header only.

    Our own small reader: the `gguf` library's reader decodes every value, and the base
    model's 262k-token vocabulary then takes 16 s on this box; skipping it takes 0.2 s.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        size = len(m)
        if n_tensors > size or n_kv > size:  # every entry takes bytes: a hostile count
            raise ValueError("the header counts more entries than the file holds")
        pos = 24

        def need(length: int) -> None:
            if length < 0 or pos + length > size:
                raise ValueError("the header runs past the end of the file")

        def string() -> str:
            nonlocal pos
            (length,) = struct.unpack_from("<Q", m, pos)
            need(8 + length)
            value = bytes(m[pos + 8 : pos + 8 + length]).decode("utf-8", errors="replace")
            pos += 8 + length
            return value

        def skip(kind: int) -> None:
            nonlocal pos
            if kind in _FIXED:
                pos += _FIXED[kind]
            elif kind == _STRING:
                (length,) = struct.unpack_from("<Q", m, pos)
                need(8 + length)
                pos += 8 + length
            elif kind == _ARRAY:
                item, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if item in _FIXED:
                    need(_FIXED[item] * count)
                    pos += _FIXED[item] * count
                else:
                    need(8 * count)  # each variable-size item takes 8 bytes at least
                    for _ in range(count):
                        skip(item)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        strings: dict[str, str] = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", m, pos)
            pos += 4
            if kind == _STRING:
                strings[key] = string()
            else:
                skip(kind)
        tensors: dict[str, list[int]] = {}
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", m, pos)
            if n_dims > 4:  # ggml tensors have at most 4 dimensions
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = list(struct.unpack_from(f"<{n_dims}Q", m, pos + 4))
            pos += 4 + 8 * n_dims + 4 + 8  # dims, then the type and the data offset
            tensors[name] = dims
        return GgufHeader(strings, tensors)


def check_adapter(base: Path, adapter: Path, label: str | None = None) -> None:
    """Raise ModelLoadError unless `adapter` is a LoRA GGUF whose pairs fit `base`.

    `label` is the adapter's file name for messages, where `adapter` is a /proc/self/fd path.
    """
    label = label or adapter.name
    try:
        base_header, lora = read_header(base), read_header(adapter)
    except (OSError, ValueError, OverflowError, struct.error) as e:
        raise ModelLoadError(f"adapter {label} or its base is not a readable GGUF: {e}") from e
    if lora.strings.get("general.type") != "adapter":
        raise ModelLoadError(f"{label} is not a GGUF adapter (general.type)")
    if lora.strings.get("adapter.type") != "lora":
        raise ModelLoadError(f"{label} is not a LoRA adapter (adapter.type)")
    arch = lora.strings.get("general.architecture")
    base_arch = base_header.strings.get("general.architecture")
    if arch != base_arch:
        raise ModelLoadError(f"{label} is for {arch}, the base model is {base_arch}")
    pairs: dict[str, dict[str, list[int]]] = {}
    for name, dims in lora.tensors.items():
        stem, _, part = name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise ModelLoadError(f"{label}: unexpected tensor {name}")
        pairs.setdefault(stem, {})[part] = dims
    if not pairs:
        raise ModelLoadError(f"{label} holds no LoRA tensors")
    for stem, pair in pairs.items():
        if set(pair) != {"lora_a", "lora_b"}:
            raise ModelLoadError(f"{label}: {stem} lacks its lora_a or lora_b")
        target = base_header.tensors.get(stem)
        a, b = pair["lora_a"], pair["lora_b"]
        if target is None:
            raise ModelLoadError(f"{label}: the base model has no tensor {stem}")
        if len(a) != 2 or len(b) != 2 or a[0] != target[0] or b[1] != target[1] or a[1] != b[0]:
            raise ModelLoadError(
                f"{label}: {stem} pair shapes {a} x {b} do not fit the base {target}"
            )
