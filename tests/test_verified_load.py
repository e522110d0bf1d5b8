"""Verify on load: every load checks the files it reads against the signed manifest.

An installed bundle folder is read-only; each test first makes a file writable, as an
intruder or a mistaken operator would, then changes it. Start, swap, reload after an idle
unload and restart all load through a backend's ``load``: a changed file is refused there,
with a message naming the bundle and the file, never an absolute path.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.errors import ModelLoadError
from appliance.home import Home
from appliance.runtime.backend import Backend, GenerationRequest, ModelSpec
from appliance.runtime.manager import Job, ModelManager, spec_from_record
from appliance.runtime.onnx_backend import OnnxBackend
from appliance.runtime.signed_files import ModelFileChangedError
from appliance.settings import RuntimeSettings
from tests.daemon import MODEL as GEMMA
from tests.daemon import GemmaSource, gemma_source, install
from tests.helpers import Key, write_source
from tests.lora_adapter import write_lora
from tests.onnx_models import write_embedding_source

WAIT = 60  # seconds: the most a test waits for one generation


def _writable(path: Path) -> Path:
    """Undo the install's read-only modes (0555 folders, 0444 files) on the way to `path`."""
    for folder in [path.parent, *path.parent.parents]:
        if folder.name == "bundles":
            break
        folder.chmod(0o755)
    path.chmod(0o644)
    return path


def _flip(path: Path, offset: int | None = None) -> None:
    """Flip one bit in place, same size: only the SHA-256 tells (flip again to undo)."""
    offset = os.path.getsize(path) // 2 if offset is None else offset
    with _writable(path).open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def _refused(error: BaseException, home: Home, bundle: str, rel: str, problem: str) -> None:
    message = str(error)
    assert isinstance(error, ModelFileChangedError), message
    assert message.startswith(f"{bundle}: {rel} {problem}"), message
    assert str(home.root) not in message and "/proc/" not in message  # no absolute path
    assert "\n" not in message


# -- ONNX: the model and its tokenizer -----------------------------------------------------


@pytest.fixture
def embedder(manager: BundleManager, workdir: Path, key: Key) -> ModelSpec:
    src = write_embedding_source(workdir / "src-embed")
    bundle = workdir / "mini-embed.bundle"
    pack(src, bundle)
    sign(bundle, key.private)
    manager.install(bundle)
    (record,) = manager.list()
    return spec_from_record(manager.home, record)


def _load_onnx(spec: ModelSpec) -> OnnxBackend:
    backend = OnnxBackend(spec)
    backend.load()
    return backend


def test_the_spec_carries_every_signed_file(embedder: ModelSpec):
    assert embedder.files is not None
    assert set(embedder.files) == {
        embedder.payload / "model.onnx",
        embedder.payload / "tokenizer.json",
    }
    weights = embedder.files[embedder.weights]
    assert (weights.bundle, weights.rel) == ("mini-embed 1.0.0", "payload/model.onnx")
    assert weights.size == embedder.weights.stat().st_size
    _load_onnx(embedder).close()  # the installed files load


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_changed_onnx_file_is_refused(embedder: ModelSpec, trusted: Home, name: str):
    _flip(embedder.payload / name)
    with pytest.raises(ModelLoadError) as caught:
        _load_onnx(embedder)
    _refused(
        caught.value, trusted, "mini-embed 1.0.0", f"payload/{name}",
        "does not match its SHA-256 in the signed manifest",
    )  # fmt: skip


def test_a_truncated_missing_or_linked_file_is_refused(
    embedder: ModelSpec, trusted: Home, tmp_path: Path
):
    weights = _writable(embedder.weights)
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(ModelLoadError) as caught:
        _load_onnx(embedder)
    _refused(
        caught.value, trusted, "mini-embed 1.0.0", "payload/model.onnx",
        f"has {len(data) - 10} bytes, not the {len(data)} signed",
    )  # fmt: skip

    weights.unlink()
    with pytest.raises(ModelLoadError) as caught:
        _load_onnx(embedder)
    _refused(caught.value, trusted, "mini-embed 1.0.0", "payload/model.onnx", "is missing")

    (tmp_path / "model.onnx").write_bytes(data)  # the right bytes, but through a link
    weights.symlink_to(tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError) as caught:
        _load_onnx(embedder)
    _refused(caught.value, trusted, "mini-embed 1.0.0", "payload/model.onnx", "cannot be opened")


