"""The llama.cpp backend on the real Gemma 3 270M demo model (the pinned GGUF, assembled).

One loaded model serves the module; generations stay short (at most 16 tokens).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import psutil
import pytest

from appliance.bundles.recipes import DEMO_RECIPE, build_source
from appliance.errors import ModelError, ModelLoadError
from appliance.governance.confidence import confidence
from appliance.runtime import llama_backend, templates
from appliance.runtime.backend import GenerationRequest, GenerationResult, ModelSpec, TokenEvent
from appliance.runtime.gpu import gpu_present
from appliance.runtime.llama_backend import LlamaBackend, default_threads

PROMPT = "The capital of France is"
# Long enough that two chat prompts share a long prefix: a partly reused KV cache would show.
PREAMBLE = "You are a helpful assistant on an air-gapped edge appliance. Answer briefly. "


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The demo bundle's model, as its bundle.toml describes it, on the assembled GGUF."""
    src = build_source(DEMO_RECIPE, tmp_path_factory.mktemp("gemma") / "src")
    manifest = tomllib.loads((src / "bundle.toml").read_text())
    model = manifest["model"]
    return ModelSpec(
        name=manifest["name"],
        version=manifest["version"],
        digest="0" * 64,
        root=src,
        format=model["format"],
        role=model["role"],
        context_length=model["context_length"],
        weights=src / model["file"],
        chat_template=model["chat_template"],
        extra={"architecture": model["architecture"]},
    )


@pytest.fixture(scope="module")
def backend(spec: ModelSpec) -> Iterator[LlamaBackend]:
    loaded = LlamaBackend(spec)
    loaded.load()
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(spec: ModelSpec) -> Iterator[Any]:
    """The same GGUF in plain llama-cpp-python, keeping every position's logits."""
    llm = llama_cpp.Llama(
        model_path=str(spec.weights),
        n_ctx=64,
        n_threads=default_threads(),
        n_threads_batch=default_threads(),
        logits_all=True,
        verbose=False,
    )
    yield llm
    llm.close()


def _generate(
    backend: LlamaBackend, prompt: str, **options: Any
) -> tuple[list[TokenEvent], GenerationResult]:
    generation = backend.generate(GenerationRequest(prompt=prompt, **options))
    events = list(generation)
    return events, generation.result


def _tokens(events: Sequence[TokenEvent]) -> list[TokenEvent]:
    """The events of generated tokens (without a closing event that only releases text)."""
    return [e for e in events if e.token_id >= 0]


def _log_softmax(row: Any) -> np.ndarray:
    logits = np.asarray(row, dtype=np.float64)
    shifted = logits - logits.max()
    return shifted - math.log(np.exp(shifted).sum())


def _reference_steps(reference: Any, prompt: list[int], generated: list[int]) -> list[np.ndarray]:
    """log_softmax before each generated token, evaluated the way generation evaluates.

    The prompt goes in as one batch and each generated token on its own, as in generation:
    llama.cpp's logits depend on how tokens are batched (evaluating prompt+completion as one
    batch moves this model's log-probabilities by up to ~0.15), so only the same batching
    makes a reference that the backend must match.
    """
    reference.reset()
    reference.eval(prompt)
    steps = []
    for token in generated:
        steps.append(_log_softmax(reference.scores[reference.n_tokens - 1]))
        reference.eval([token])
    return steps


# -- log-probabilities ---------------------------------------------------------------------


def test_greedy_logprobs_equal_the_models_log_softmax(backend: LlamaBackend, reference: Any):
    events, result = _generate(backend, PROMPT, max_tokens=12, temperature=0, top_logprobs=4)
    tokens = _tokens(events)
    assert len(tokens) == result.completion_tokens == 12

    steps = _reference_steps(reference, backend.tokenize(PROMPT), [e.token_id for e in tokens])
    for event, expected in zip(tokens, steps, strict=True):
        assert event.token_id == int(expected.argmax())  # greedy: the most likely token
        assert event.logprob == pytest.approx(expected[event.token_id], abs=1e-3)
        best = np.argsort(expected)[::-1][:4]
        assert [text for text, _ in event.top_logprobs] == [
            reference.detokenize([int(i)]).decode("utf-8", errors="replace") for i in best
        ]
        assert [lp for _, lp in event.top_logprobs] == pytest.approx(expected[best], abs=1e-3)


def test_sampled_logprobs_are_the_models_not_the_samplers(backend: LlamaBackend, reference: Any):
    """Temperature and top_p change which token is drawn, not the reported log-probability."""
    events, _ = _generate(
        backend, PROMPT, max_tokens=10, temperature=0.7, top_p=0.9, seed=11, top_logprobs=2
    )
    tokens = _tokens(events)
    steps = _reference_steps(reference, backend.tokenize(PROMPT), [e.token_id for e in tokens])
    for event, expected in zip(tokens, steps, strict=True):
        assert event.logprob == pytest.approx(expected[event.token_id], abs=1e-3)
        assert event.logprob <= event.top_logprobs[0][1] + 1e-9


