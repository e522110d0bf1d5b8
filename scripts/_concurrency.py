"""Many devices at once: aggregate tokens/s and time to first token at 1, 2, 4, 8 clients.

Used by ``bench_serving.py --concurrency``. Each server is a child process (so that the
client threads of this process never share an interpreter with it); the 1-client reference
runs in this process, before any server starts:

  llama-cpp-python   the 1-client reference: create_completion(stream=True) in this process,
  direct             llm.reset() before each request (no server, no HTTP)
  appliance          `python -m appliance serve` on the scratch home (continuous batching,
                     [runtime] slots = the largest client count)
  llama_cpp.server   `python -m llama_cpp.server` on the same GGUF with --interrupt_requests
                     False (by default a new request cuts the stream in flight: at 2+ clients
                     most requests then end in errors), its defaults otherwise
  llama-server       the native server built from the llama.cpp that llama-cpp-python's sdist
  (native)           vendors (build_native; `-np` = the largest count)

Every client streams /v1/completions (greedy, the same prompts round-robin, max_tokens
each) one request after another for --rounds requests; generated tokens are the stream's
text chunks. Aggregate tokens/s = all clients' tokens / the wall time of the level.

Greedy agreement: each server answers every prompt of a wider set alone (one request at a
time), then all of them again over as many concurrent streams as it has slots; the table
counts the answers whose chunks are identical, those whose first chunk is, and where the
others parted. llama.cpp's CPU kernels round a row differently with the rows it shares a
batch with, so its own server parts too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _bench import stop

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


def _stream(
    client: httpx.Client, model: str, prompt: str, max_tokens: int
) -> tuple[list[str], float]:
    """(the text chunks, seconds to the first one) of one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    chunks: list[str] = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                chunks.append(choices[0]["text"])
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
                    chunks, ttft = _stream(http, model, prompt, max_tokens)
                except httpx.HTTPError as e:
                    with lock:
                        level.errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    level.tokens += len(chunks)
                    level.ttft.append(ttft)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.perf_counter() - started
    return level


@dataclass
class Agreement:
    """Greedy answers given alone (one request at a time) vs among others, per prompt."""

    prompts: int = 0
    identical: int = 0
    first_same: int = 0  # the first text chunk (token) is the same
    diverged_at: list[int] = field(default_factory=list)  # chunk index of each first difference
    errors: int = 0

    def add(self, alone: list[str], together: list[str]) -> None:
        self.prompts += 1
        self.identical += alone == together
        self.first_same += alone[:1] == together[:1]
        if alone != together:
            self.diverged_at.append(
                next(
                    (k for k, (a, b) in enumerate(zip(alone, together, strict=False)) if a != b),
                    min(len(alone), len(together)),
                )
            )


def _retried(client: httpx.Client, model: str, prompt: str, max_tokens: int) -> list[str] | None:
    """The chunks of a greedy answer, asked again once if the connection broke (llama-server
    now and then closes a kept-alive connection as a request goes out); None if it failed."""
    for _ in range(2):
        with contextlib.suppress(httpx.HTTPError):
            return _stream(client, model, prompt, max_tokens)[0]
    return None


def agreement(
    url: str, model: str, prompts: tuple[str, ...], clients: int, max_tokens: int
) -> Agreement:
    """Answer every prompt alone, then all of them again with `clients` streams at once (each
    client takes the next unanswered prompt), and compare the chunk sequences."""
    alone: list[list[str] | None] = [None] * len(prompts)
    with httpx.Client(base_url=url, timeout=600, trust_env=False) as http:
        for i, prompt in enumerate(prompts):
            alone[i] = _retried(http, model, prompt, max_tokens)
    together: list[list[str] | None] = [None] * len(prompts)
    lock = threading.Lock()
    queue = list(range(len(prompts)))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600, trust_env=False) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop(0)
                together[i] = _retried(http, model, prompts[i], max_tokens)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = Agreement()
    for a, b in zip(alone, together, strict=True):
        if a is None or b is None:
            result.errors += 1
        else:
            result.add(a, b)
    return result


