#!/usr/bin/env python3
"""Confidence measures as routers: which one best tells a right local answer from a wrong one?

A model cascade is worth as much as its confidence signal. The questions are
``scripts/data/cascade_qa.jsonl`` (``scripts/make_cascade_qa.py``: capitals, continents,
chemical symbols, opposites, plurals, sums, products, number words, the order of days and
months; each with its key). On a real daemon serving the Gemma demo bundle, with a stand-in
upstream that answers every question from the key:

1. measure: every question as a completion (greedy, 8 tokens, with log-probabilities) under a
   policy that keeps every answer local; an answer is right when its first clause matches the
   key (or an alias) after normalising case, accents, hyphens and punctuation. Each measure of
   ``appliance.governance.confidence`` is computed from the tokens the daemon reported (and
   checked against the daemon's own value for the policy's measure);
2. per measure, as a router that sends the least confident answers upstream: ROC AUC (right
   vs wrong), APGR (RouteLLM's average performance gap recovered: the area under the share of
   the local-to-upstream quality gap recovered, over the share sent upstream; a random router
   scores 0.5), the share sent upstream to recover 50 % and 80 % of the gap, and the upstream
   cost saved (against sending everything) while reaching 90/95/99 % of the upstream's quality.
   A random router and a perfect one (it sends exactly the wrong answers) frame the table;
3. live: the policy switched to the winning measure (highest APGR), its threshold set where
   step 2 recovers 80 % of the gap; every question again, now escalated by the daemon when
   below it. The routes and the final answers' accuracy, beside what step 2 predicted.

    .venv/bin/python scripts/bench_cascade.py              # every question (see README)
    .venv/bin/python scripts/bench_cascade.py --limit 60   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _bench import scratch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fake_upstream

import httpx
import numpy as np

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.keys import generate_keypair
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import DEMO_RECIPE, build_source
from appliance.governance.confidence import Measure, confidence, first_clause
from appliance.home import Home
from appliance.policy.schema import CascadeSettings
from appliance.settings import load_settings
from appliance.tokens import TokenStore
from tests.fake_upstream import FakeUpstream

MODEL = "gemma3-270m"
DATA = Path(__file__).resolve().parent / "data" / "cascade_qa.jsonl"
MAX_TOKENS = 8
DEFAULT = CascadeSettings()  # the policy defaults: the measure, the threshold
GAPS = (0.5, 0.8)  # shares of the quality gap to recover
QUALITY = (0.90, 0.95, 0.99)  # shares of the upstream's quality to reach
POLICY = """schema = 1
name = "bench-cascade"
default_class = "public"
[classes.public]
egress = "allowed"
[cascade]
confidence_measure = "{measure}"
first_tokens = {first_tokens}
confidence_threshold = {threshold}
"""


@dataclass(frozen=True)
class Variant:
    """One measure with its parameters, as a policy would set them."""

    label: str
    measure: Measure
    first_tokens: int = 1
    percentile: float = 10.0

    def of(self, texts: Sequence[str], logprobs: Sequence[float]) -> float | None:
        return confidence(
            logprobs, self.measure, self.percentile, texts=texts, first_tokens=self.first_tokens
        )


VARIANTS = (
    Variant("mean", "mean"),
    Variant("min", "min"),
    Variant("tail (p = 10)", "tail"),
    Variant("first (k = 1)", "first", 1),
    Variant("first (k = 2)", "first", 2),
    Variant("first (k = 4)", "first", 4),
    Variant("clause", "clause"),
)


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    style: str
    question: str
    prompt: str
    answer: str
    aliases: tuple[str, ...]


@dataclass
class Answer:
    item: Item
    text: str
    texts: list[str]
    logprobs: list[float]
    reported: float | None  # the daemon's confidence under the policy's measure
    right: bool = field(init=False)

    def __post_init__(self) -> None:
        self.right = is_right(self.text, self.item)


def load_items(path: Path, limit: int | None) -> list[Item]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    items = [Item(**{**r, "aliases": tuple(r["aliases"])}) for r in rows]
    if limit is not None and limit < len(items):
        step = len(items) / limit  # spread over the file, so every category is in
        items = [items[int(i * step)] for i in range(limit)]
    return items


def normalise(text: str) -> str:
    """Lower case, accents and punctuation dropped, hyphens as spaces, no leading "the"."""
    text = "".join(
        c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)
    ).lower()
    text = re.sub(r"[^\w\s]", " ", text.replace("-", " "))
    text = " ".join(text.split())
    return text.removeprefix("the ")


def is_right(text: str, item: Item) -> bool:
    """The answer's first clause is the key or one of its aliases."""
    said = normalise(first_clause(text))
    return said != "" and said in {normalise(a) for a in (item.answer, *item.aliases)}


