"""`appliance run MODEL PROMPT`: one answer from an installed bundle, no daemon, on real models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import CHAT_RECIPE, build_source
from appliance.cli import main
from appliance.home import Home
from tests.daemon import MODEL, gemma_home, install
from tests.helpers import make_key

CHAT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return gemma_home(tmp_path_factory.mktemp("run-gemma"))


def _run(
    home: Path, args: list[str], capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    mp.setenv("APPLIANCE_HOME", str(home))
    code = main(["run", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_completion_prints_the_answer_and_names_the_model(
    gemma: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, out, err = _run(
        gemma.root, [MODEL, "def fibonacci(n):", "--raw", "--max-tokens", "6"], capsys, monkeypatch
    )

    assert code == 0, err
    assert out.strip()
    assert f"{MODEL} 1.0.0 on cpu" in err or f"{MODEL} 1.0.0 on gpu" in err
    assert "tokens/s" in err
    # a continuation is printed as generated: its leading newline and indentation (the code's
    # first line) are kept; the same request alone gets the same greedy answer
    code, as_json, err = _run(
        gemma.root,
        [MODEL, "def fibonacci(n):", "--raw", "--max-tokens", "6", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert out == json.loads(as_json)["text"].rstrip() + "\n"


def test_json_gives_the_answer_and_its_counts(
    gemma: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, out, err = _run(
        gemma.root, [MODEL, "Hello", "--max-tokens", "3", "--json"], capsys, monkeypatch
    )

    assert code == 0, err
    answer = json.loads(out)
    assert answer["model"] == MODEL and answer["version"] == "1.0.0"
    assert answer["role"] == "chat"
    assert 1 <= answer["completion_tokens"] <= 3
    assert answer["finish_reason"] in ("stop", "length")
    # the chat template was applied: more prompt tokens than the bare word makes
    assert answer["prompt_tokens"] > 3


def test_an_unknown_model_is_refused_naming_the_active_ones(
    gemma: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, _, err = _run(gemma.root, ["no-such-model", "hi"], capsys, monkeypatch)

    assert code == 1
    assert f"no active model named 'no-such-model' (active: {MODEL})" in err


def test_an_empty_prompt_is_a_usage_error(
    gemma: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, _, err = _run(gemma.root, [MODEL, "  "], capsys, monkeypatch)

    assert code == 2
    assert "the prompt is empty" in err


def test_a_system_message_without_the_chat_template_is_refused(
    gemma: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, _, err = _run(gemma.root, [MODEL, "hi", "--raw", "--system", "x"], capsys, monkeypatch)

    assert code == 1
    assert "a system message needs a chat model and its template" in err


def test_a_home_with_nothing_installed_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    code, _, err = _run(tmp_path / "home", [MODEL, "hi"], capsys, monkeypatch)

    assert code == 1
    assert "no model is installed" in err
    assert not (tmp_path / "home").exists()


def test_the_instruction_tuned_model_answers_and_a_changed_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    key = make_key(tmp_path, "dev")
    bundle = tmp_path / f"{CHAT_MODEL}-1.0.0.bundle"
    pack(build_source(CHAT_RECIPE, tmp_path / "src"), bundle)
    sign(bundle, key.private)
    home = Home(tmp_path / "home").ensure()
    trust.add_key(home, key.public)
    install(home, bundle)
    question = [CHAT_MODEL, "What is the capital of France?", "--max-tokens", "16"]

    code, out, err = _run(
        home.root, [*question, "--system", "You are a helpful assistant."], capsys, monkeypatch
    )
    assert code == 0, err
    assert "Paris" in out

    weights = home.bundle_dir(CHAT_MODEL, "1.0.0") / "payload/SmolLM2-135M-Instruct.Q4_1.gguf"
    os.chmod(weights, 0o644)
    with weights.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    code, out, err = _run(home.root, question, capsys, monkeypatch)
    assert code == 1
    assert f"{CHAT_MODEL} 1.0.0: payload/SmolLM2-135M-Instruct.Q4_1.gguf" in err
    assert out == ""
