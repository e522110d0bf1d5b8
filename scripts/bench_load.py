#!/usr/bin/env python3
"""Benchmark: what verifying a model's files at every load costs (the Gemma demo GGUF).

Every load of a model (start, swap, reload after an idle unload, restart) hashes the files
the backend reads and checks them against the bundle's signed manifest, then gives llama.cpp
the hashed descriptor and has it copy the weights instead of mapping them (see
appliance/runtime/signed_files.py). On the demo GGUF (253 MB), rounds interleaved, page cache
warm (one untimed round first), it times:

  sha256sum            the coreutils tool on the file: the reference speed of SHA-256 here
  hash only            VerifiedFiles.open: open, fstat, SHA-256 through the descriptor
  load, before         llama_cpp.Llama on the path, mmap (what the appliance did before)
  load, copy           the same without mmap, unverified: the cost of copying the weights
  load, verified       open_llama: hash, /proc/self/fd, no mmap, the check after the load

    .venv/bin/python scripts/bench_load.py [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from _bench import scratch

from appliance.bundles.recipes import DEMO_RECIPE, build_source
from appliance.runtime.backend import ModelSpec, SignedFile
from appliance.runtime.llama_backend import default_threads, open_llama
from appliance.runtime.signed_files import VerifiedFiles

N_CTX = 2048  # tokens: the demo bundle's context_length


def _spec(gguf: Path, signed: bool) -> ModelSpec:
    """The demo model as the manager would describe it (files: what install recorded)."""
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    files = {
        gguf: SignedFile("gemma3-270m 1.0.0", f"payload/{gguf.name}", gguf.stat().st_size, digest)
    }
    spec = ModelSpec("gemma3-270m", "1.0.0", "-", gguf.parent, "gguf", "chat", N_CTX, gguf)
    return dataclasses.replace(spec, files=files) if signed else spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: in /var/tmp)")
    args = parser.parse_args()
    import llama_cpp

    threads = default_threads()
    with scratch(args.workdir, "bench-load-") as folder:
        source = build_source(DEMO_RECIPE, folder / "gemma-src")
        gguf = source / tomllib.loads((source / "bundle.toml").read_text())["model"]["file"]
        size = gguf.stat().st_size
        signed, loose = _spec(gguf, True), _spec(gguf, False)
        print(
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"llama-cpp-python {llama_cpp.__version__}; {gguf.name}, {size / 1e6:.0f} MB, "
            f"n_ctx {N_CTX}, {threads} threads, {args.rounds} rounds"
        )

        def hash_only() -> None:
            with VerifiedFiles(signed) as files:
                files.open(gguf)

        def mapped() -> None:
            llama_cpp.Llama(
                model_path=str(gguf), n_ctx=N_CTX, n_threads=threads, verbose=False
            ).close()

        contenders: dict[str, Callable[[], object]] = {
            "sha256sum": lambda: subprocess.run(
                ["sha256sum", str(gguf)], check=True, capture_output=True
            ),
            "hash only (VerifiedFiles.open)": hash_only,
            "load, before (path, mmap)": mapped,
            "load, copy (no mmap, unverified)": lambda: open_llama(
                loose, False, n_ctx=N_CTX, n_threads=threads
            ).close(),
            "load, verified (open_llama)": lambda: open_llama(
                signed, False, n_ctx=N_CTX, n_threads=threads
            ).close(),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds + 1):
            for name, run in contenders.items():
                started = time.perf_counter()
                run()
                if r:  # the first round only warms the page cache
                    times[name].append(time.perf_counter() - started)

    before = statistics.median(times["load, before (path, mmap)"])
    print(f"\n{'':34}{'median s':>9}{'min s':>8}{'MB/s':>7}{'vs before':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:34}{median:9.3f}{min(values):8.3f}{size / 1e6 / median:7.0f}"
            f"{median / before:9.2f}x"
        )
    added = statistics.median(times["load, verified (open_llama)"]) - before
    print(f"\nverification adds {added:+.3f} s to a load of {gguf.name} (median vs before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
