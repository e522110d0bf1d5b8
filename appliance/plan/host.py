"""This box as a target: its GPUs (the one nvidia-smi probe), host RAM, memory bandwidth.

A GPU whose name matches a catalog entry takes that entry's speed figures with the memory
nvidia-smi reports free; an unknown GPU gets the GDDR defaults. The host's bandwidth is
measured (a few hundred milliseconds of reading a 256 MiB array on every core), its peak
arithmetic is cores x clock x FLOPs per cycle (AVX-512, AVX2 or neither). "Fits" on this box
means in the memory free now.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

from appliance.plan.catalog import Hardware
from appliance.runtime.gpu import gpus

BANDWIDTH_PROBE_BYTES = 256 * 2**20
CPU_DECODE_EFFICIENCY = 0.6  # of the measured bandwidth (before --measure calibrates it)
CPU_PREFILL_EFFICIENCY = 0.3  # of the peak arithmetic
CPU_US_PER_LAYER = 5.0


@dataclass(frozen=True)
class Host:
    cpu: Hardware  # the CPU and host RAM (memory_gib: available now)
    gpus: list[Hardware]  # each GPU (memory_gib: free now)


def _flops_per_cycle() -> int:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    if " avx512f" in flags:
        return 64
    return 32 if " avx2" in flags else 16


def measure_bandwidth(threads: int | None = None) -> float:
    """Bytes per second read by `threads` threads summing a 256 MiB array (numpy releases
    the GIL while it sums)."""
    import numpy as np

    threads = threads or psutil.cpu_count(logical=False) or 1
    data = np.ones(BANDWIDTH_PROBE_BYTES // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


def host_cpu(bandwidth: float | None = None) -> Hardware:
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    freq = psutil.cpu_freq()
    ghz = (freq.max or freq.current) / 1000 if freq and (freq.max or freq.current) else 2.5
    measured = bandwidth if bandwidth is not None else measure_bandwidth(cores)
    return Hardware(
        name=f"this box: CPU ({cores} cores)",
        kind="cpu",
        memory_gib=psutil.virtual_memory().available / 2**30,
        memory_type="RAM",
        bandwidth_gbs=measured / 1e9,
        fp16_tflops=cores * ghz * _flops_per_cycle() / 1000,
        tdp_watts=0,
        decode_efficiency=CPU_DECODE_EFFICIENCY,
        us_per_layer=CPU_US_PER_LAYER,
        prefill_efficiency=CPU_PREFILL_EFFICIENCY,
        measured=True,
    )


def _match(name: str, catalog: list[Hardware]) -> Hardware | None:
    """The catalog entry whose model words (H100; RTX 4090) appear as words in `name`."""
    words = name.upper().replace("-", " ").split()
    for entry in catalog:
        if entry.kind == "cpu":
            continue
        parts = entry.name.upper().split("-")
        key = parts[:2] if parts[0] == "RTX" else parts[:1]
        if any(words[i : i + len(key)] == key for i in range(len(words))):
            return entry
    return None


def host_gpus(catalog: list[Hardware]) -> list[Hardware]:
    found = []
    for gpu in gpus():
        total, used = gpu.get("memory_total_mib"), gpu.get("memory_used_mib") or 0.0
        if not total:
            continue
        known = _match(str(gpu.get("name", "")), catalog)
        free_gib = (total - used) / 1024
        label = f"this box: GPU {gpu.get('index')} {gpu.get('name')}"
        if known is not None:
            found.append(known.model_copy(update={"name": label, "memory_gib": free_gib}))
        else:
            found.append(
                Hardware(
                    name=label,
                    kind="gpu",
                    memory_gib=free_gib,
                    bandwidth_gbs=500,
                    fp16_tflops=50,
                    tdp_watts=float(gpu.get("power_watts") or 0),
                    decode_efficiency=0.75,
                    us_per_layer=10,
                )
            )
    return found


def this_box(catalog: list[Hardware], bandwidth: float | None = None) -> Host:
    return Host(host_cpu(bandwidth), host_gpus(catalog))
