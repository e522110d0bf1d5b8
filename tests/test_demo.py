"""`appliance demo --once`: the embedded default end to end, as a newcomer runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from appliance.api.server import free_port


def test_demo_builds_installs_serves_and_answers(tmp_path: Path):
    env = {**os.environ, "APPLIANCE_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--once", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert "gemma3-270m 1.0.0: installed" in result.stdout
    assert "chat (" in result.stdout and "tokens/s" in result.stdout
    # the completion of "def fibonacci(n):" from the real model
    assert "def fibonacci(n):" in result.stdout and "return" in result.stdout
    installed = tmp_path / "home/bundles/gemma3-270m/1.0.0/payload/gemma-3-270m-q4_k_m.gguf"
    assert installed.stat().st_size == 253113024
    assert "Traceback" not in result.stderr
