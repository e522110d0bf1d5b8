"""The machine under the appliance: CPU, memory, disk, temperatures, NVIDIA GPUs.

Everything here is best effort: a sensor the platform does not report is simply absent,
and a missing or hung ``nvidia-smi`` means no GPU section, never an error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psutil

# NVIDIA GPUs are read by the runtime's one probe; re-exported for the status document
from appliance.runtime.gpu import gpus as gpus
from appliance.runtime.gpu import parse_gpu_line as parse_gpu_line


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