def test_a_file_the_manifest_does_not_list_is_refused(embedder: ModelSpec, trusted: Home):
    extra = _writable(embedder.payload / "tokenizer.json").with_name("other.json")
    extra.write_bytes((embedder.payload / "tokenizer.json").read_bytes())
    spec = dataclasses.replace(embedder, extra={**embedder.extra, "tokenizer": "other.json"})
    with pytest.raises(ModelLoadError) as caught:
        _load_onnx(spec)
    _refused(
        caught.value, trusted, "mini-embed 1.0.0", "payload/other.json",
        "is not in the signed manifest",
    )  # fmt: skip


def test_a_reload_after_an_idle_unload_and_a_restart_refuse_a_changed_onnx_model(
    embedder: ModelSpec, trusted: Home
):
    models = ModelManager(trusted, RuntimeSettings(keep_alive_s=60))
    try:
        models.refresh()
        assert models.worker("mini-embed") is not None
        _flip(embedder.weights)
        assert models.reap_idle(now=1e12) == ["mini-embed"]
        with pytest.raises(ModelLoadError) as caught:
            models.worker("mini-embed")
        _refused(
            caught.value, trusted, "mini-embed 1.0.0", "payload/model.onnx",
            "does not match its SHA-256",
        )  # fmt: skip
    finally:
        models.close()
    restarted = ModelManager(trusted, RuntimeSettings())
    try:
        restarted.refresh()
        assert restarted.loaded() == {} and not restarted.ready()
        assert restarted.errors["mini-embed"].startswith("mini-embed 1.0.0: payload/model.onnx")
    finally:
        restarted.close()


# -- GGUF: the weights and a LoRA adapter --------------------------------------------------


@dataclasses.dataclass
class GemmaHome:
    home: Home
    source: GemmaSource
    bundle: Path  # the signed demo bundle, to install into another home

    @property
    def weights(self) -> Path:
        return next(self.home.bundle_dir(GEMMA, "1.0.0").glob("payload/*.gguf"))

    @property
    def rel(self) -> str:
        return f"payload/{self.weights.name}"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> GemmaHome:
    """A home with the Gemma demo bundle active; each test leaves its files as it found them."""
    work = tmp_path_factory.mktemp("verified-gemma")
    source = gemma_source(work)
    home = Home(work / "home").ensure()
    trust.add_key(home, source.key.public)
    bundle = source.bundle(work)
    install(home, bundle)
    return GemmaHome(home, source, bundle)


@pytest.fixture
def flipped(gemma: GemmaHome) -> Iterator[GemmaHome]:
    """The active GGUF with one bit flipped in its tensor data, flipped back afterwards."""
    _flip(gemma.weights)
    yield gemma
    _flip(gemma.weights)


def _greedy(worker: Any, prompt: str = "The capital of France is") -> str:
    results: list[Any] = []
    done = threading.Event()

    def run(backend: Backend) -> None:
        generation = backend.generate(GenerationRequest(prompt, max_tokens=6, temperature=0))
        results.append("".join(e.text for e in generation))
        done.set()

    def fail(error: BaseException) -> None:
        results.append(error)
        done.set()

    worker.submit(Job(run=run, cancelled=lambda: False, fail=fail))
    assert done.wait(WAIT)
    assert isinstance(results[0], str), results[0]
    return results[0]


