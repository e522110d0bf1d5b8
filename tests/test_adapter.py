"""Signed LoRA adapter bundles: llama.cpp applies them to their base; a bad one is left out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.bundles.pack import pack, sign
from appliance.errors import ModelLoadError
from appliance.runtime.adapters import check_adapter
from appliance.settings import Settings
from tests.daemon import MODEL, Daemon, GemmaSource, gemma_source, start_daemon
from tests.helpers import write_source
from tests.lora_adapter import write_lora

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> GemmaSource:
    return gemma_source(tmp_path_factory.mktemp("adapter-src"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, source: GemmaSource) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("adapter") / "home", source, Settings())
    yield d
    d.server.stop()


def _adapter_bundle(
    folder: Path, source: GemmaSource, version: str, broken: bool, base_digest: str | None = None
) -> Path:
    trained_on = {} if base_digest is None else {"base_digest": base_digest}
    src = write_source(
        folder / f"src-{version}",
        name="gemma-tuned",
        version=version,
        sequence=int(version.split(".")[0]),
        kind="adapter",
        files={
            "adapter.gguf": write_lora(folder / f"lora-{version}.gguf", broken=broken).read_bytes()
        },
        model={
            "format": "gguf",
            "role": "chat",
            "context_length": 2048,
            "file": "adapter.gguf",
            "base": MODEL,
            "scale": 1.0,
            **trained_on,
        },
    )
    bundle = folder / f"gemma-tuned-{version}.bundle"
    pack(src, bundle)
    sign(bundle, source.key.private)
    return bundle


def _complete(daemon: Daemon) -> str:
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        json={"model": MODEL, "prompt": PROMPT, "max_tokens": 10, "temperature": 0},
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def _adapter_digest(daemon: Daemon) -> str | None:
    models = httpx.get(
        f"{daemon.url}/v1/models", headers={"Authorization": f"Bearer {daemon.infer_token}"}
    ).json()["data"]
    return next(m for m in models if m["id"] == MODEL)["appliance"]["adapter_digest"]


def test_an_adapter_changes_the_answer_and_a_broken_one_is_left_out(
    daemon: Daemon, source: GemmaSource, tmp_path: Path
):
    base = _complete(daemon)
    assert _adapter_digest(daemon) is None

    daemon.install(_adapter_bundle(tmp_path, source, "1.0.0", broken=False))
    tuned = _complete(daemon)
    assert tuned != base  # llama.cpp applied the low-rank update
    assert _adapter_digest(daemon) is not None

    daemon.install(_adapter_bundle(tmp_path, source, "2.0.0", broken=True))
    manager = daemon.app.state.models
    assert len(manager.bad_adapters) == 1
    assert "adapter" in next(iter(manager.bad_adapters.values()))
    assert _complete(daemon) == base  # the base model still serves, without the bad adapter
    assert httpx.get(f"{daemon.url}/readyz").json()["ready"] is True
    manager.refresh()  # and it is not retried on every refresh
    assert _complete(daemon) == base


def test_an_adapter_trained_on_other_weights_of_its_base_name_is_left_out(
    daemon: Daemon, source: GemmaSource, tmp_path: Path
):
    """`distill pack` names the exact base bundle (model.base_digest): an adapter trained on
    another version of the same model must not be applied to the active one."""
    manager = daemon.app.state.models
    base_digest = manager.worker(MODEL).spec.digest
    daemon.install(_adapter_bundle(tmp_path, source, "3.0.0", broken=False, base_digest="0" * 64))
    assert _adapter_digest(daemon) is None  # the base serves alone
    (why,) = manager.mismatched_adapters.values()
    assert "gemma-tuned 3.0.0 was trained on" in why and base_digest[:12] in why
    base = _complete(daemon)

    good = _adapter_bundle(tmp_path, source, "4.0.0", broken=False, base_digest=base_digest)
    daemon.install(good)
    assert _adapter_digest(daemon) is not None  # trained on these very weights: applied
    assert manager.mismatched_adapters == {}
    assert _complete(daemon) != base


def _gguf(path: Path, kind: str, arch: str = "gemma3", tensor: str = "blk.0.attn_q.weight") -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(kind)
    writer.add_string("adapter.type", "lora")
    writer.add_tensor(f"{tensor}.lora_a", np.zeros((4, 640), dtype=np.float32))
    writer.add_tensor(f"{tensor}.lora_b", np.zeros((1024, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_adapter_files_are_checked_before_llama_cpp_sees_them(source: GemmaSource, tmp_path: Path):
    base = next(source.folder.glob("*.gguf"))
    check_adapter(base, _gguf(tmp_path / "ok.gguf", "adapter"))
    cases = {
        "general.type": _gguf(tmp_path / "model.gguf", "model"),
        "the base model is gemma3": _gguf(tmp_path / "llama.gguf", "adapter", arch="llama"),
        "has no tensor": _gguf(tmp_path / "ghost.gguf", "adapter", tensor="blk.99.attn_q.weight"),
        "do not fit": write_lora(tmp_path / "wide.gguf", broken=True),
    }
    for message, path in cases.items():
        with pytest.raises(ModelLoadError, match=message):
            check_adapter(base, path)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        check_adapter(base, junk)
