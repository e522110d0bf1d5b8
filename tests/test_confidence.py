"""The confidence measures on fixed log-probability sequences and token texts, the policy
settings that pick them, and the daemon computing them alike for a stream and a document."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from appliance.governance.confidence import (
    MEASURES,
    answer_confidence,
    clause_length,
    confidence,
    first_clause,
)
from appliance.policy.schema import CascadeSettings
from appliance.runtime.backend import TokenEvent
from appliance.settings import Settings
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon

NAN = float("nan")
ROOT = Path(__file__).resolve().parents[1]


def lp(*probabilities: float) -> list[float]:
    return [math.log(p) for p in probabilities]


# -- whole-answer measures ------------------------------------------------------------------


def test_mean_min_and_tail_read_every_token():
    logprobs = lp(0.9, 0.5, 0.8, 0.2)
    assert confidence(logprobs, "mean") == pytest.approx((0.9 * 0.5 * 0.8 * 0.2) ** 0.25)
    assert confidence(logprobs, "min") == pytest.approx(0.2)
    assert confidence(logprobs, "tail", 50) == pytest.approx(0.5)  # an actual token's value
    assert confidence(logprobs, "tail", 10) == pytest.approx(0.2)


def test_tokens_without_a_log_probability_are_left_out():
    assert confidence([math.log(0.5), NAN, math.log(0.8)], "min") == pytest.approx(0.5)
    assert confidence([NAN, NAN], "mean") is None
    for measure in MEASURES:
        assert confidence([], measure, texts=[]) is None


def test_an_unknown_measure_is_an_error():
    with pytest.raises(ValueError, match="unknown confidence measure 'median'"):
        confidence(lp(0.5), "median")  # type: ignore[arg-type]


# -- first k tokens -------------------------------------------------------------------------


def test_first_reads_only_the_first_k_tokens():
    logprobs = lp(0.7, 0.9, 0.3, 0.05)
    assert confidence(logprobs, "first") == pytest.approx(0.7)  # k = 1: the first token
    assert confidence(logprobs, "first", first_tokens=2) == pytest.approx(0.7)
    assert confidence(logprobs, "first", first_tokens=3) == pytest.approx(0.3)
    assert confidence(logprobs, "first", first_tokens=10) == pytest.approx(0.05)  # all four


def test_first_skips_a_missing_log_probability_inside_its_span_only():
    assert confidence([NAN, math.log(0.6), math.log(0.1)], "first", first_tokens=2) == (
        pytest.approx(0.6)
    )
    assert confidence([NAN, math.log(0.6)], "first", first_tokens=1) is None


def test_first_needs_at_least_one_token():
    with pytest.raises(ValueError, match="first_tokens must be at least 1"):
        confidence(lp(0.5), "first", first_tokens=0)


# -- the first clause -----------------------------------------------------------------------


def test_clause_stops_at_the_first_mark_after_the_answer():
    # " Paris" then the line break and the next question the model invents
    texts = [" Paris", "\n", "\n", "Q", ":", " What"]
    logprobs = lp(0.8, 0.6, 0.3, 0.1, 0.9, 0.05)
    assert clause_length(texts) == 1
    assert confidence(logprobs, "clause", texts=texts) == pytest.approx(0.8)
    assert confidence(logprobs, "min") == pytest.approx(0.05)  # the ramble decides `min`


def test_a_token_that_starts_the_clause_and_holds_the_mark_belongs_to_it():
    texts = [" New", " Delhi", ",", " India"]
    assert clause_length(texts) == 2
    assert clause_length([" New", " Delhi,", " India"]) == 2
    logprobs = lp(0.9, 0.4, 0.2, 0.7)
    assert confidence(logprobs, "clause", texts=texts) == pytest.approx(0.4)


def test_leading_space_and_line_breaks_belong_to_the_clause():
    texts = ["\n", " ", "Lima", ".", " It"]
    assert clause_length(texts) == 3
    logprobs = lp(0.2, 0.9, 0.95, 0.99, 0.01)
    assert confidence(logprobs, "clause", texts=texts) == pytest.approx(0.2)


def test_a_point_or_comma_between_digits_does_not_end_the_clause():
    assert clause_length(["3", ".", "14", " is", " pi", ".", " Q"]) == 5
    assert clause_length(["1", ",", "000", "\n"]) == 3
    assert clause_length(["42", ".", "\n"]) == 1  # a point after a number and then nothing


def test_an_answer_without_a_mark_is_one_clause():
    texts = [" forty", "-", "two"]
    assert clause_length(texts) == 3
    assert confidence(lp(0.9, 0.8, 0.7), "clause", texts=texts) == pytest.approx(0.7)
    assert clause_length(["...", " "]) == 2  # no letter or digit at all


def test_full_width_marks_end_a_clause():
    assert clause_length(["東京", "。", "日本"]) == 1
    assert first_clause("Tokyo, Japan") == "Tokyo"
    assert first_clause("  3.5 metres. Then") == "  3.5 metres"


def test_clause_needs_one_text_per_log_probability():
    with pytest.raises(ValueError, match="needs each token's text"):
        confidence(lp(0.5, 0.5), "clause")
    with pytest.raises(ValueError, match="needs each token's text"):
        confidence(lp(0.5, 0.5), "clause", texts=["a"])


def test_clause_with_only_unscored_tokens_has_no_confidence():
    assert confidence([NAN, math.log(0.1)], "clause", texts=["Rome", "\n"]) is None


# -- from a backend's events, under a policy's settings ---------------------------------------


def events(pairs: list[tuple[str, float]]) -> list[TokenEvent]:
    out = [TokenEvent(i, text, math.log(p), (), text) for i, (text, p) in enumerate(pairs)]
    return [*out, TokenEvent(-1, "held back", 0.0)]  # a closing event carries no token


def test_answer_confidence_uses_the_policy_measure_and_skips_closing_events():
    answer = events([(" Oslo", 0.9), ("\n", 0.5), ("Q", 0.2)])
    settings = CascadeSettings
    assert answer_confidence(answer, settings(confidence_measure="clause")) == pytest.approx(0.9)
    assert answer_confidence(answer, settings(confidence_measure="min")) == pytest.approx(0.2)
    assert answer_confidence(
        answer, settings(confidence_measure="first", first_tokens=2)
    ) == pytest.approx(0.5)
    assert answer_confidence(answer, settings(confidence_measure="mean")) == pytest.approx(
        (0.9 * 0.5 * 0.2) ** (1 / 3)
    )
    assert answer_confidence([TokenEvent(-1, "x", 0.0)], settings()) is None


def test_the_policy_accepts_every_measure_and_checks_k():
    for measure in ("mean", "min", "tail", "first", "clause"):
        assert CascadeSettings(confidence_measure=measure).confidence_measure == measure
    with pytest.raises(ValidationError, match="first_tokens"):
        CascadeSettings(first_tokens=0)
    with pytest.raises(ValidationError, match="confidence_measure"):
        CascadeSettings(confidence_measure="median")  # type: ignore[arg-type]


def test_the_benchmark_question_set_is_what_its_generator_writes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_cascade_qa.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (ROOT / "scripts/data/cascade_qa.jsonl").open()]
    assert len({r["id"] for r in rows}) == len(rows) >= 300
    assert len({r["category"] for r in rows}) >= 6
    assert {r["style"] for r in rows} == {"qa", "statement"}
    for r in rows:
        assert r["answer"] and r["answer"] not in r["aliases"]
        if r["style"] == "qa":
            assert r["prompt"].endswith(f"Q: {r['question']}\nA:")
        else:
            assert "Q:" not in r["prompt"] and r["prompt"] == r["prompt"].strip()


# -- the daemon: the same confidence streamed or not ----------------------------------------

POLICY = """schema = 1
name = "clause"
default_class = "public"
[classes.public]
egress = "allowed"
[cascade]
confidence_measure = "clause"
confidence_threshold = 0.0
"""
PROMPT = "Q: What is the capital of Peru?\nA: Lima\n\nQ: What is the capital of Norway?\nA:"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("confidence")
    (work / "policy.toml").write_text(POLICY)
    settings = Settings(policy_file=str(work / "policy.toml"))
    d = start_daemon(work / "home", gemma_source(work), settings)
    yield d
    d.server.stop()


def _completion(daemon: Daemon, stream: bool) -> tuple[list[str], list[float], float]:
    body = {
        "model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
        "logprobs": 1, "stream": stream,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {daemon.infer_token}"}
    response = httpx.post(f"{daemon.url}/v1/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    if not stream:
        document = response.json()
        logprobs = document["choices"][0]["logprobs"]
        return logprobs["tokens"], logprobs["token_logprobs"], document["appliance"]["confidence"]
    texts: list[str] = []
    values: list[float] = []
    conf = None
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[len("data: ") :])
        piece = chunk["choices"][0]["logprobs"] if chunk.get("choices") else None
        if piece:
            texts += piece["tokens"]
            values += piece["token_logprobs"]
        if "appliance" in chunk:
            conf = chunk["appliance"]["confidence"]
    assert conf is not None
    return texts, values, conf


@pytest.mark.parametrize("stream", [False, True], ids=["document", "stream"])
def test_the_daemon_measures_the_first_clause_of_what_it_generated(daemon: Daemon, stream):
    texts, values, reported = _completion(daemon, stream)
    assert len(texts) == len(values) == 6
    assert 1 <= clause_length(texts) < 6  # the answer, then the model's next question
    expected = confidence(values, "clause", texts=texts)
    assert expected is not None
    assert reported == pytest.approx(expected, rel=1e-3)  # the envelope keeps 4 significant digits


# -- the benchmark's routing figures ----------------------------------------------------------


@functools.cache
def _bench_cascade() -> Any:  # scripts/ is no package: load the benchmark as a module
    sys.path.insert(0, str(ROOT / "scripts"))  # for its `_bench`
    spec = importlib.util.spec_from_file_location(
        "bench_cascade", ROOT / "scripts/bench_cascade.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_routing_figures_of_a_perfect_a_reversed_and_a_blind_signal():
    bench = _bench_cascade()
    right = [True, True, False, False]
    upstream = [True] * 4
    perfect = bench.route_curve([0.9, 0.8, 0.2, 0.1], right, upstream)
    assert bench.auc([0.9, 0.8, 0.2, 0.1], right) == 1.0
    assert perfect.weak == 0.5 and perfect.strong == 1.0
    # the two wrong answers go first: the whole gap is recovered at half sent
    assert perfect.share_for(perfect.pgr(), 1.0)[0] == pytest.approx(0.5)
    assert perfect.apgr() == pytest.approx(0.75)  # 1/2 * 1/2 ramp, then 1 for the other half
    reversed_ = bench.route_curve([0.1, 0.2, 0.8, 0.9], right, upstream)
    assert bench.auc([0.1, 0.2, 0.8, 0.9], right) == 0.0
    assert reversed_.apgr() == pytest.approx(0.25)
    blind = bench.route_curve([0.5] * 4, right, upstream)  # one tie: sent in a random order
    assert bench.auc([0.5] * 4, right) == 0.5
    assert blind.apgr() == pytest.approx(0.5)
    assert blind.share_for(blind.pgr(), 0.8)[0] == pytest.approx(0.8)
    none_first = bench.route_curve([None, 0.9, 0.8, 0.7], [False, True, True, True], [True] * 4)
    assert none_first.thresholds[1] == pytest.approx(0.7)  # escalating below 0.7 sends the one


def test_an_answer_is_right_when_its_first_clause_is_the_key():
    bench = _bench_cascade()
    item = bench.Item("x", "capital", "qa", "Q?", "prompt", "Bogotá", ("Bogota",))
    assert bench.is_right(" bogota\n\nQ: What is", item)
    assert bench.is_right(' "Bogotá". It is', item)
    assert bench.is_right(" The Bogota, Colombia", item)
    assert not bench.is_right(" Bogotá is the capital", item)
    assert not bench.is_right(" \n\n", item)
