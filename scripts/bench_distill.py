"""Distillation measured end to end: does an adapter trained on golden answers make the box
answer locally, correctly and with confidence, so fewer queries are paid for?

The task is one a small model can learn from examples and starts weak at: structured
extraction from field maintenance notes into a fixed JSON shape,
``{"asset": …, "component": …, "fault": …, "severity": …}``, where the notes say the same
thing many ways ("weeping", "dripping" and "leaking" are all a ``leak``; "asap" makes it
``high``). A few hundred notes are generated (seeded); a stand-in upstream (the teacher)
answers each with the right record. On a real daemon serving the SmolLM2 demo bundle:

1. cascade: every note goes to the box; an answer below the policy's confidence threshold is
   escalated to the teacher, whose answer is kept (the golden pairs);
2. export: ``distill export``; 3. train (and convert): ``distill train`` on the box's bundle;
4. eval: ``distill eval`` on the held-out pairs; 5. pack and sign, install on the box;
6. cascade again on notes never seen, now with the adapter: ``report adapters``.

Printed: held-out accuracy (exact match of the JSON), mean confidence, escalation rate at the
policy's threshold and upstream cost per 1000 queries, base vs base + adapter, and the wall
time of each step on this machine.

    python scripts/bench_distill.py                     # 200 notes, 100 steps (see README)
    python scripts/bench_distill.py --notes 80 --fresh 20 --steps 40    # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _bench import scratch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fake_upstream

import httpx

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.keys import generate_keypair
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import CHAT_RECIPE, build_source
from appliance.cli import main
from appliance.home import Home
from appliance.settings import load_settings
from appliance.tokens import TokenStore
from tests.fake_upstream import FakeUpstream

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 48  # a record is about 35 tokens; more only lets a wrong answer ramble
PRICE_IN, PRICE_OUT = 2.50, 10.00  # USD per million tokens: the teacher's (a large model's)
INSTRUCTION = (
    "Extract the maintenance record from the note as JSON with the keys asset, component, "
    "fault (leak, crack, wear, noise or overheat) and severity (low, medium or high).\nNote: "
)
COMPONENTS = [
    "pump", "valve", "seal", "bearing", "gearbox", "motor", "belt", "hose", "compressor",
    "fan", "filter", "coupling", "shaft", "impeller", "actuator", "sensor",
]  # fmt: skip
FAULTS = {
    "leak": ["leaking", "dripping", "weeping fluid", "losing oil", "has a leak"],
    "crack": ["cracked", "split", "fractured", "has a hairline crack"],
    "wear": ["worn", "worn down", "showing heavy wear", "badly worn"],
    "noise": ["noisy", "grinding", "rattling", "squealing", "knocking"],
    "overheat": ["overheating", "running hot", "too hot to touch", "tripping on temperature"],
}
SEVERITY = {
    "high": ["urgent", "fix asap", "critical, stop the line", "safety risk"],
    "medium": ["fix this week", "needs attention soon", "schedule for next shift"],
    "low": ["low priority", "monitor for now", "when convenient", "cosmetic only"],
}
PREFIXES = [
    "Field note:", "Tech report -", "Shift log:", "Inspection:", "Walkaround:", "Found today:",
]  # fmt: skip
AREAS = ["north yard", "line 2", "boiler room", "dock 4", "mill B", "pump house", "bay 7"]
POLICY = """schema = 1
name = "bench-distill"
default_class = "public"
[classes.public]
egress = "allowed"
[cascade]
confidence_measure = "mean"  # a JSON record's first clause is its first key: read every token
confidence_threshold = {threshold}
"""


@dataclass(frozen=True)
class Note:
    text: str  # the prompt a device sends
    record: str  # the JSON the teacher answers


def make_notes(count: int, seed: int) -> list[Note]:
    """`count` distinct notes, each with its record."""
    rng = random.Random(seed)
    notes: dict[str, Note] = {}
    while len(notes) < count:
        letters = "".join(rng.choice("ABCDEFGHKMPRSTVX") for _ in range(rng.choice((1, 2))))
        asset = f"{letters}-{rng.randint(10, 999)}"
        component, fault, severity = (
            rng.choice(COMPONENTS),
            rng.choice(list(FAULTS)),
            rng.choice(list(SEVERITY)),
        )
        text = (
            f"{rng.choice(PREFIXES)} {asset} {component} in {rng.choice(AREAS)} "
            f"{rng.choice(FAULTS[fault])}, {rng.choice(SEVERITY[severity])}."
        )
        record = json.dumps(
            {"asset": asset, "component": component, "fault": fault, "severity": severity}
        )
        notes[text] = Note(INSTRUCTION + text, record)
    return list(notes.values())


class Teacher:
    """The stand-in upstream: the right record for every note it is sent."""

    def __init__(self, notes: list[Note]) -> None:
        self.records = {n.text: n.record for n in notes}

    def __call__(self, body: dict[str, Any]) -> str:
        return self.records[body["messages"][-1]["content"]]


@dataclass
class Box:
    home: Home
    url: str
    token: str
    server: BackgroundServer
    key: Path
    bundle: Path


@contextmanager
def box(work: Path, fake: FakeUpstream, threshold: float) -> Iterator[Box]:
    """A daemon serving the SmolLM2 bundle, the teacher as its upstream."""
    key, public, _ = generate_keypair("publisher", work)
    (work / "upstream.key").write_text("sk-bench\n")
    (work / "policy.toml").write_text(POLICY.format(threshold=threshold))
    home = Home(work / "home").ensure()
    home.config_file.write_text(
        f'policy_file = "{work / "policy.toml"}"\n'
        "[sync]\nprobe_interval_s = 0.5\n"
        f'[[upstreams]]\nname = "teacher"\nkind = "openai"\nbase_url = "{fake.url}"\n'
        f'model = "large"\napi_key_file = "{work / "upstream.key"}"\n'
        f"price_input_per_mtok = {PRICE_IN}\nprice_output_per_mtok = {PRICE_OUT}\n"
    )
    trust.add_key(home, public)
    bundle = work / f"{MODEL}-1.0.0.bundle"
    pack(build_source(CHAT_RECIPE, work / "src"), bundle)
    sign(bundle, key)
    install(home, bundle)
    app = create_app(home, load_settings(home.config_file))
    server = BackgroundServer(app)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not app.state.forwarding.monitor.is_up("teacher"):
            if time.monotonic() > deadline:
                raise RuntimeError("the teacher never came up")
            time.sleep(0.1)
        token = TokenStore(home).create("bench", "infer")
        yield Box(home, server.url, token, server, key, bundle)
    finally:
        server.stop()


def install(home: Home, bundle: Path) -> None:
    manager = BundleManager(home)
    try:
        manager.install(bundle)
    finally:
        manager.close()


def cascade(b: Box, notes: list[Note]) -> dict[str, Any]:
    """Every note through the box as a device sends it: the routes, and how many answers were
    right (all, and of those answered on the box)."""
    routes: dict[str, int] = {}
    right = local_right = 0
    with httpx.Client(timeout=600) as client:
        for note in notes:
            response = client.post(
                f"{b.url}/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": note.text}],
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                },
                headers={"Authorization": f"Bearer {b.token}"},
            )
            response.raise_for_status()
            route = response.headers["X-Appliance-Route"]
            routes[route] = routes.get(route, 0) + 1
            correct = _same_record(response.json()["choices"][0]["message"]["content"], note.record)
            right += correct
            local_right += correct and route == "local"
    return {"notes": len(notes), "routes": routes, "right": right, "local_right": local_right}


def _same_record(text: str, record: str) -> bool:
    try:
        return bool(json.loads(text.strip()) == json.loads(record))
    except ValueError:
        return False


def cli(home: Home, *args: str) -> dict[str, Any]:
    """Run an `appliance` command with --json in this process; its JSON document."""
    import contextlib
    import io

    os.environ["APPLIANCE_HOME"] = str(home.root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--json"])
    if code != 0:
        raise SystemExit(f"appliance {' '.join(args)} failed ({code})")
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def timed(label: str, timings: dict[str, float]) -> Any:
    @contextmanager
    def block() -> Iterator[None]:
        print(f"{label} …", flush=True)
        started = time.perf_counter()
        yield
        timings[label] = time.perf_counter() - started
        print(f"{label}: {timings[label]:.1f} s", flush=True)

    return block()


def served(before: dict[str, Any], after: dict[str, Any], report: dict[str, Any]) -> str:
    """What the box did with the notes before and after the adapter (report adapters' cost)."""
    periods = next(m for m in report["models"] if m["model"] == MODEL)["periods"]
    lines = [
        "| on the box | notes | escalated | answered locally (right) | cost per 1000 (*) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, run, period in (
        ("base", before, periods[0]),
        ("base + adapter", after, periods[-1]),
    ):
        escalated = sum(run["routes"].get(r, 0) for r in ("escalated", "queued"))
        local = run["routes"].get("local", 0)
        lines.append(
            f"| {label} | {run['notes']} | {escalated} | {local} ({run['local_right']}) | "
            f"${period['cost_per_1000_usd']:.4f} |"
        )
    lines.append("(*) report adapters; the stand-in upstream bills 11 + 7 tokens per answer")
    return "\n".join(lines)


def table(evaluation: dict[str, Any]) -> str:
    base, tuned = evaluation["base"], evaluation["adapter"]
    rows = [
        ("held-out accuracy (exact match)", "exact_match", lambda v: f"{v * 100:.1f} %"),
        ("held-out token F1", "token_f1", lambda v: f"{v:.3f}"),
        ("mean confidence", None, lambda v: f"{v:.3f}"),
        ("escalation rate at the threshold", "escalation_rate", lambda v: f"{v * 100:.1f} %"),
        ("upstream cost per 1000 queries", "upstream_cost_per_1000_usd", lambda v: f"${v:.4f}"),
    ]
    lines = [f"| held-out, {evaluation['heldout_pairs']} pairs | base | base + adapter |"]
    lines.append("| --- | ---: | ---: |")
    for label, key, show in rows:
        b = base["confidence"]["mean"] if key is None else base[key]
        t = tuned["confidence"]["mean"] if key is None else tuned[key]
        lines.append(f"| {label} | {show(b)} | {show(t)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> None:
    notes = make_notes(args.notes + args.fresh, args.seed)
    first, fresh = notes[: args.notes], notes[args.notes :]
    timings: dict[str, float] = {}
    with FakeUpstream(api_key="sk-bench") as fake:
        fake.reply = Teacher(notes)
        with box(work, fake, args.threshold) as b:
            with timed("1 cascade on the box (base)", timings):
                before = cascade(b, first)
            print(f"   {before}")
            golden = work / "golden.jsonl"
            with timed("2 export", timings):
                exported = cli(b.home, "distill", "export", "--out", str(golden))
            print(f"   {exported['written']} golden pairs")
            run_dir = work / "run"
            with timed("3 train + convert", timings):
                trained = cli(
                    b.home, "distill", "train", str(golden), "--base", str(b.bundle),
                    "--out", str(run_dir), "--steps", str(args.steps), "--rank", str(args.rank),
                    "--alpha", str(2 * args.rank), "--batch-size", "8",
                    "--learning-rate", str(args.learning_rate), "--threads", str(args.threads),
                )  # fmt: skip
            losses = trained["losses"]
            print(
                f"   {trained['data']}; loss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out loss "
                f"{trained['heldout_loss_before']:.3f} -> {trained['heldout_loss_after']:.3f}; "
                f"{trained['seconds_per_step']:.2f} s per step on {trained['device']}"
            )
            with timed("4 eval (base and base + adapter)", timings):
                evaluation = cli(
                    b.home, "distill", "eval", str(run_dir), "--max-tokens", str(MAX_TOKENS)
                )
            with timed("5 pack + sign + install", timings):
                packed = cli(
                    b.home, "distill", "pack", str(run_dir), "--out", str(work / "a.bundle")
                )
                sign(Path(packed["path"]), b.key)
                install(b.home, Path(packed["path"]))
                deadline = time.monotonic() + 120
                while not _adapter_loaded(b):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the daemon did not apply the adapter")
                    time.sleep(0.5)
            with timed("6 cascade on the box (adapter), fresh notes", timings):
                after = cascade(b, fresh)
            print(f"   {after}")
        report = cli(b.home, "report", "adapters")  # the daemon stopped: every row committed
    print()
    print(
        f"{platform.node()}, {os.cpu_count()} cpus, {args.notes} notes then {args.fresh} fresh "
        f"ones, threshold {args.threshold}, {args.steps} steps of 8, rank {args.rank}"
    )
    print(table(evaluation))
    print()
    print(served(before, after, report))
    print()
    print("| step | wall time |")
    print("| --- | ---: |")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.0f} s |")
    print(f"| (train: seconds per optimisation step) | {trained['seconds_per_step']:.2f} s |")


def _adapter_loaded(b: Box) -> bool:
    models = httpx.get(
        f"{b.url}/v1/models", headers={"Authorization": f"Bearer {b.token}"}, timeout=30
    ).json()["data"]
    return any(m["id"] == MODEL and m["appliance"].get("adapter_digest") for m in models)


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=200, help="notes through the cascade")
    parser.add_argument("--fresh", type=int, default=60, help="new notes after the adapter")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=0.9, help="the policy's threshold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with scratch(args.workdir, "bench-distill-") as work:
        run(args, work)


if __name__ == "__main__":
    main_()