# -- routing metrics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Quality (share right) against the share sent upstream, piecewise linear: sending the
    least confident first, a tie sent in a random order (linear between tie groups)."""

    shares: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray  # at point i: the threshold that sends exactly that share

    @property
    def weak(self) -> float:
        return float(self.quality[0])

    @property
    def strong(self) -> float:
        return float(self.quality[-1])

    def pgr(self) -> np.ndarray:
        return (self.quality - self.weak) / (self.strong - self.weak)

    def apgr(self) -> float:
        pgr = self.pgr()
        return float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(self.shares)))

    def share_for(self, values: np.ndarray, target: float) -> tuple[float, int]:
        """The least share at which `values` reaches `target`, and the curve point at or
        after it (its threshold sends at least that share)."""
        for i, v in enumerate(values):
            if v >= target - 1e-12:
                if i == 0:
                    return 0.0, 0
                v0, x0, x1 = values[i - 1], self.shares[i - 1], self.shares[i]
                return float(x0 + (target - v0) / (v - v0) * (x1 - x0)), i
        return 1.0, len(values) - 1


def _key(value: float | None) -> float:
    return -math.inf if value is None else value


def route_curve(
    confs: Sequence[float | None], local: Sequence[bool], upstream: Sequence[bool]
) -> Curve:
    n = len(confs)
    order = sorted(range(n), key=lambda i: _key(confs[i]))
    right = float(sum(local))
    shares, quality, thresholds = [0.0], [right / n], [-math.inf]
    i = 0
    while i < n:
        j = i
        while j < n and _key(confs[order[j]]) == _key(confs[order[i]]):
            right += float(upstream[order[j]]) - float(local[order[j]])
            j += 1
        nxt = _key(confs[order[j]]) if j < n else math.inf
        shares.append(j / n)
        quality.append(right / n)
        thresholds.append(nxt)  # escalate below it: everything up to j
        i = j
    return Curve(np.array(shares), np.array(quality), np.array(thresholds))


def auc(confs: Sequence[float | None], right: Sequence[bool]) -> float:
    """ROC AUC of confidence as a predictor of a right answer (ties count a half)."""
    values = np.array([_key(c) for c in confs])
    good, bad = values[np.array(right)], values[~np.array(right)]
    if good.size == 0 or bad.size == 0:
        return math.nan
    greater = (good[:, None] > bad[None, :]).sum()
    ties = (good[:, None] == bad[None, :]).sum()
    return float((greater + 0.5 * ties) / (good.size * bad.size))


@dataclass(frozen=True)
class Row:
    label: str
    auc: float
    apgr: float
    gap_shares: tuple[float, ...]
    saved: tuple[float, ...]
    threshold_80: float | None = None  # escalate below it: at least 80 % of the gap
    at_80: tuple[float, float] = (math.nan, math.nan)  # (share sent, quality) at that threshold
    at_default: tuple[float, float] | None = None  # (share sent, gap recovered) at the default


def measure_row(label: str, confs: Sequence[float | None], answers: Sequence[Answer]) -> Row:
    local = [a.right for a in answers]
    curve = route_curve(confs, local, [True] * len(answers))
    gaps = tuple(curve.share_for(curve.pgr(), g)[0] for g in GAPS)
    saved = tuple(1 - curve.share_for(curve.quality, q * curve.strong)[0] for q in QUALITY)
    _, point = curve.share_for(curve.pgr(), 0.8)
    at_80 = (float(curve.shares[point]), float(curve.quality[point]))
    threshold = DEFAULT.confidence_threshold
    sent = [c is None or c < threshold for c in confs]
    quality = sum(True if s else r for s, r in zip(sent, local, strict=True)) / len(confs)
    at_default = (sum(sent) / len(confs), (quality - curve.weak) / (curve.strong - curve.weak))
    return Row(
        label, auc(confs, local), curve.apgr(), gaps, saved, curve.thresholds[point], at_80,
        at_default,
    )  # fmt: skip


def random_row(weak: float, strong: float) -> Row:
    saved = tuple(1 - min(1.0, max(0.0, (q * strong - weak) / (strong - weak))) for q in QUALITY)
    return Row("random router", 0.5, 0.5, GAPS, saved)


def oracle_row(answers: Sequence[Answer]) -> Row:
    confs: list[float | None] = [1.0 if a.right else 0.0 for a in answers]
    row = measure_row("perfect router", confs, answers)
    return Row(row.label, 1.0, row.apgr, row.gap_shares, row.saved)


def table(rows: Sequence[Row]) -> str:
    head = (
        "| measure | AUC | APGR | upstream share for 50 % / 80 % of the gap | "
        "cost saved at 90 / 95 / 99 % of upstream quality | threshold (80 %) | "
        f"at threshold {DEFAULT.confidence_threshold}: sent / gap recovered |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        gaps = " / ".join(f"{s * 100:.0f} %" for s in r.gap_shares)
        saved = " / ".join(f"{s * 100:.0f} %" for s in r.saved)
        threshold = "" if r.threshold_80 is None else _threshold(r.threshold_80)
        default = (
            "" if r.at_default is None
            else f"{r.at_default[0] * 100:.0f} % / {r.at_default[1] * 100:.0f} %"
        )  # fmt: skip
        lines.append(
            f"| {r.label} | {r.auc:.3f} | {r.apgr:.3f} | {gaps} | {saved} | {threshold} | "
            f"{default} |"
        )
    return "\n".join(lines)


def _threshold(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"


# -- the daemon ---------------------------------------------------------------------------------


class Key:
    """The stand-in upstream: the key's answer to every question it is sent."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.answers = {i.prompt: i.answer for i in items}

    def __call__(self, body: dict[str, Any]) -> str:
        return " " + self.answers[body["messages"][-1]["content"]]