def direct_level(
    gguf: Path, prompts: tuple[str, ...], threads: int, n_ctx: int, rounds: int, max_tokens: int
) -> Level:
    """One client calling llama-cpp-python in this process (create_completion, stream=True,
    greedy, llm.reset() first, as bench_serving's direct rows): the 1-client reference."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, logits_all=False, verbose=False
    )
    try:
        level = Level(1)

        def one(prompt: str, n: int) -> tuple[int, float]:
            llm.reset()
            started = time.perf_counter()
            first, chunks = None, 0
            for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
                if chunk["choices"][0]["text"]:  # type: ignore[index]
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
            return chunks, first if first is not None else time.perf_counter() - started

        one(prompts[0], 4)  # warm
        started = time.perf_counter()
        for r in range(rounds):
            chunks, ttft = one(prompts[r % len(prompts)], max_tokens)
            level.tokens += chunks
            level.ttft.append(ttft)
        level.seconds = time.perf_counter() - started
        return level
    finally:
        llm.close()


def build_native(folder: Path) -> Path | None:
    """The native llama-server from the llama.cpp that the pinned llama-cpp-python sdist
    vendors, built into `folder` by scripts/build_llama_server.sh (~8 min on 2 cores the
    first time; an existing build there is reused). None, with the reason, if it fails."""
    script = Path(__file__).with_name("build_llama_server.sh")
    print(f"llama-server (native): building into {folder} (reused if already there) ...")
    done = subprocess.run(["bash", str(script), str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"llama-server (native): build failed, skipped: {done.stderr.strip()[-500:]}")
        return None
    return Path(done.stdout.strip().splitlines()[-1])


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
    wide: tuple[str, ...],
    scratch: Path,
    threads: int,
    n_ctx: int,
    levels: list[int],
    rounds: int,
    max_tokens: int,
    llama_server: Path | None,
) -> None:
    results: dict[str, list[Level]] = {}
    agreements: dict[str, Agreement] = {}
    slots = max(levels)
    if 1 in levels:
        print("llama-cpp-python direct: 1 client in-process ...")
        results["llama-cpp-python direct"] = [
            direct_level(gguf, prompts, threads, n_ctx, rounds, max_tokens)
        ]
    for label, cmd, env, where in contenders(home, gguf, threads, n_ctx, slots, llama_server):
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
            if wide:
                agreements[label] = agreement(url, name, wide, slots, max_tokens)
        finally:
            stop(process)
    _heading(
        f"concurrent streaming clients: {rounds} requests each, {max_tokens} greedy tokens, "
        f"{len(prompts)} prompts round-robin; tokens/s = all clients' tokens / wall time",
        f"{'server':<24} {'clients':>7} {'tokens/s':>9} {'TTFT p50 ms':>12} {'p95 ms':>8}",
    )
    for label, rows in results.items():
        for level in rows:
            errors = f"  ({len(level.errors)} errors)" if level.errors else ""
            print(
                f"{label:<24} {level.clients:>7} {level.tokens_per_s:>9.1f} "
                f"{level.ttft_ms(0.5):>12.0f} {level.ttft_ms(0.95):>8.0f}{errors}"
            )
    ours = results.get("appliance")
    if ours is not None:
        print()
        for label, rows in results.items():
            if label == "appliance":
                continue
            by_clients = {level.clients: level for level in rows}
            ratios = ", ".join(
                f"{a.clients}: {a.tokens_per_s / b.tokens_per_s:.2f}x"
                for a in ours
                if (b := by_clients.get(a.clients)) is not None and b.tokens_per_s
            )
            print(f"appliance / {label} aggregate tokens/s by clients: {ratios}")
    if agreements:
        _heading(
            f"greedy agreement: {len(wide)} prompts, {max_tokens} tokens, each answered alone, "
            f"then all again over {slots} concurrent streams",
            f"{'server':<24} {'identical':>10} {'first token same':>17}  diverged at chunk",
        )
        for label, a in agreements.items():
            errors = f"  ({a.errors} errors)" if a.errors else ""
            print(
                f"{label:<24} {a.identical:>5}/{a.prompts:<4} {a.first_same:>11}/{a.prompts:<5} "
                f"{sorted(a.diverged_at)}{errors}"
            )


def _heading(title: str, header: str) -> None:
    print()
    print(title)
    print(header)
    print("-" * len(header))
