"""The ONNX Runtime backend on real (tiny) ONNX bundles, packed, signed and installed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.errors import ModelError, ModelLoadError
from appliance.runtime.backend import GenerationRequest, ModelSpec
from appliance.runtime.gpu import gpu_present
from appliance.runtime.manager import spec_from_record
from appliance.runtime.onnx_backend import CPU, CUDA, OnnxBackend, choose_providers
from tests.helpers import Key
from tests.onnx_models import (
    CONTEXT_LENGTH,
    DIM,
    LABELS,
    Variant,
    write_classifier_source,
    write_embedding_source,
)


def _install(manager: BundleManager, workdir: Path, key: Key, src: Path) -> ModelSpec:
    """Pack, sign and install `src`; the ModelSpec of the installed manifest."""
    bundle = workdir / f"{src.name}.bundle"
    pack(src, bundle)
    sign(bundle, key.private)
    outcome = manager.install(bundle)
    (record,) = [b for b in manager.list() if b.digest == outcome.digest]
    return spec_from_record(manager.home, record)


def _loaded(spec: ModelSpec) -> Iterator[OnnxBackend]:
    backend = OnnxBackend(spec)
    backend.load()
    yield backend
    backend.close()


@pytest.fixture(params=["tokens", "pooled", "ids-only"])
def embedder(
    request: pytest.FixtureRequest, manager: BundleManager, workdir: Path, key: Key
) -> Iterator[OnnxBackend]:
    """An installed embedding model: token-level output (mean-pooled here) or pooled."""
    variant: Variant = request.param
    src = write_embedding_source(workdir / f"src-{variant}", variant=variant)
    yield from _loaded(_install(manager, workdir, key, src))


def _vec(backend: OnnxBackend, text: str) -> np.ndarray:
    vectors, _ = backend.embed([text])
    return np.array(vectors[0])


def test_embeddings_are_unit_vectors_of_the_model_dimension(embedder: OnnxBackend):
    vectors, tokens = embedder.embed(["the quick brown fox", "hello world"])

    assert [len(v) for v in vectors] == [DIM, DIM]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert tokens == 4 + 2


def test_same_text_same_vector_and_different_texts_differ(embedder: OnnxBackend):
    first = _vec(embedder, "signed model bundle")

    assert np.array_equal(first, _vec(embedder, "signed model bundle"))
    assert not np.allclose(first, _vec(embedder, "lazy dog sat on the mat"), atol=1e-3)


def test_batch_equals_single_and_padding_changes_nothing(embedder: OnnxBackend):
    texts = ["box", "the quick brown fox jumps over the lazy dog", "air gap policy", ""]

    batch, tokens = embedder.embed(texts)

    for text, vector in zip(texts[:3], batch, strict=False):
        assert np.allclose(vector, _vec(embedder, text), atol=1e-6)
    assert tokens == 1 + 9 + 3
    assert batch[3] == [0.0] * DIM  # no tokens at all: the zero vector, not NaN


def test_unknown_words_and_punctuation_are_tokens(embedder: OnnxBackend):
    assert embedder.count_tokens("hello, zebra world!") == 5
    assert embedder.count_tokens("") == 0
    assert embedder.embed([]) == ([], 0)


def test_inputs_are_truncated_to_the_context_length(embedder: OnnxBackend):
    long_text = " ".join(["fox"] * (CONTEXT_LENGTH + 30))
    exact_text = " ".join(["fox"] * CONTEXT_LENGTH)

    vectors, tokens = embedder.embed([long_text])

    assert embedder.count_tokens(long_text) == CONTEXT_LENGTH + 30
    assert tokens == CONTEXT_LENGTH
    assert np.allclose(vectors[0], _vec(embedder, exact_text), atol=1e-6)


def test_runs_where_onnxruntime_and_the_box_allow_and_refuses_to_generate(
    embedder: OnnxBackend, monkeypatch: pytest.MonkeyPatch
):
    """CUDA is asked for exactly when a GPU is present and this onnxruntime offers it; the
    session uses what it could of that (CUDA may still fall back to the CPU)."""
    asked: list[list[str]] = []
    session = ort.InferenceSession

    def recording(model: Any, **options: Any) -> Any:
        asked.append(list(options["providers"]))
        return session(model, **options)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    backend = OnnxBackend(embedder.spec)
    backend.load()
    try:
        offered = ort.get_available_providers()
        expected = [CUDA, CPU] if gpu_present() and CUDA in offered else [CPU]
        assert asked == [expected]
        used = backend.providers
        assert used and used[-1] == CPU and set(used) <= set(expected)
        assert backend.device == ("gpu" if CUDA in used else "cpu")
        with pytest.raises(ModelError, match="embedding model; use /v1/embeddings"):
            backend.generate(GenerationRequest(prompt="hi"))
    finally:
        backend.close()


def test_closed_backend_refuses_work(embedder: OnnxBackend):
    embedder.close()

    assert embedder.device == "cpu"
    with pytest.raises(ModelError, match="not loaded"):
        embedder.embed(["hello"])


def _writable_copy(spec: ModelSpec, tmp_path: Path) -> ModelSpec:
    root = tmp_path / "copy"
    shutil.copytree(spec.root / "payload", root / "payload")
    for path in (root / "payload").iterdir():
        path.chmod(0o644)
    return ModelSpec(
        name=spec.name,
        version=spec.version,
        digest=spec.digest,
        root=root,
        format=spec.format,
        role=spec.role,
        context_length=spec.context_length,
        weights=root / "payload" / spec.weights.name,
        extra=spec.extra,
    )


def test_corrupt_weights_give_a_clear_load_error(
    manager: BundleManager, workdir: Path, key: Key, tmp_path: Path
):
    spec = _install(manager, workdir, key, write_embedding_source(workdir / "src"))
    copy = _writable_copy(spec, tmp_path)
    copy.weights.write_bytes(b"this is not an onnx protobuf" * 100)

    with pytest.raises(ModelLoadError) as caught:
        OnnxBackend(copy).load()

    message = str(caught.value)
    assert message.startswith("mini-embed 1.0.0: cannot load ONNX model model.onnx: ")
    assert "\n" not in message


def test_missing_tokenizer_gives_a_clear_load_error(
    manager: BundleManager, workdir: Path, key: Key, tmp_path: Path
):
    spec = _install(manager, workdir, key, write_embedding_source(workdir / "src"))
    copy = _writable_copy(spec, tmp_path)
    (copy.payload / "tokenizer.json").unlink()

    with pytest.raises(ModelLoadError, match=r"^mini-embed 1.0.0: cannot load tokenizer"):
        OnnxBackend(copy).load()


def test_classifier_gives_label_probabilities(manager: BundleManager, workdir: Path, key: Key):
    spec = _install(manager, workdir, key, write_classifier_source(workdir / "src"))

    for backend in _loaded(spec):
        results = backend.classify(["the lazy dog", "remote query"])

        assert [tuple(r) for r in results] == [LABELS, LABELS]
        assert all(abs(sum(r.values()) - 1.0) < 1e-9 for r in results)
        assert results[0] != results[1]
        with pytest.raises(ModelError, match="not an embedding model"):
            backend.embed(["hello"])


def test_providers_ask_for_cuda_only_with_a_gpu():
    onnx_gpu = ["TensorrtExecutionProvider", CUDA, CPU]

    assert choose_providers(onnx_gpu, gpu_present=True) == [CUDA, CPU]
    assert choose_providers(onnx_gpu, gpu_present=False) == [CPU]
    assert choose_providers([CPU], gpu_present=True) == [CPU]
    assert choose_providers([], gpu_present=False) == [CPU]
