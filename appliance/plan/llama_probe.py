"""Ask llama.cpp itself: a no-allocation trial load, and the sizes it says it would allocate.

llama.cpp's own memory-fit pass (``--fit``) loads a model with ``no_alloc`` (metadata only,
no weights read, no buffers allocated) and builds the context, then reads its memory
breakdown. The bundled llama-cpp-python exposes ``no_alloc`` but not the breakdown (a C++
function), so this does the same trial load and reads the figures from llama.cpp's log:
every KV cache it creates (cells, layers, sequences, bytes), the output and compute buffers
per device, and which device and attention kind (sliding-window or not) each layer got. The
weights' total comes from ``llama_model_size``.

It runs in a child process (``python -m appliance.plan.llama_probe``): the log callback is
process-wide (a daemon's loads must not lose theirs), and llama.cpp aborts the whole process
on some malformed files instead of returning an error.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ModelError

PROBE_TIMEOUT_S = 120.0  # seconds; the trial reads the header and vocabulary only
MIB = 1024 * 1024

_KV = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\),"
    r" K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)
_OUTPUT = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")
_LAYER = re.compile(r"layer +(\d+) assigned to device (\S+), is_swa = (\d)")


@dataclass(frozen=True)
class ContextShape:
    """One llama.cpp context as a backend makes it (see memory.contexts_for)."""

    n_ctx: int  # tokens in all (llama.cpp pads each sequence's share to 256)
    n_seq_max: int = 1
    n_batch: int = 512
    n_ubatch: int = 512
    kv_unified: bool = False
    swa_full: bool = True
    flash_attn: bool | None = None  # None: llama.cpp decides (auto); llama_cpp.Llama: False
    type_k: str = "f16"
    type_v: str = "f16"


@dataclass
class KvCache:
    bytes: int
    cells: int
    layers: int
    seqs: int
    type_k: str
    type_v: str


@dataclass
class ProbeResult:
    """What llama.cpp reported: sizes in bytes (from MiB with two decimals: +-5 KiB)."""

    weights_bytes: int
    n_params: int
    kv_caches: list[KvCache] = field(default_factory=list)
    output_bytes: dict[str, int] = field(default_factory=dict)  # by buffer (CPU, CUDA0, ...)
    compute_bytes: dict[str, int] = field(default_factory=dict)
    layer_devices: dict[int, str] = field(default_factory=dict)
    swa_layers: list[int] = field(default_factory=list)

    @property
    def kv_bytes(self) -> int:
        return sum(c.bytes for c in self.kv_caches)

    @property
    def buffers_bytes(self) -> int:
        return sum(self.output_bytes.values()) + sum(self.compute_bytes.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kv_bytes": self.kv_bytes, "buffers_bytes": self.buffers_bytes}


def probe(path: Path, contexts: list[ContextShape], n_gpu_layers: int = 0) -> ProbeResult:
    """llama.cpp's own figures for loading `path` and making `contexts` (in a child process).

    ModelError if llama.cpp refuses the file or the child fails.
    """
    request = {
        "path": str(path),
        "n_gpu_layers": n_gpu_layers,
        "contexts": [asdict(c) for c in contexts],
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "appliance.plan.llama_probe"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired as e:
        raise ModelError(
            f"llama.cpp's trial load of {path.name} took over {e.timeout:.0f} s"
        ) from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelError(f"llama.cpp's trial load of {path.name} failed: {last}")
    return parse_result(json.loads(done.stdout))


def parse_result(document: dict[str, Any]) -> ProbeResult:
    return ProbeResult(
        weights_bytes=int(document["weights_bytes"]),
        n_params=int(document["n_params"]),
        kv_caches=[KvCache(**c) for c in document["kv_caches"]],
        output_bytes={k: int(v) for k, v in document["output_bytes"].items()},
        compute_bytes={k: int(v) for k, v in document["compute_bytes"].items()},
        layer_devices={int(k): str(v) for k, v in document["layer_devices"].items()},
        swa_layers=[int(i) for i in document["swa_layers"]],
    )


def parse_log(lines: list[str], weights_bytes: int, n_params: int) -> ProbeResult:
    """The figures in llama.cpp's log lines (see the patterns above)."""
    result = ProbeResult(weights_bytes=weights_bytes, n_params=n_params)
    for line in lines:
        if m := _KV.search(line):
            result.kv_caches.append(
                KvCache(
                    bytes=round(float(m[1]) * MIB),
                    cells=int(m[2]),
                    layers=int(m[3]),
                    seqs=int(m[5]),
                    type_k=m[6],
                    type_v=m[8],
                )
            )
        elif m := _OUTPUT.search(line):
            result.output_bytes[m[1]] = result.output_bytes.get(m[1], 0) + round(float(m[2]) * MIB)
        elif m := _COMPUTE.search(line):
            result.compute_bytes[m[1]] = result.compute_bytes.get(m[1], 0) + round(
                float(m[2]) * MIB
            )
        elif m := _LAYER.search(line):
            result.layer_devices[int(m[1])] = m[2]
            if m[3] == "1":
                result.swa_layers.append(int(m[1]))
    return result


_GGML_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "bf16": 30,
}


def _run(request: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - in the child
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = int(request["n_gpu_layers"])
    params.no_alloc = True  # metadata only: nothing is read or allocated
    params.load_mode = 0  # LLAMA_LOAD_MODE_NONE: what llama.cpp's own fit pass uses
    model = llama_cpp.llama_model_load_from_file(request["path"].encode(), params)
    if not model:
        tail = "".join(lines[-3:]).strip().splitlines()
        raise SystemExit(f"llama.cpp could not read the model: {tail[-1] if tail else ''}")
    contexts = []
    try:
        for shape in request["contexts"]:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = shape["n_ctx"]
            cp.n_seq_max = shape["n_seq_max"]
            cp.n_batch = shape["n_batch"]
            cp.n_ubatch = shape["n_ubatch"]
            cp.kv_unified = shape["kv_unified"]
            cp.swa_full = shape["swa_full"]
            if shape["flash_attn"] is not None:
                cp.flash_attn_type = int(shape["flash_attn"])  # DISABLED 0, ENABLED 1
            cp.type_k = _GGML_TYPES[shape["type_k"]]
            cp.type_v = _GGML_TYPES[shape["type_v"]]
            ctx = llama_cpp.llama_init_from_model(model, cp)
            if not ctx:
                raise SystemExit("llama.cpp could not make the context")
            contexts.append(ctx)
        result = parse_log(
            "".join(lines).splitlines(),
            int(llama_cpp.llama_model_size(model)),
            int(llama_cpp.llama_model_n_params(model)),
        )
    finally:
        for ctx in contexts:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return result.to_json()


if __name__ == "__main__":  # pragma: no cover - the child's entry point
    print(json.dumps(_run(json.loads(sys.stdin.read()))))