def test_top_logprobs_are_sorted_with_the_greedy_choice_first(backend: LlamaBackend):
    events, _ = _generate(backend, PROMPT, max_tokens=6, temperature=0, top_logprobs=5)
    for event in _tokens(events):
        values = [lp for _, lp in event.top_logprobs]
        assert len(values) == 5
        assert values == sorted(values, reverse=True)
        assert event.top_logprobs[0] == (event.token, event.logprob)
        assert all(lp <= 0 for lp in values)
        assert sum(math.exp(lp) for lp in values) <= 1 + 1e-6


def test_without_top_logprobs_only_the_chosen_logprob_is_reported(backend: LlamaBackend):
    events, _ = _generate(backend, PROMPT, max_tokens=4, temperature=0, logprobs=True)
    tokens = _tokens(events)
    assert all(e.top_logprobs == () for e in tokens)
    assert all(e.logprob < 0 for e in tokens)


def test_logprobs_are_computed_only_when_asked_or_for_the_cascade(backend: LlamaBackend):
    """Each logprob costs a pass over 262k logits: none unless the device or cascade asks."""
    events, plain = _generate(backend, PROMPT, max_tokens=10, temperature=0)
    assert all(math.isnan(e.logprob) for e in _tokens(events))
    asked, _ = _generate(backend, PROMPT, max_tokens=10, temperature=0, logprobs=True)
    assert all(e.logprob < 0 for e in _tokens(asked))
    cascade, result = _generate(backend, PROMPT, max_tokens=10, temperature=0, confidence=True)
    assert [e.logprob for e in _tokens(cascade)] == [e.logprob for e in _tokens(asked)]
    assert all(e.top_logprobs == () for e in _tokens(cascade))
    assert result.text == plain.text


# -- the answer does not depend on what was asked before -----------------------------------


def _chat(backend: LlamaBackend, question: str) -> str:
    return backend.render_chat([{"role": "user", "content": PREAMBLE + question}])


def _trace(backend: LlamaBackend, prompt: str, **options: Any) -> tuple[Any, ...]:
    events, result = _generate(backend, prompt, max_tokens=8, logprobs=True, **options)
    return result.text, [(e.token_id, e.logprob) for e in _tokens(events)]


def _confidence(trace: tuple[Any, ...]) -> float | None:
    """What the router compares with the policy's threshold (the default measure)."""
    return confidence([logprob for _, logprob in trace[1]], "mean")


def test_an_answer_does_not_depend_on_earlier_requests(spec: ModelSpec):
    """Same request, same text and same confidence, bit for bit, whatever ran before.

    At ``slots = 1`` every request is evaluated from an empty KV memory, so a repeat, a
    request after one sharing its prefix and one after anything else take the same
    llama_decode calls. The prompts span eight consecutive lengths (each remainder mod 4
    twice): llama.cpp's CPU kernels take a batch's rows four at a time and the rest one by
    one, so whether re-evaluating a prompt's last token alone changes its numbers depends on
    the prompt's length and the CPU. The old exact-repeat path (llama-cpp-python's: the last
    token replayed alone) failed here for the 8-token prompt (a log-probability moved by
    0.028 on this box's AMD EPYC) and by up to 0.68 on another x86-64 CPU. Only this
    machine's own runs are compared: floats may differ between CPUs.
    """
    fresh = LlamaBackend(spec)
    fresh.load()
    try:
        prompts = [PROMPT + " really" * extra for extra in range(8)]
        assert sorted(len(fresh.tokenize(p)) % 4 for p in prompts) == [0, 0, 1, 1, 2, 2, 3, 3]
        question = _chat(fresh, "What is the capital of France?")
        before = [
            question,  # an exact repeat
            _chat(fresh, "What is the capital of Germany?"),  # same length, shared prefix
            _chat(fresh, "Name three colours."),
            "Once upon a time",
        ]
        for prompt in [*prompts, question]:
            alone = _trace(fresh, prompt, temperature=0)
            for other in [prompt, *before]:
                _trace(fresh, other, temperature=0)
                again = _trace(fresh, prompt, temperature=0)
                assert again == alone, f"{prompt!r} after {other!r}"
                assert _confidence(again) == _confidence(alone)

        sampled = _trace(fresh, question, temperature=1.0, seed=7)
        assert _trace(fresh, question, temperature=1.0, seed=7) == sampled
        _trace(fresh, _chat(fresh, "What is the capital of Germany?"), temperature=0)
        assert _trace(fresh, question, temperature=1.0, seed=7) == sampled
    finally:
        fresh.close()