@dataclass
class Box:
    url: str
    token: str
    policy: Path
    server: BackgroundServer
    app: Any

    def use(self, variant: Variant, threshold: float) -> None:
        self.policy.write_text(
            POLICY.format(
                measure=variant.measure, first_tokens=variant.first_tokens, threshold=threshold
            )
        )
        self.app.state.governor.active.refresh()
        cascade = self.app.state.governor.active.policy.cascade
        assert cascade.confidence_measure == variant.measure, "the policy did not change"


@contextmanager
def box(work: Path, fake: FakeUpstream) -> Iterator[Box]:
    """A daemon serving the Gemma demo bundle, the key as its upstream."""
    key, public, _ = generate_keypair("publisher", work)
    (work / "upstream.key").write_text("sk-bench\n")
    policy = work / "policy.toml"
    policy.write_text(POLICY.format(measure="mean", first_tokens=1, threshold=0.0))
    home = Home(work / "home").ensure()
    home.config_file.write_text(
        f'policy_file = "{policy}"\n'
        "[sync]\nprobe_interval_s = 0.5\n"
        f'[[upstreams]]\nname = "key"\nkind = "openai"\nbase_url = "{fake.url}"\n'
        f'model = "large"\napi_key_file = "{work / "upstream.key"}"\n'
    )
    trust.add_key(home, public)
    bundle = work / f"{MODEL}-1.0.0.bundle"
    pack(build_source(DEMO_RECIPE, work / "src"), bundle)
    sign(bundle, key)
    manager = BundleManager(home)
    try:
        manager.install(bundle)
    finally:
        manager.close()
    app = create_app(home, load_settings(home.config_file))
    server = BackgroundServer(app)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not app.state.forwarding.monitor.is_up("key"):
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in upstream never came up")
            time.sleep(0.1)
        token = TokenStore(home).create("bench", "infer")
        yield Box(server.url, token, policy, server, app)
    finally:
        server.stop()


