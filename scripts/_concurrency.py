"""Many devices at once: aggregate tokens/s and time to first token at 1, 2, 4, 8 clients.

Used by ``bench_serving.py --concurrency``. Each contender is a server in a child process
(so that the client threads of this process never share an interpreter with it):

  appliance          `python -m appliance serve` on the scratch home (continuous batching,
                     [runtime] slots = the largest client count)
  llama_cpp.server   `python -m llama_cpp.server` on the same GGUF with --interrupt_requests
                     False (by default a new request cuts the stream in flight: at 2+ clients
                     most requests then end in errors), its defaults otherwise
  llama-server       the native server, when --llama-server names a binary built from the
                     llama.cpp that llama-cpp-python vendors (`-np` = the largest count)

Every client streams /v1/completions (greedy, the same prompts round-robin, max_tokens
each) one request after another for --rounds requests; generated tokens are the stream's
text chunks. Aggregate tokens/s = all clients' tokens / the wall time of the level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

START_TIMEOUT_S = 180.0


@dataclass
class Level:
    clients: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft_ms(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        ordered = sorted(self.ttft)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stream(client: httpx.Client, model: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(text chunks, seconds to the first one) of one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    chunks = 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
    return chunks, first if first is not None else time.perf_counter() - started


def run_level(
    url: str, model: str, prompts: tuple[str, ...], clients: int, rounds: int, max_tokens: int
) -> Level:
    level = Level(clients)
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=600, trust_env=False) as http:
            for r in range(rounds):
                prompt = prompts[(n + r * clients) % len(prompts)]
                try:
                    tokens, ttft = _stream(http, model, prompt, max_tokens)
                except httpx.HTTPError as e:
                    with lock:
                        level.errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    level.tokens += tokens
                    level.ttft.append(ttft)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.perf_counter() - started
    return level


def serve(
    cmd: list[str], env: dict[str, str], url: str, log: Path, probe: str
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text(errors='replace')[-500:]}")
        try:
            if httpx.get(url + probe, timeout=2, trust_env=False).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{cmd[0]} did not start within {START_TIMEOUT_S:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def contenders(
    home: Path, gguf: Path, threads: int, n_ctx: int, slots: int, llama_server: Path | None
) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(label, command, environment, readiness path) of each server to measure."""
    from appliance.api.server import free_port

    env = dict(os.environ)
    found = []
    port = free_port()
    (home / "config.toml").write_text(
        f'[server]\nport = {port}\nauth = "none"\n[runtime]\nslots = {slots}\n'
    )
    found.append(
        (
            "appliance",
            [sys.executable, "-m", "appliance", "serve"],
            {**env, "APPLIANCE_HOME": str(home), "APPLIANCE_LOG_LEVEL": "warning"},
            f"http://127.0.0.1:{port}|/readyz",
        )
    )
    port = free_port()
    found.append(
        (
            "llama_cpp.server",
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx",
             str(n_ctx), "--n_threads", str(threads), "--host", "127.0.0.1", "--port", str(port),
             "--interrupt_requests", "False"],
            env,
            f"http://127.0.0.1:{port}|/v1/models",
        )
    )  # fmt: skip
    if llama_server is not None:
        port = free_port()
        found.append(
            (
                "llama-server (native)",
                [str(llama_server), "-m", str(gguf), "-c", str(n_ctx * slots), "-np", str(slots),
                 "-t", str(threads), "--host", "127.0.0.1", "--port", str(port)],
                env,
                f"http://127.0.0.1:{port}|/health",
            )
        )  # fmt: skip
    return found


def bench(
    home: Path,
    gguf: Path,
    model: str,
    prompts: tuple[str, ...],
    scratch: Path,
    threads: int,
    n_ctx: int,
    levels: list[int],
    rounds: int,
    max_tokens: int,
    llama_server: Path | None,
) -> None:
    results: dict[str, list[Level]] = {}
    for label, cmd, env, where in contenders(home, gguf, threads, n_ctx, max(levels), llama_server):
        url, probe = where.split("|")
        log = scratch / f"{label.split()[0]}.log"
        print(f"{label}: starting ...")
        try:
            process = serve(cmd, env, url, log, probe)
        except RuntimeError as e:
            print(f"{label}: skipped: {e}")
            continue
        try:
            name = model if label == "appliance" else str(gguf)
            run_level(url, name, prompts, 1, 1, 4)  # warm: weights and page cache
            results[label] = [run_level(url, name, prompts, n, rounds, max_tokens) for n in levels]
        finally:
            stop(process)
    print()
    print(
        f"concurrent streaming clients: {rounds} requests each, {max_tokens} greedy tokens, "
        f"{len(prompts)} prompts round-robin; tokens/s = all clients' tokens / wall time"
    )
    header = f"{'server':<22} {'clients':>7} {'tokens/s':>9} {'TTFT p50 ms':>12} {'p95 ms':>8}"
    print(header)
    print("-" * len(header))
    for label, rows in results.items():
        for level in rows:
            errors = f"  ({len(level.errors)} errors)" if level.errors else ""
            print(
                f"{label:<22} {level.clients:>7} {level.tokens_per_s:>9.1f} "
                f"{level.ttft_ms(0.5):>12.0f} {level.ttft_ms(0.95):>8.0f}{errors}"
            )
    ours = results.get("appliance")
    if ours is None:
        return
    print()
    for label, rows in results.items():
        if label == "appliance":
            continue
        ratios = ", ".join(
            f"{a.clients}: {a.tokens_per_s / b.tokens_per_s:.2f}x"
            for a, b in zip(ours, rows, strict=True)
            if b.tokens_per_s
        )
        print(f"appliance / {label} aggregate tokens/s by clients: {ratios}")
