"""The one NVIDIA GPU probe: ``nvidia-smi``, never CUDA itself (nothing to import, no crash).

``gpus`` lists the GPUs with their memory, load, temperature and draw (the status screen and
the TCO ledger's power); ``gpu_present`` asks once whether this process can offload to one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 5.0  # seconds


@functools.cache
def gpu_present() -> bool:
    """True when an NVIDIA device node exists and nvidia-smi lists at least one GPU.

    APPLIANCE_FORCE_CPU=1 answers False (to pin a box to the CPU, or to compare).
    """
    if os.environ.get("APPLIANCE_FORCE_CPU") == "1":
        return False
    if not os.path.exists("/dev/nvidia0"):
        return False
    if shutil.which("nvidia-smi") is None:
        return True  # the device node is there; the driver tools are simply not installed
    return bool(gpus())


_GPU_FIELDS = (
    "index",
    "name",
    "memory.used",
    "memory.total",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
)


def gpus(smi: str | None = None) -> list[dict[str, Any]]:
    """One entry per NVIDIA GPU from ``nvidia-smi``; [] without one (or without the tool)."""
    smi = smi or shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, f"--query-gpu={','.join(_GPU_FIELDS)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [parse_gpu_line(line) for line in done.stdout.splitlines() if line.strip()]


def parse_gpu_line(line: str) -> dict[str, Any]:
    """One CSV line of the query above; ``[N/A]`` and unparsable numbers become None."""
    cells = [c.strip() for c in line.split(",")]
    cells += [""] * (len(_GPU_FIELDS) - len(cells))

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    index = number(cells[0])
    return {
        "index": int(index) if index is not None else None,
        "name": cells[1],
        "memory_used_mib": number(cells[2]),
        "memory_total_mib": number(cells[3]),
        "utilization_percent": number(cells[4]),
        "temperature_celsius": number(cells[5]),
        "power_watts": number(cells[6]),
    }
