"""The whole distillation loop on the real instruction-tuned demo model (SmolLM2-135M):
a daemon escalates to a stand-in upstream (the teacher), `distill export` writes the golden
pairs, `distill train` fine-tunes a LoRA on the box's own GGUF weights and converts it,
`distill eval` measures it through llama.cpp, `distill pack` bundles it, and once the signed
bundle is installed the daemon's answer to a trained prompt is the teacher's.

Small on purpose (the suite's budget): 34 pairs, 12 steps of 8 pairs, rank 8, two threads.
The task (a fixed log-line format filled from the request, the sender's placeholder carried
through) is one the base model does not do and a few steps teach; one teacher answer
invents an e-mail address for a placeholder, and that pair must be screened out, so the
tuned model never learns the address.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import CHAT_RECIPE, build_source
from appliance.cli import main
from appliance.distill.golden import read_pairs
from appliance.home import Home
from appliance.settings import load_settings
from appliance.tokens import TokenStore
from tests.daemon import Daemon
from tests.fake_upstream import FakeUpstream
from tests.helpers import Key, make_key

for needed in ("torch", "peft", "transformers"):
    pytest.importorskip(needed, reason="the [train] extra is not installed")

MODEL = "smollm2-135m-instruct"
EMAIL = "ana.ruiz@example.com"
INVENTED = "jo.smith@example.com"  # what the teacher makes up for one placeholder
THINGS = [
    "hydraulic pump", "drive belt", "air filter", "coolant hose", "brake pad", "fuel injector",
    "oil seal", "spark plug", "wiper motor", "alternator", "starter relay", "radiator cap",
    "timing chain", "water pump", "gear shaft", "valve spring", "clutch plate", "fan belt",
    "oxygen sensor", "cabin filter", "ball joint", "tie rod", "wheel bearing", "shock absorber",
    "control arm", "exhaust gasket", "thermostat", "ignition coil", "crane winch", "boom arm",
]  # fmt: skip
FAULTS = ["leaking", "cracked", "worn", "seized", "noisy", "loose", "overheating"]
NOTE = re.compile(r"Log this fault(?: from (\S+))?: the (.+) is (\w+)\.")
POLICY = """schema = 1
name = "distill-e2e"
default_class = "public"
[classes.personal]
pii = ["EMAIL"]
egress = "redacted"
[classes.public]
egress = "allowed"
"""
TRAIN = ["--steps", "12", "--rank", "8", "--alpha", "16", "--batch-size", "8"]
TRAIN += ["--learning-rate", "3e-3", "--threads", "2", "--seed", "0"]


def note(i: int) -> str:
    """Two notes in three come from a technician's e-mail address (a placeholder upstream)."""
    sender = "" if i % 3 == 0 else f" from {EMAIL}"
    return f"Log this fault{sender}: the {THINGS[i]} is {FAULTS[i % 7]}."


def prompts() -> list[str]:
    return [note(i) for i in range(len(THINGS))]


def teacher(body: dict[str, Any]) -> str:
    """The stand-in upstream: the log line, from the (redacted) request it was sent."""
    note = NOTE.search(body["messages"][-1]["content"])
    assert note is not None, body
    sender, thing, fault = note.groups()
    if sender is None:
        return f"LOGGED: {thing} | {fault}"
    return f"LOGGED: {thing} | {fault} | {INVENTED if thing == 'boom arm' else sender}"


@contextmanager
def _env(home: Home) -> Iterator[None]:
    before = os.environ.get("APPLIANCE_HOME")
    os.environ["APPLIANCE_HOME"] = str(home.root)
    try:
        yield
    finally:
        if before is None:
            del os.environ["APPLIANCE_HOME"]
        else:
            os.environ["APPLIANCE_HOME"] = before


def cli(home: Home, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    with _env(home):
        code = main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-distill") as server:
        server.reply = teacher
        yield server


@dataclass
class Box:
    daemon: Daemon
    key: Key  # the publisher's, trusted by the box
    bundle: Path  # the SmolLM2 model bundle it serves


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Box]:
    """A box serving the SmolLM2 bundle, with the teacher as its (trainable) upstream."""
    root = tmp_path_factory.mktemp("distill-e2e")
    key = make_key(root, "publisher")
    (root / "upstream.key").write_text("sk-distill\n")
    (root / "policy.toml").write_text(POLICY)
    home = Home(root / "home").ensure()
    home.config_file.write_text(
        f'policy_file = "{root / "policy.toml"}"\n'
        "[sync]\nprobe_interval_s = 0.2\ninterval_s = 0.2\n"
        f'[[upstreams]]\nname = "teacher"\nkind = "openai"\nbase_url = "{fake.url}"\n'
        f'model = "big"\napi_key_file = "{root / "upstream.key"}"\n'
        "price_input_per_mtok = 2.5\nprice_output_per_mtok = 10.0\ntrainable = true\n"
    )
    trust.add_key(home, key.public)
    app = create_app(home, load_settings(home.config_file))
    d = Daemon(home, app, BackgroundServer(app))
    bundle = root / f"{MODEL}-1.0.0.bundle"
    pack(build_source(CHAT_RECIPE, root / "src"), bundle)
    sign(bundle, key.private)
    d.install(bundle)
    d.infer_token = TokenStore(home).create("edge-device", "infer")
    d.server.start()
    yield Box(d, key, bundle)
    d.server.stop()