@pytest.mark.parametrize("slots", [1, 2])
def test_a_changed_active_gguf_is_refused_at_reload_and_restart(gemma: GemmaHome, slots: int):
    """The loaded model keeps the signed bytes it read; every later load refuses the file."""
    models = ModelManager(gemma.home, RuntimeSettings(slots=slots, keep_alive_s=60))
    try:
        models.refresh()
        worker = models.worker(GEMMA)
        before = _greedy(worker)
        _flip(gemma.weights)
        try:
            assert _greedy(worker) == before  # its own copy: not the changed file
            assert models.reap_idle(now=1e12) == [GEMMA]
            with pytest.raises(ModelLoadError) as caught:
                models.worker(GEMMA)
            _refused(
                caught.value, gemma.home, f"{GEMMA} 1.0.0", gemma.rel,
                "does not match its SHA-256",
            )  # fmt: skip
            restarted = ModelManager(gemma.home, RuntimeSettings(slots=slots))
            try:
                restarted.refresh()  # a start, or a restart after a crash
                assert restarted.loaded() == {} and not restarted.ready()
                assert restarted.errors[GEMMA].startswith(f"{GEMMA} 1.0.0: {gemma.rel} ")
            finally:
                restarted.close()
        finally:
            _flip(gemma.weights)
        assert _greedy(models.worker(GEMMA)) == before  # the signed bytes load again
    finally:
        models.close()


def test_llama_cpp_reads_the_hashed_descriptor_and_a_write_meanwhile_is_refused(
    gemma: GemmaHome, monkeypatch: pytest.MonkeyPatch
):
    """The window between the hash and llama.cpp's read: a write in it is caught afterwards."""
    real = llama_cpp.Llama
    seen: list[dict[str, Any]] = []

    def writing_first(**params: Any) -> Any:
        seen.append(params)
        _flip(gemma.weights)  # the file changes after it was hashed, before llama.cpp reads it
        return real(**params)

    monkeypatch.setattr(llama_cpp, "Llama", writing_first)
    models = ModelManager(gemma.home, RuntimeSettings(slots=1))
    try:
        models.refresh()
        assert not models.ready()
        assert models.errors[GEMMA].startswith(
            f"{GEMMA} 1.0.0: {gemma.rel} changed while it was being loaded"
        )
    finally:
        models.close()
        _flip(gemma.weights)
    (params,) = seen
    assert params["model_path"].startswith("/proc/self/fd/")  # the inode that was hashed
    assert params["use_mmap"] is False  # copied at load: a later write cannot reach it


def _adapter_bundle(gemma: GemmaHome, folder: Path) -> Path:
    src = write_source(
        folder / "src",
        name="gemma-tuned",
        kind="adapter",
        files={"adapter.gguf": write_lora(folder / "lora.gguf").read_bytes()},
        model={
            "format": "gguf",
            "role": "chat",
            "context_length": 2048,
            "file": "adapter.gguf",
            "base": GEMMA,
            "scale": 1.0,
        },
    )
    bundle = folder / "gemma-tuned-1.0.0.bundle"  # signed by the demo key, which home trusts
    pack(src, bundle)
    sign(bundle, gemma.source.key.private)
    return bundle


def test_a_changed_adapter_is_left_out_and_a_changed_base_is_not_blamed_on_it(
    gemma: GemmaHome, tmp_path: Path
):
    home = Home(tmp_path / "home").ensure()  # the adapter must not stay active for the others
    trust.add_key(home, gemma.source.key.public)
    install(home, gemma.bundle)
    install(home, _adapter_bundle(gemma, tmp_path))
    weights = next(home.bundle_dir(GEMMA, "1.0.0").glob("payload/*.gguf"))
    adapter = home.bundle_dir("gemma-tuned", "1.0.0") / "payload" / "adapter.gguf"
    models = ModelManager(home, RuntimeSettings(slots=1))
    try:
        models.refresh()
        assert models.worker(GEMMA).spec.adapter == adapter  # signed and intact: applied
    finally:
        models.close()

    _flip(adapter, offset=os.path.getsize(adapter) - 8)
    models = ModelManager(home, RuntimeSettings(slots=1))
    try:
        models.refresh()
        assert models.worker(GEMMA).spec.adapter is None  # the base serves without it
        (why,) = models.bad_adapters.values()
        assert why.startswith("gemma-tuned 1.0.0: payload/adapter.gguf does not match")
    finally:
        models.close()
    _flip(adapter, offset=os.path.getsize(adapter) - 8)

    _flip(weights)
    models = ModelManager(home, RuntimeSettings(slots=1))
    try:
        models.refresh()
        assert models.bad_adapters == {}  # the adapter is not what changed
        assert models.errors[GEMMA].startswith(f"{GEMMA} 1.0.0: {gemma.rel} does not match")
    finally:
        models.close()
