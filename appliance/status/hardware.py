"""The machine under the appliance: CPU, memory, disk, temperatures, NVIDIA GPUs.

Everything here is best effort: a sensor the platform does not report is simply absent,
and a missing or hung ``nvidia-smi`` means no GPU section, never an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

NVIDIA_SMI_TIMEOUT_S = 3.0  # seconds
_GPU_FIELDS = (
    "index",
    "name",
    "memory.used",
    "memory.total",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
)


def machine(home: Path) -> dict[str, Any]:
    """CPU load, memory, free disk where APPLIANCE_HOME lives, and temperatures."""
    memory = psutil.virtual_memory()
    try:
        disk = shutil.disk_usage(home if home.exists() else home.parent)
        disk_doc: dict[str, Any] = {
            "path": str(home),
            "total_bytes": disk.total,
            "free_bytes": disk.free,
            "free_percent": round(100.0 * disk.free / disk.total, 1) if disk.total else None,
        }
    except OSError:
        disk_doc = {"path": str(home), "total_bytes": None, "free_bytes": None}
    return {
        "cpu_count": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "memory_used_percent": memory.percent,
        "disk": disk_doc,
        "temperatures": temperatures(),
    }


def process_rss(pid: int) -> int | None:
    """Resident memory of a process in bytes (the daemon's: its loaded models live there)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def temperatures() -> list[dict[str, Any]]:
    """Every temperature sensor psutil can read (Linux, FreeBSD); none elsewhere."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return []
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return []
    found = []
    for chip, entries in sorted(sensors.items()):
        for entry in entries:
            if entry.current is None:
                continue
            found.append(
                {
                    "sensor": chip,
                    "label": entry.label or chip,
                    "celsius": round(entry.current, 1),
                    "high_celsius": entry.high or None,
                    "critical_celsius": entry.critical or None,
                }
            )
    return found


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