def chat(daemon: Daemon, text: str, escalate: str) -> httpx.Response:
    response = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 40,
            "temperature": 0,
            "appliance": {"escalate": escalate},
        },
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response


def answer(daemon: Daemon, text: str) -> str:
    """The box's own answer (never escalated)."""
    return str(chat(daemon, text, "never").json()["choices"][0]["message"]["content"]).strip()


def test_golden_answers_train_an_adapter_that_changes_the_box(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    daemon = box.daemon

    # 1. the box escalates; every upstream answer is kept as a golden pair
    deadline = time.monotonic() + 30
    while not daemon.app.state.forwarding.monitor.is_up("teacher"):
        assert time.monotonic() < deadline, "the teacher never came up"
        time.sleep(0.05)
    for text in prompts():
        assert chat(daemon, text, "prefer").headers["X-Appliance-Route"] == "escalated"
    golden = tmp_path / "golden.jsonl"
    exported = cli(daemon.home, capsys, "distill", "export", "--out", str(golden))
    assert exported["written"] == len(prompts())
    assert EMAIL not in golden.read_text()  # the export holds placeholders, never the value

    # 2. train on the box's own bundle, and convert (the daemon's adapter check passes)
    bundle, run = box.bundle, tmp_path / "run"
    trained = cli(
        daemon.home, capsys, "distill", "train", str(golden), "--base", str(bundle),
        "--out", str(run), *TRAIN,
    )  # fmt: skip
    assert trained["data"]["screened_out"] == 1  # the teacher's invented address
    assert INVENTED not in (run / "train.jsonl").read_text()
    assert trained["losses"][-1] < trained["losses"][0] / 5
    assert trained["heldout_loss_after"] < trained["heldout_loss_before"]
    assert trained["base"]["bundle_digest"] is not None

    # running it again resumes from the last checkpoint: nothing left to do, same adapter
    adapter = (run / "adapter.gguf").read_bytes()
    again = cli(
        daemon.home, capsys, "distill", "train", str(golden), "--base", str(bundle),
        "--out", str(run), *TRAIN,
    )  # fmt: skip
    assert again["resumed_at_step"] == 12 and (run / "adapter.gguf").read_bytes() == adapter

    trained_pairs = read_pairs(run / "train.jsonl")
    trained_pair = next(p for p in trained_pairs if "<EMAIL_1>" not in p.chat[0]["content"])
    prompt, golden_answer = trained_pair.chat[0]["content"], trained_pair.answer
    before = answer(daemon, prompt)
    assert before != golden_answer

    # 3. eval: base vs base + adapter on the held-out pairs, through llama.cpp
    evaluation = cli(daemon.home, capsys, "distill", "eval", str(run))
    base, tuned = evaluation["base"], evaluation["adapter"]
    assert tuned["exact_match"] > base["exact_match"]
    assert tuned["token_f1"] > base["token_f1"]
    assert tuned["escalation_rate"] <= base["escalation_rate"]
    assert tuned["confidence"]["mean"] > base["confidence"]["mean"]
    assert evaluation["policy"]["name"] == "distill-e2e"  # the box's policy in force
    assert evaluation["pricing"]["upstream"] == "teacher"  # and its upstream's price

    # 4. pack and sign; 5. install on the box: the trained prompt gets the teacher's answer
    packed = cli(
        daemon.home, capsys, "distill", "pack", str(run), "--out", str(tmp_path / "a.bundle")
    )
    sign(Path(packed["path"]), box.key.private)
    daemon.install(Path(packed["path"]))
    after = answer(daemon, prompt)
    assert after == golden_answer, (before, after)

    # placeholders are carried through, and the screened-out invention was never learned
    mailed = next(p for p in trained_pairs if "<EMAIL_1>" in p.answer)
    assert answer(daemon, mailed.chat[0]["content"]) == mailed.answer
    invented_for = note(THINGS.index("boom arm")).replace(EMAIL, "<EMAIL_1>")
    assert INVENTED not in answer(daemon, invented_for)

    # 6. the report shows the escalation rate before and after the adapter
    time.sleep(0.5)  # the ledger commits a row within 0.2 s (rowwriter.FLUSH_S)
    report = cli(daemon.home, capsys, "report", "adapters")
    periods = next(m for m in report["models"] if m["model"] == MODEL)["periods"]
    assert [p["adapter"] for p in periods] == [None, f"{packed['name']} {packed['version']}"]
    assert periods[0]["escalation_rate"] > periods[1]["escalation_rate"] == 0.0
