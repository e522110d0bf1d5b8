"""Is there an NVIDIA GPU this process can use? Asked once, without importing CUDA."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

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
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return True  # the device node is there; the driver tools are simply not installed
    try:
        listed = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout
