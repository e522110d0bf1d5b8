"""appliance plan: the memory model against llama.cpp's own figures on the real demo GGUFs,
the guard, the catalog, the speed model against published llama.cpp measurements, the CLI."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.bundles.recipes import CHAT_RECIPE, DEMO_RECIPE, build_source
from appliance.cli.common import app
from appliance.errors import ConfigError, ModelError, ModelLoadError
from appliance.plan.catalog import Hardware, find, load_catalog
from appliance.plan.facts import ModelFacts, facts_of
from appliance.plan.gguf_header import read_gguf, tensor_nbytes
from appliance.plan.llama_probe import ProbeResult, probe
from appliance.plan.memory import (
    Deployment,
    compute_bytes,
    contexts_for,
    estimate,
    kv_cache_bytes,
    output_bytes,
)
from appliance.plan.planner import Planner
from appliance.plan.speed import estimate_speed, workload
from appliance.runtime.backend import ModelSpec
from appliance.runtime.manager import check_memory

MIB = 2**20
_PROBES: dict[tuple[Path, Deployment], ProbeResult] = {}
ROUNDING = 5243  # llama.cpp prints MiB with two decimals: +-0.005 MiB per figure


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = build_source(DEMO_RECIPE, tmp_path_factory.mktemp("gemma"))
    return next(src.glob("*.gguf"))


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = build_source(CHAT_RECIPE, tmp_path_factory.mktemp("smol"))
    return next(src.glob("*.gguf"))


@pytest.fixture(params=["gemma", "smol"])
def demo(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(request.param)
    return path


def _llama(path: Path, deployment: Deployment) -> ProbeResult:
    """llama.cpp's figures for the daemon's contexts of `deployment` (each asked once)."""
    if (path, deployment) not in _PROBES:
        _PROBES[path, deployment] = probe(path, contexts_for(deployment))
    return _PROBES[path, deployment]


# -- the model's own metadata -----------------------------------------------------------


def test_predicted_weights_are_the_files_tensor_bytes(demo: Path):
    facts = facts_of(demo)
    header = read_gguf(demo)
    # the tensor data fills the file from the aligned data offset to its end
    assert facts.weights_bytes == header.file_size - header.data_offset
    found = _llama(demo, DEPLOYMENTS[0])
    assert facts.weights_bytes == found.weights_bytes  # llama.cpp's llama_model_size
    assert facts.n_params == found.n_params


def test_gemma3_sliding_window_layers_are_the_ones_llama_cpp_uses(gemma: Path):
    facts = facts_of(gemma)
    assert facts.architecture == "gemma3" and facts.sliding_window == 512
    found = _llama(gemma, DEPLOYMENTS[0])
    assert sorted(facts.swa_layers) == found.swa_layers
    assert len(facts.swa_layers) == 15 and facts.n_layer == 18


DEPLOYMENTS = [
    Deployment(2048, 4),  # the daemon's defaults: batched, full-size sliding-window cache
    Deployment(2048, 1),  # one slot: llama_cpp.Llama's own context
    Deployment(1000, 3, "q8_0"),  # a context llama.cpp pads, a quantized cache
    Deployment(8192, 1),  # no flash attention: the attention stage outgrows the logits
]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=str)
def test_predicted_kv_cache_is_what_llama_cpp_allocates(demo: Path, deployment: Deployment):
    facts = facts_of(demo)
    shapes = contexts_for(deployment)
    found = _llama(demo, deployment)
    caches = iter(found.kv_caches)
    for shape in shapes:
        groups = [
            sorted(facts.swa_layers),
            [i for i in range(facts.n_layer) if i not in facts.swa_layers],
        ]
        reported = (
            [next(caches) for group in groups if group] if facts.swa_layers else [next(caches)]
        )
        predicted = kv_cache_bytes(facts, shape)
        assert abs(predicted - sum(c.bytes for c in reported)) <= ROUNDING * len(reported)
        assert sum(c.layers for c in reported) == facts.n_layer
        assert all(c.seqs == shape.n_seq_max for c in reported)
    assert next(caches, None) is None
    memory = estimate(facts, deployment)
    assert abs(memory.kv_cache_bytes - found.kv_bytes) <= ROUNDING * len(found.kv_caches)


def test_a_window_cache_that_is_not_full_size_keeps_window_plus_batch_cells(gemma: Path):
    facts = facts_of(gemma)
    shape = dataclasses.replace(contexts_for(Deployment(4096, 1))[0], swa_full=False)
    found = probe(gemma, [shape])
    cells = {c.layers: c.cells for c in found.kv_caches}
    assert cells == {3: 4096, 15: 1024}  # 512 + 512 (n_ubatch), padded to 256
    assert abs(kv_cache_bytes(facts, shape) - found.kv_bytes) <= 2 * ROUNDING


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=str)
def test_buffers_are_within_three_percent_of_llama_cpp(demo: Path, deployment: Deployment):
    facts = facts_of(demo)
    shapes = contexts_for(deployment)
    found = _llama(demo, deployment)
    compute = sum(compute_bytes(facts, s) for s in shapes)
    output = sum(output_bytes(facts, s) for s in shapes)
    assert abs(output - sum(found.output_bytes.values())) <= ROUNDING * len(shapes)
    assert compute == pytest.approx(sum(found.compute_bytes.values()), rel=0.03)


def test_the_old_fixed_64_kib_per_token_was_far_off_for_gemma(gemma: Path):
    facts = facts_of(gemma)
    kv = estimate(facts, Deployment(4096, 1)).kv_cache_bytes
    assert kv == 72 * MIB  # MEASURED.md: 12 MiB global + 60 MiB window layers
    assert kv < 4096 * 64 * 1024 / 3  # what a fixed 64 KiB per token said: 256 MiB


def test_offload_puts_the_last_layers_and_their_kv_on_the_gpu(smol: Path):
    facts = facts_of(smol)
    deployment = Deployment(2048, 1)
    none, some, all_ = (estimate(facts, deployment, n) for n in (0, 10, facts.n_layer + 1))
    assert none.gpu_bytes == 0 and none.gpu_layers == 0
    per_layer_kv = kv_cache_bytes(facts, contexts_for(deployment)[0], range(1))
    assert some.gpu_bytes >= sum(facts.layer_bytes[-10:]) + 10 * per_layer_kv
    # all layers: the tied output matrix is copied to the GPU, the embedding stays behind
    assert all_.weights_bytes == facts.weights_bytes + facts.output_bytes
    assert all_.host_bytes < some.host_bytes < none.host_bytes


# -- hostile or broken files ------------------------------------------------------------


def test_a_truncated_or_hostile_gguf_is_refused_with_its_name(tmp_path: Path, smol: Path):
    head = smol.read_bytes()[:4096]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(head)
    with pytest.raises(ModelError, match=r"cut.gguf is not a readable GGUF"):
        facts_of(cut)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + bytes(64))
    with pytest.raises(ModelError, match="more entries than the file holds"):
        facts_of(huge)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelError, match="neither a GGUF nor an ONNX"):
        facts_of(other)


def test_a_sliding_window_pattern_the_gguf_states_is_used(tmp_path: Path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(4)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_head_count_kv([1, 2, 1, 2])
    writer.add_key_length(4)
    writer.add_value_length(4)
    writer.add_context_length(128)
    writer.add_uint32("gemma3.attention.sliding_window", 16)
    writer.add_array("gemma3.attention.sliding_window_pattern", [True, False, True, False])
    for i in range(4):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    facts = facts_of(path)
    assert facts.swa_layers == frozenset({0, 2})
    assert facts.n_head_kv == (1, 2, 1, 2)
    assert facts.layer_bytes == (256,) * 4
    assert facts.weights_bytes == 4 * 256 + 10 * 8 * 2
    shape = dataclasses.replace(contexts_for(Deployment(512, 1))[0], swa_full=False, n_ubatch=16)
    per_cell = [2 * tensor_nbytes("F16", 4 * h) for h in facts.n_head_kv]
    window = 256  # 16 + 16, padded to 256
    assert kv_cache_bytes(facts, shape) == 512 * (per_cell[1] + per_cell[3]) + window * (
        per_cell[0] + per_cell[2]
    )


# -- the guard ----------------------------------------------------------------------------


def _spec(path: Path, context: int = 2048) -> ModelSpec:
    return ModelSpec(
        name="gemma3-270m",
        version="1.0.0",
        digest="",
        root=path.parent,
        format="gguf",
        role="chat",
        context_length=context,
        weights=path,
    )


def test_the_guard_uses_the_estimate_and_refuses_what_does_not_fit(gemma: Path):
    spec = _spec(gemma)
    facts = facts_of(gemma)
    need = estimate(facts, Deployment(2048, 4)).total_bytes
    check_memory(spec, available=need, slots=4)  # just fits
    with pytest.raises(ModelLoadError) as caught:
        check_memory(spec, available=need - 1, slots=4)
    message = str(caught.value)
    assert f"gemma3-270m 1.0.0 needs about {need // MIB} MiB of memory" in message
    assert f"{(need - 1) // MIB} MiB are available" in message
    assert "KV cache 148 MiB for 4 slot(s) x 2048 tokens" in message
    assert "lower [runtime] slots or context_length" in message
    # two slots of a shorter context fit where four did not
    check_memory(_spec(gemma, 1024), available=need - 1, slots=2)
    # one slot is llama_cpp.Llama's own context: 512-token batches, so larger buffers
    one = estimate(facts, Deployment(512, 1))
    assert one.buffers_bytes > estimate(facts, Deployment(512, 2)).buffers_bytes


# -- the catalog and the speed model -------------------------------------------------------


def _llama2_7b_q4_0() -> ModelFacts:
    """Llama-2-7B Q4_0 as its GGUF describes it (32 layers, 4096 wide, 11008 FFN, 32k vocab,
    output matrix Q6_K as llama.cpp quantizes it): the model of the published figures."""
    n_layer, d, ff, vocab = 32, 4096, 11008, 32000
    layer = tensor_nbytes("Q4_0", 4 * d * d + 3 * d * ff) + tensor_nbytes("F32", 2 * d)
    embedding, output = tensor_nbytes("Q4_0", vocab * d), tensor_nbytes("Q6_K", vocab * d)
    params = n_layer * (4 * d * d + 3 * d * ff + 2 * d) + 2 * vocab * d + d
    return ModelFacts(
        Path("llama-2-7b.Q4_0.gguf"),
        "gguf",
        "llama",
        "Llama 2 7B",
        n_layer * layer + embedding + output + 4 * d,
        params,
        n_layer,
        d,
        ff,
        vocab,
        4096,
        (32,) * n_layer,
        (32,) * n_layer,
        128,
        128,
        layer_bytes=(layer,) * n_layer,
        embedding_bytes=embedding,
        output_bytes=output,
    )


def test_decode_estimates_match_published_llama_cpp_figures():
    facts = _llama2_7b_q4_0()
    assert facts.weights_bytes / 2**30 == pytest.approx(3.56, abs=0.01)  # llama.cpp's 3.56 GiB
    work = workload(facts, 128)
    references = [h for h in load_catalog() if h.reference_tg128]
    assert {h.name for h in references} >= {
        "RTX-4090-24GB",
        "L40-48GB",
        "RTX-3090-24GB",
        "A30-24GB",
        "Jetson-AGX-Orin-64GB",
    }
    for hw in references:
        estimated = estimate_speed(work, hw).decode_tokens_per_s
        assert estimated == pytest.approx(hw.reference_tg128, rel=0.1), hw.name


def test_every_catalog_entry_has_a_dated_reference_price():
    for hw in load_catalog():
        assert hw.usd_per_hour > 0 and hw.price_source and hw.price_date, hw.name
        assert hw.bandwidth_gbs > 0 and hw.tdp_watts > 0


def test_operators_add_and_replace_entries_and_a_bad_one_is_named(tmp_path: Path):
    own = tmp_path / "hardware.toml"
    own.write_text(
        '[[hardware]]\nname = "Field-Box"\nkind = "soc"\nmemory_gib = 0.5\nbandwidth_gbs = 50\n'
        "fp16_tflops = 2\ntdp_watts = 15\ndecode_efficiency = 0.5\nus_per_layer = 20\n"
        'usd_per_hour = 0.01\nprice_source = "our purchase order"\nprice_date = "2026-01"\n'
        '[[hardware]]\nname = "L4-24GB"\nkind = "gpu"\nmemory_gib = 20\nbandwidth_gbs = 300\n'
        "fp16_tflops = 121\ntdp_watts = 72\ndecode_efficiency = 0.7\nus_per_layer = 10\n"
    )
    catalog = load_catalog(own)
    assert find(catalog, "field").memory_gib == 0.5
    assert find(catalog, "L4-24GB").memory_gib == 20  # replaced
    with pytest.raises(ConfigError, match="ambiguous"):
        find(catalog, "L4")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hardware]]\nname = "X"\nkind = "tpu"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: hardware X: kind"):
        load_catalog(bad)


def test_what_does_not_fit_gets_a_context_slots_or_quantization_that_does(gemma: Path):
    facts = facts_of(gemma)
    box = Hardware(
        name="small",
        kind="soc",
        memory_gib=0.9,
        bandwidth_gbs=50,
        fp16_tflops=2,
        tdp_watts=15,
        decode_efficiency=0.5,
        us_per_layer=20,
        usd_per_hour=0.01,
    )
    cpu = load_catalog()[-1]
    planner = Planner(facts, Deployment(8192, 4), cpu)
    target = planner.plan(box)
    assert not target.fits and target.total_bytes > box.memory_bytes
    advice = target.would_fit
    assert advice["context"] and advice["context"] < 8192
    smaller = Planner(facts, Deployment(advice["context"], 4), cpu).plan(box)
    assert smaller.fits
    assert (
        advice["slots"] is None
        or Planner(facts, Deployment(8192, advice["slots"]), cpu).plan(box).fits
    )
    assert {q["type"] for q in target.quantizations} >= {"Q8_0", "Q4_0"}
    assert target.decode_tokens_per_s > 0 and target.usd_per_mtok > 0


# -- the command --------------------------------------------------------------------------

REQUIRED = {
    "hardware",
    "weights_bytes",
    "kv_cache_bytes",
    "buffers_bytes",
    "total_bytes",
    "fits",
    "gpu_layers",
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "usd_per_mtok",
}


def test_plan_json_for_a_bare_gguf_and_a_bad_target(
    smol: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "plan",
            str(smol),
            "--json",
            "--target",
            "RTX-4090-24GB",
            "--slots",
            "2",
            "--context",
            "1024",
        ],
    )
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    first, catalog_target = document["targets"][0], document["targets"][-1]
    assert first["hardware"].startswith("this box") and first["memory_source"] == "llama.cpp"
    assert catalog_target["hardware"] == "RTX-4090-24GB" and catalog_target["fits"]
    for target in document["targets"]:
        assert set(target) >= REQUIRED
    assert document["deployment"] == {"context": 1024, "slots": 2, "cache_type": "f16"}
    # this box: llama.cpp's figures and the closed form agree on the KV cache
    closed = document["closed_form_on_this_box"]
    assert abs(closed["kv_cache_bytes"] - first["kv_cache_bytes"]) <= 2 * ROUNDING
    refused = runner.invoke(app, ["plan", str(smol), "--target", "TPU-v9"])
    assert refused.exit_code == 1 and "not in the catalog" in str(refused.exception)


def test_plan_measure_reports_predicted_and_measured(smol: Path, tmp_path: Path):
    from appliance.home import Home
    from appliance.plan.run import PlanRequest, make_plan

    home = Home(tmp_path / "home")
    request = PlanRequest(model=str(smol), context=512, slots=2, targets=("L4-24GB",), measure=True)
    document = make_plan(request, home)
    measured = document["measured"]
    assert measured["measured_decode_tokens_per_s"] > 0
    assert measured["measured_prefill_tokens_per_s"] > 0
    assert measured["measured_rss_bytes"] > measured["measured_model_rss_bytes"] > 0
    assert {
        "measured_decode_tokens_per_s",
        "measured_prefill_tokens_per_s",
        "measured_rss_bytes",
    } <= set(document["targets"][0])
    assert measured["decode_ratio"] > 0 and measured["memory_ratio"] > 0
