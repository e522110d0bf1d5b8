"""`appliance demo --once`: the embedded default end to end, as a newcomer runs it: a sensible
chat answer from the instruction-tuned model, a completion from the base model, what next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from appliance.api.server import free_port

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


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
    out = result.stdout
    assert "smollm2-135m-instruct 1.0.0: installed" in out
    assert "gemma3-270m 1.0.0: installed" in out
    # the chat answer comes from the instruction-tuned model, and makes sense
    chat = out[out.index("chat (") : out.index("completion (")]
    assert chat.startswith("chat (smollm2-135m-instruct 1.0.0, ") and "tokens/s)" in chat
    assert "What is the capital of France?" in chat and "Paris" in chat
    # the completion of "def fibonacci(n):" from the base model
    completion = out[out.index("completion (") : out.index("\nnext")]
    assert completion.startswith("completion (gemma3-270m 1.0.0, ")
    assert "def fibonacci(n):" in completion and "return" in completion
    # then where to go next: the status screen, a one-off answer, the README's sections
    after = out[out.index("\nnext") :]
    assert f"export APPLIANCE_HOME={tmp_path / 'home'}" in after
    assert "appliance status" in after
    assert 'appliance run smollm2-135m-instruct "' in after
    for section in ("Serving devices", "Operator's guide: bundles", "Is the box healthy?"):
        assert section in after and section in README
    installed = tmp_path / "home/bundles/gemma3-270m/1.0.0/payload/gemma-3-270m-q4_k_m.gguf"
    assert installed.stat().st_size == 253113024
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_home_that_already_trusts_keys(tmp_path: Path):
    """Run as root with no APPLIANCE_HOME, the demo would land in /var/lib/appliance: it must
    never trust its development key beside a real box's keys and bundles."""
    home = tmp_path / "box"
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    keys = subprocess.run(
        [sys.executable, "-m", "appliance", "keys", "generate", "ops", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert keys.returncode == 0, keys.stderr
    added = subprocess.run(
        [sys.executable, "-m", "appliance", "trust", "add", str(tmp_path / "ops.pub")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--once", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "already holds trusted keys or bundles" in result.stderr
    assert "scratch/demo-home" in result.stderr
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # nothing changed