def test_a_seeded_sample_differs_from_greedy_but_repeats(backend: LlamaBackend):
    seeded = _trace(backend, PROMPT, temperature=1.0, seed=7)
    _trace(backend, "Once upon a time", temperature=1.0, seed=3)
    assert _trace(backend, PROMPT, temperature=1.0, seed=7) == seeded
    assert _trace(backend, PROMPT, temperature=1.0, seed=8) != seeded


# -- stop strings and streaming ------------------------------------------------------------


@pytest.fixture(scope="module")
def unstopped(backend: LlamaBackend) -> str:
    """The greedy completion of PROMPT without stop strings (12 tokens)."""
    _, result = _generate(backend, PROMPT, max_tokens=12, temperature=0)
    return result.text


@pytest.mark.parametrize(
    "stop",
    [
        ["France"],  # inside one token (" France")
        ["of the"],  # spans two tokens (" of", " the")
        [" country of"],  # spans two tokens, starting at a token boundary
        ["France", "capital"],  # the earliest of several wins
    ],
)
def test_stop_strings_end_the_text_before_them(
    backend: LlamaBackend, unstopped: str, stop: list[str]
):
    cut = min(unstopped.find(s) for s in stop if s in unstopped)
    assert all(s in unstopped for s in stop)  # the case is real: the stop string would appear

    events, result = _generate(backend, PROMPT, max_tokens=12, temperature=0, stop=stop)

    assert result.finish_reason == "stop"
    assert result.text == unstopped[:cut]
    assert not any(s in result.text for s in stop)
    assert "".join(e.text for e in events) == result.text
    assert not any(s in e.text for e in events for s in stop)
    assert result.completion_tokens == len(_tokens(events)) < 12


@pytest.mark.parametrize("stop", [[], ["never appears"], ["xyzzy", "Paris!"]])
def test_streamed_text_is_the_whole_text_when_no_stop_string_appears(
    backend: LlamaBackend, unstopped: str, stop: list[str]
):
    events, result = _generate(backend, PROMPT, max_tokens=12, temperature=0, stop=stop)

    assert result.finish_reason == "length"
    assert result.text == unstopped
    assert "".join(e.text for e in events) == result.text  # held-back text is released


def test_streamed_text_matches_for_a_sampled_completion(backend: LlamaBackend):
    events, result = _generate(
        backend, "Once upon a time", max_tokens=16, temperature=1.0, seed=5, stop=["zq"]
    )
    assert "".join(e.text for e in events) == result.text
    assert result.text


# -- limits -------------------------------------------------------------------------------


def test_max_tokens_ends_with_length(backend: LlamaBackend):
    events, result = _generate(backend, PROMPT, max_tokens=5, temperature=0)

    assert result.finish_reason == "length"
    assert result.completion_tokens == 5 == len(_tokens(events))
    assert result.prompt_tokens == backend.count_tokens(PROMPT) == len(backend.tokenize(PROMPT))
    assert result.seconds > 0


@pytest.mark.parametrize("extra", [0, 100])
def test_a_prompt_that_fills_the_context_is_refused(
    backend: LlamaBackend, spec: ModelSpec, extra: int
):
    prompt = " hello" * (spec.context_length - 1 + extra)  # BOS + one token per " hello"
    assert backend.count_tokens(prompt) == spec.context_length + extra

    with pytest.raises(ModelError, match=f"holds {spec.context_length}"):
        list(backend.generate(GenerationRequest(prompt=prompt, max_tokens=4)))

    _, result = _generate(backend, PROMPT, max_tokens=2, temperature=0)  # still usable
    assert result.completion_tokens == 2


# -- cancellation -------------------------------------------------------------------------


def test_cancel_after_the_first_token_ends_generation(backend: LlamaBackend):
    request = GenerationRequest(prompt=PROMPT, max_tokens=16, temperature=0)
    generation = backend.generate(request)
    events = []
    for event in generation:
        events.append(event)
        request.cancel.set()

    result = generation.result
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens == len(_tokens(events)) == 1
    assert "".join(e.text for e in events) == result.text


def test_a_request_cancelled_before_it_starts_makes_no_tokens(backend: LlamaBackend):
    request = GenerationRequest(prompt=PROMPT, max_tokens=16, temperature=0)
    request.cancel.set()
    generation = backend.generate(request)

    assert list(generation) == []
    assert generation.result.finish_reason == "cancelled"
    assert generation.result.completion_tokens == 0


