#!/usr/bin/env python3
"""Benchmark: `appliance status --json` with the daemon down and a 100k-item outbox.

The field tech's checklist runs this command; the target is under 1 s wall time, start of
the Python process included. The same run times, for scale, a bare `python -c pass` and
`appliance --version` (the full CLI's imports, no work; `status` takes a fast path that
skips them). The outbox is filled through the real store (100k items in
batches of 1000, mixed states), then each command runs N times as a fresh process.

    .venv/bin/python scripts/bench_status.py [--items 100000] [--runs 7] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _bench import scratch

from appliance.governance.escalation import Escalation
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings

TARGET_S = 1.0


def fill(home: Home, items: int) -> None:
    settings = OutboxSettings(max_items=items * 2, max_bytes=4 * 1024**3)
    now = datetime.now(UTC).isoformat()
    with Outbox(home, settings) as outbox:
        for start in range(0, items, 1000):
            batch = [
                Escalation(
                    id=str(uuid.uuid4()),
                    created_at=now,
                    upstream="cloud",
                    endpoint="chat",
                    messages=({"role": "user", "content": f"Summarise report {start + i}."},),
                    mapping={"<EMAIL_1>": "someone@example.com"},
                    priority=(start + i) % 3,
                )
                for i in range(min(1000, items - start))
            ]
            outbox.enqueue_many(batch)
        for item in outbox.claim("bench", 500):  # some in flight, some failed
            outbox.fail(item.id, "bench", "HTTP 400: refused")


def timed(command: list[str], env: dict[str, str], runs: int) -> tuple[list[float], str]:
    times, out = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        out = done.stdout
    return times, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    appliance = str(Path(sys.executable).with_name("appliance"))
    with scratch(args.workdir, "bench-status-") as folder:
        home = Home(folder / "home").ensure()
        started = time.perf_counter()
        fill(home, args.items)
        print(f"filled {args.items} outbox items in {time.perf_counter() - started:.1f} s")
        (home.config_file).write_text(
            f"[outbox]\nmax_items = {args.items * 2}\n[server]\nport = 9\n"  # nothing listens
        )
        env = {**os.environ, "APPLIANCE_HOME": str(home.root)}
        rows = []
        floor, _ = timed([sys.executable, "-c", "pass"], env, args.runs)
        version, _ = timed([appliance, "--version"], env, args.runs)
        status, out = timed([appliance, "status", "--json"], env, args.runs)
        document = json.loads(out)
        assert document["daemon"]["up"] is False, "a daemon answered: stop it for this bench"
        assert sum(document["outbox"]["counts"].values()) == args.items
        for name, times in (
            ("python -c pass", floor),
            ("appliance --version", version),
            ("appliance status --json", status),
        ):
            rows.append((name, statistics.median(times), max(times)))
    print(f"\n{'command':<28} {'median s':>9} {'max s':>8}")
    for name, median, worst in rows:
        print(f"{name:<28} {median:>9.3f} {worst:>8.3f}")
    # `status` starts on its own fast path (appliance._entry) without the other commands.
    print(
        f"\nstatus --json / the full CLI's bare start (--version) = {rows[2][1] / rows[1][1]:.2f}x"
    )
    print(f"status --json over a bare interpreter: +{rows[2][1] - rows[0][1]:.3f} s")
    verdict = "PASS" if rows[2][1] < TARGET_S else "FAIL"
    print(f"target: status --json under {TARGET_S:.1f} s with {args.items} items: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