def ask(client: httpx.Client, b: Box, item: Item, logprobs: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL, "prompt": item.prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
    }  # fmt: skip
    if logprobs:
        body["logprobs"] = 1
    response = client.post(
        f"{b.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {b.token}"}
    )
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    document["route"] = response.headers["X-Appliance-Route"]
    return document


def measure_pass(b: Box, items: Sequence[Item]) -> list[Answer]:
    answers = []
    with httpx.Client(timeout=600) as client:
        for n, item in enumerate(items, 1):
            document = ask(client, b, item, logprobs=True)
            if document["route"] != "local":
                raise RuntimeError(f"{item.id} was routed {document['route']}, not local")
            choice = document["choices"][0]
            lp = choice["logprobs"]
            answers.append(
                Answer(
                    item,
                    choice["text"],
                    lp["tokens"],
                    lp["token_logprobs"],
                    document["appliance"]["confidence"],
                )
            )
            if n % 50 == 0:
                print(f"   {n}/{len(items)}", flush=True)
    return answers


def live_pass(b: Box, items: Sequence[Item]) -> tuple[dict[str, int], int]:
    """Every question through the cascade: the routes, and how many final answers were right."""
    routes: dict[str, int] = {}
    right = 0
    with httpx.Client(timeout=600) as client:
        for item in items:
            document = ask(client, b, item, logprobs=False)
            routes[document["route"]] = routes.get(document["route"], 0) + 1
            right += is_right(document["choices"][0]["text"], item)
    return routes, right


def timed(label: str, timings: dict[str, float]) -> Any:
    @contextmanager
    def block() -> Iterator[None]:
        print(f"{label} …", flush=True)
        started = time.perf_counter()
        yield
        timings[label] = time.perf_counter() - started
        print(f"{label}: {timings[label]:.1f} s", flush=True)

    return block()


def categories(answers: Sequence[Answer]) -> str:
    counts: dict[str, list[int]] = {}
    for a in answers:
        c = counts.setdefault(a.item.category, [0, 0])
        c[0] += a.right
        c[1] += 1
    return ", ".join(f"{k} {r}/{n}" for k, (r, n) in counts.items())


def styles(answers: Sequence[Answer]) -> str:
    """AUC of each measure within each prompt style (and how many answers were right)."""
    kinds = sorted({a.item.style for a in answers})
    parts = {k: [a for a in answers if a.item.style == k] for k in kinds}
    head = " | ".join(
        f"AUC, {k} ({sum(a.right for a in group)}/{len(group)} right)" for k, group in parts.items()
    )
    lines = [f"| measure | {head} |", "| --- |" + " ---: |" * len(kinds)]
    for v in VARIANTS:
        cells = " | ".join(
            f"{auc([v.of(a.texts, a.logprobs) for a in group], [a.right for a in group]):.3f}"
            for group in parts.values()
        )
        lines.append(f"| {v.label} | {cells} |")
    return "\n".join(lines)


def ranked(answers: Sequence[Answer]) -> list[tuple[Row, Variant]]:
    """Each measure's row, best first: the highest APGR, then the highest AUC."""
    rows = [
        measure_row(v.label, [v.of(a.texts, a.logprobs) for a in answers], answers)
        for v in VARIANTS
    ]
    return sorted(zip(rows, VARIANTS, strict=True), key=lambda p: (-p[0].apgr, -p[0].auc))


@dataclass
class Measured:
    answers: list[Answer]
    off: list[str]  # answers whose confidence the daemon reported otherwise than recomputed
    live: tuple[dict[str, int], int] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def on_the_box(args: argparse.Namespace, work: Path, items: Sequence[Item]) -> Measured:
    """Steps 1 and 3 on a daemon: the local answers; the cascade with the winning measure."""
    timings: dict[str, float] = {}
    default = next(v for v in VARIANTS if v.measure == DEFAULT.confidence_measure)
    with FakeUpstream(api_key="sk-bench") as fake:
        fake.reply = Key(items)
        with box(work, fake) as b:
            b.use(default, 0.0)  # every answer stands: the local answers, measured
            with timed("1 measure: every question on the box", timings):
                answers = measure_pass(b, items)
            off = [
                a.item.id
                for a in answers
                if (mine := default.of(a.texts, a.logprobs)) is not None
                and (a.reported is None or abs(mine - a.reported) > 1e-4)
            ]
            measured = Measured(answers, off, timings=timings)
            best_row, best = ranked(answers)[0]
            if not args.no_live and best_row.threshold_80 is not None:
                threshold = min(1.0, best_row.threshold_80)
                b.use(best, threshold)
                with timed(f"3 live: the cascade with {best.label} at {threshold:.4f}", timings):
                    measured.live = live_pass(b, items)
    return measured


def replayed(path: Path, items: Sequence[Item]) -> Measured:
    """Answers written by an earlier run's --json (no daemon, no step 3)."""
    by_id = {i.id: i for i in items}
    rows = json.loads(path.read_text(encoding="utf-8"))
    answers = [
        Answer(by_id[r["id"]], r["text"], r["tokens"], r["logprobs"], r.get("reported"))
        for r in rows
        if r["id"] in by_id
    ]
    return Measured(answers, [])


def report(m: Measured, replay: bool) -> None:
    answers = m.answers
    right = sum(a.right for a in answers)
    weak, strong = right / len(answers), 1.0
    print()
    print(
        f"{platform.node()}, {os.cpu_count()} cpus; {len(answers)} questions, {MAX_TOKENS} tokens "
        f"greedy; right on the box: {right} ({weak * 100:.1f} %); the upstream (the key): 100 %"
    )
    print(f"by category: {categories(answers)}")
    if not replay:
        print(
            f"the daemon's own {DEFAULT.confidence_measure} confidence differs from the "
            f"recomputed one on {len(m.off)} answers {m.off[:5]}"
        )
    print()
    order = ranked(answers)
    by_label = {v.label: row for row, v in order}
    rows = [by_label[v.label] for v in VARIANTS]
    print(table([*rows, random_row(weak, strong), oracle_row(answers)]))
    print()
    print(styles(answers))
    print()
    best_row, best = order[0]
    print(f"winner (highest APGR, then AUC): {best.label}")
    if m.live is not None:
        routes, final = m.live
        n = len(answers)
        sent = sum(routes.get(r, 0) for r in ("escalated", "queued"))
        print(
            f"live, {best.label} at its 80 % threshold: {sent}/{n} sent upstream "
            f"({sent / n * 100:.1f} %; predicted {best_row.at_80[0] * 100:.1f} %), "
            f"routes {routes}, final answers right {final}/{n} "
            f"({final / n * 100:.1f} %; predicted {best_row.at_80[1] * 100:.1f} %; "
            f"gap recovered {(final / n - weak) / (strong - weak) * 100:.1f} %)"
        )
    if m.timings:
        print()
        print("| step | wall time |")
        print("| --- | ---: |")
        for label, seconds in m.timings.items():
            print(f"| {label} | {seconds:.0f} s |")


def write_answers(path: Path, answers: Sequence[Answer]) -> None:
    rows = [
        {"id": a.item.id, "text": a.text, "right": a.right, "tokens": a.texts,
         "logprobs": a.logprobs, "reported": a.reported}
        for a in answers
    ]  # fmt: skip
    path.write_text(json.dumps(rows, indent=1))


def run(args: argparse.Namespace, work: Path) -> None:
    items = load_items(args.data, args.limit)
    m = replayed(args.replay, items) if args.replay else on_the_box(args, work, items)
    report(m, replay=args.replay is not None)
    if args.json is not None:
        write_answers(args.json, m.answers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the questions (JSON lines)")
    parser.add_argument("--limit", type=int, default=None, help="this many, spread over the file")
    parser.add_argument("--no-live", action="store_true", help="skip step 3")
    parser.add_argument("--json", type=Path, default=None, help="write every answer here")
    parser.add_argument(
        "--replay", type=Path, default=None, help="the tables from a --json file (no daemon)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.replay is not None:
        run(args, Path("."))
        return
    with scratch(args.workdir, "bench-cascade-") as work:
        run(args, work)


if __name__ == "__main__":
    main()