# -- chat templates -----------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hello  "},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Bye"},
]
GEMMA_TURNS = (
    "<start_of_turn>user\nBe brief.<end_of_turn>\n"
    "<start_of_turn>user\nHello<end_of_turn>\n"
    "<start_of_turn>model\nHi.<end_of_turn>\n"
    "<start_of_turn>user\nBye<end_of_turn>\n"
    "<start_of_turn>model\n"
)


def test_the_demo_bundles_template_renders_gemma_turns(backend: LlamaBackend, reference: Any):
    rendered = backend.render_chat(CONVERSATION)

    assert rendered == GEMMA_TURNS
    assert "<bos>" not in rendered
    tokens = backend.tokenize(rendered)
    assert tokens.count(reference.token_bos()) == 1 and tokens[0] == reference.token_bos()
    # the turn markers are Gemma's special tokens, not their spelling in plain text
    assert len(backend.tokenize("<start_of_turn>")) == 2


def test_the_gemma_default_matches_the_demo_bundles_template(spec: ModelSpec):
    assert spec.chat_template is not None
    assert templates.render(templates.GEMMA, CONVERSATION) == GEMMA_TURNS
    assert templates.render(spec.chat_template, CONVERSATION) == GEMMA_TURNS


def test_template_precedence_manifest_then_gguf_then_architecture():
    both = {"tokenizer.chat_template": "GGUF", "general.architecture": "gemma3"}
    assert templates.choose_template("MANIFEST", both) == "MANIFEST"
    assert templates.choose_template(None, both) == "GGUF"
    assert templates.choose_template("", both) == "GGUF"
    assert templates.choose_template(None, {"general.architecture": "gemma3"}) == templates.GEMMA
    assert templates.choose_template(None, {"general.architecture": "qwen2"}) == templates.CHATML
    assert templates.choose_template(None, {"general.architecture": "llama"}) == templates.LLAMA3
    assert templates.choose_template(None, {"general.architecture": "mamba"}) == templates.CHATML
    assert templates.choose_template(None, {}) == templates.CHATML


@pytest.mark.parametrize(
    "template",
    [
        "{% for message in messages %}{{ message['content'] }}",  # unclosed block
        "{{ raise_exception('system role not supported') }}",  # undefined function
        "{{ messages.__class__.__mro__ }}",  # the sandbox refuses
        "{{ messages[0]['content'] + 1 }}",  # str + int at render time
        "{{ messages | length // 0 }}",  # division by zero at render time
    ],
)
def test_a_broken_template_raises_model_error(template: str):
    with pytest.raises(ModelError, match="chat template"):
        templates.render(template, [{"role": "user", "content": "hi"}])


# -- loading, device, threads, roles ------------------------------------------------------


def test_loads_on_the_cpu_with_one_thread_per_physical_core(backend: LlamaBackend):
    offload = gpu_present() and bool(llama_cpp.llama_supports_gpu_offload())
    assert backend.device == ("gpu" if offload else "cpu")
    expected = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    assert backend.n_threads == expected
    context = backend._llm.context_params  # what llama.cpp was really given
    assert (context.n_threads, context.n_threads_batch) == (expected, expected)


def test_default_threads_falls_back_when_physical_cores_are_unknown(
    monkeypatch: pytest.MonkeyPatch,
):
    counts = {False: None, True: 6}
    monkeypatch.setattr(llama_backend.psutil, "cpu_count", lambda logical=True: counts[logical])
    assert default_threads() == 6
    counts[True] = None
    assert default_threads() == 1


def test_embed_on_a_chat_model_raises_model_error(backend: LlamaBackend):
    with pytest.raises(ModelError, match="no embeddings"):
        backend.embed(["hello"])


def test_generate_on_an_embedding_role_raises_model_error(spec: ModelSpec):
    embedder = LlamaBackend(dataclasses.replace(spec, role="embedding"))
    with pytest.raises(ModelError, match="does not generate"):
        embedder.generate(GenerationRequest(prompt="x"))


def test_an_unloaded_model_raises_model_error(spec: ModelSpec):
    with pytest.raises(ModelError, match="not loaded"):
        LlamaBackend(spec).count_tokens("hello")


def test_only_gguf_is_accepted(spec: ModelSpec):
    with pytest.raises(ModelLoadError, match="GGUF"):
        LlamaBackend(dataclasses.replace(spec, format="onnx"))


def test_unreadable_weights_raise_model_load_error(spec: ModelSpec, tmp_path: Path):
    garbage = tmp_path / "model.gguf"
    garbage.write_bytes(b"this is not a GGUF file\n" * 8)
    broken = LlamaBackend(dataclasses.replace(spec, weights=garbage))
    with pytest.raises(ModelLoadError, match=r"cannot load gemma3-270m 1\.0\.0 from model\.gguf"):
        broken.load()
    assert broken.device == "cpu"
