"""A real embedding model end to end: all-MiniLM-L6-v2, from its pinned PyPI package, converted
to ONNX by its recipe, packed, signed, installed and served by the daemon over HTTP."""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import RECIPES_DIR
from appliance.cli import main
from appliance.errors import BundleError
from appliance.home import Home
from appliance.settings import Settings
from appliance.tokens import TokenStore
from tests.daemon import install
from tests.helpers import make_key

RECIPE = RECIPES_DIR / "all-minilm-l6-v2"
MODEL = "all-minilm-l6-v2"


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_recipe_build", RECIPE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _recipe()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="the [train] extra is not installed")
    return recipe.build(tmp_path_factory.mktemp("minilm") / "src")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def minilm_home(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with the bundle packed from the recipe's source, signed and installed."""
    work = tmp_path_factory.mktemp("minilm-home")
    key = make_key(work, "dev")
    bundle = work / f"{MODEL}-1.0.0.bundle"
    pack(source, bundle)
    sign(bundle, key.private)
    home = Home(work / "home").ensure()
    trust.add_key(home, key.public)
    install(home, bundle)
    return home


@pytest.fixture(scope="module")
def daemon(minilm_home: Home) -> Iterator[httpx.Client]:
    server = BackgroundServer(create_app(minilm_home, Settings()))
    token = TokenStore(minilm_home).create("edge-device", "infer")
    server.start()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield client
    server.stop()


def _embed(client: httpx.Client, texts: list[str]) -> np.ndarray:
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["model"] == MODEL
    return np.array([item["embedding"] for item in document["data"]])


def test_similar_sentences_score_higher_than_unrelated_ones(daemon: httpx.Client):
    pairs = [  # (query, a paraphrase of it, an unrelated sentence)
        (
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The ferry to the island leaves at noon.",
        ),
        (
            "The pump on line 3 is leaking oil.",
            "Oil is dripping from the third line's pump.",
            "Our quarterly marketing budget was approved.",
        ),
        (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ),
    ]
    vectors = _embed(daemon, [text for triple in pairs for text in triple])

    assert vectors.shape == (9, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    for i in range(0, 9, 3):
        query, similar, unrelated = vectors[i], vectors[i + 1], vectors[i + 2]
        assert query @ similar > 0.5
        assert query @ similar > query @ unrelated + 0.3


def test_a_text_gets_the_same_vector_alone_or_in_a_padded_batch(daemon: httpx.Client):
    texts = ["short", "a much longer sentence that makes the rest of the batch padding"]
    batch = _embed(daemon, texts)
    alone = np.vstack([_embed(daemon, [t]) for t in texts])

    assert np.allclose(batch, alone, atol=1e-5)


def test_appliance_run_embeds_as_the_daemon_does(
    minilm_home: Home,
    daemon: httpx.Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    text = "The pump on line 3 is leaking oil."
    monkeypatch.setenv("APPLIANCE_HOME", str(minilm_home.root))

    assert main(["run", MODEL, text, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"] == MODEL and answer["role"] == "embedding"
    assert np.allclose(answer["vector"], _embed(daemon, [text])[0], atol=1e-5)


def test_the_model_is_listed_as_an_embedding_model(daemon: httpx.Client):
    models = {m["id"]: m for m in daemon.get("/v1/models").json()["data"]}

    assert models[MODEL]["appliance"]["role"] == "embedding"


def test_chat_to_an_embedding_model_is_refused(daemon: httpx.Client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = daemon.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "wrong_model_role"


def test_source_folder_has_only_the_payload_and_the_manifest(source: Path):
    names = sorted(p.name for p in source.iterdir())
    assert names == ["bundle.toml", "model.onnx", "tokenizer.json"]
    assert not list(source.parent.glob(".src-*"))  # no staging folder left behind


# -- what the recipe refuses --------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _pins_for(path: Path) -> dict[str, Any]:
    """The recipe's pins, with the package pin moved to `path` (a stand-in zip)."""
    import hashlib

    pins: dict[str, Any] = recipe.load_pins()
    data = path.read_bytes()
    pins["package"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return pins


def test_a_package_zip_other_than_the_pinned_one_is_refused_and_nothing_written(tmp_path: Path):
    forged = tmp_path / "model.zip"
    forged.write_bytes(_zip({"config.json": b"{}"}))
    out = tmp_path / "src"

    with pytest.raises(BundleError, match="the recipe pins 83319212 bytes and 0872f5d7"):
        recipe.build(out, zip_path=forged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


def test_a_member_that_differs_from_the_upstream_is_refused(tmp_path: Path):
    pins = recipe.load_pins()
    members = {name: b"x" * size for name, (size, _) in pins["upstream"]["files"].items()}
    forged = tmp_path / "model.zip"
    forged.write_bytes(_zip(members))

    with pytest.raises(
        BundleError,
        match=r"model\.safetensors in model\.zip .* has SHA-256 .*"
        r"sentence-transformers/all-MiniLM-L6-v2 at 1110a243fdf4 has 53aa5117",
    ):
        recipe.read_members(forged, _pins_for(forged))


def test_a_missing_member_is_refused(tmp_path: Path):
    forged = tmp_path / "model.zip"
    forged.write_bytes(_zip({"README.md": b"hello"}))

    with pytest.raises(BundleError, match=r"has no model\.safetensors"):
        recipe.read_members(forged, _pins_for(forged))


def test_a_pipeline_other_than_mean_pooling_and_normalising_is_refused():
    modules = [{"type": t} for t in recipe.PIPELINE[:2]]  # no Normalize
    pooling = {"pooling_mode_mean_tokens": True}
    members = {
        "modules.json": json.dumps(modules).encode(),
        "1_Pooling/config.json": json.dumps(pooling).encode(),
    }

    with pytest.raises(BundleError, match="mean pooling and normalisation only"):
        recipe.check_pipeline(members)
    cls = [{"type": t} for t in recipe.PIPELINE]
    members = {
        "modules.json": json.dumps(cls).encode(),
        "1_Pooling/config.json": json.dumps({"pooling_mode_cls_token": True}).encode(),
    }
    with pytest.raises(BundleError, match="pooling_mode_cls_token"):
        recipe.check_pipeline(members)
