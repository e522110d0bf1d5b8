"""The model manager on a real home: bundles installed, activated and rolled back through
BundleManager, served by tiny ONNX embedding models (and the Gemma demo model where a GGUF is
what is being tested)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import llama_cpp
import pytest

from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.errors import ModelLoadError, ModelNotFoundError
from appliance.home import Home
from appliance.plan.guard import need
from appliance.runtime import manager as manager_module
from appliance.runtime.backend import Backend, GenerationRequest, ModelSpec
from appliance.runtime.batched import BatchedLlamaBackend
from appliance.runtime.gpu import gpu_present
from appliance.runtime.llama_backend import LlamaBackend
from appliance.runtime.manager import (
    KV_BYTES_PER_TOKEN,
    MEMORY_OVERHEAD,
    Job,
    ModelManager,
    ModelWorker,
    QueueFullError,
    capped,
    check_memory,
    spec_from_record,
)
from appliance.runtime.onnx_backend import OnnxBackend
from appliance.settings import RuntimeSettings
from tests.daemon import MODEL as GEMMA
from tests.daemon import gemma_home as installed_gemma
from tests.helpers import Key, make_bundle
from tests.onnx_models import DIM, write_classifier_source, write_embedding_source

MiB = 2**20
WAIT = 10  # seconds: the most any test waits for a worker thread


def _install_model(
    bundles: BundleManager,
    workdir: Path,
    key: Key,
    name: str = "mini-embed",
    version: str = "1.0.0",
    sequence: int = 1,
    *,
    classifier: bool = False,
    broken: bool = False,
    activate: bool = True,
) -> str:
    """Pack, sign and install a tiny ONNX model bundle; returns its digest."""
    folder = workdir / f"src-{name}-{version}"
    if classifier:
        src = write_classifier_source(folder, name=name)
    else:
        src = write_embedding_source(folder, name=name)
    toml = src / "bundle.toml"
    text = toml.read_text()
    toml.write_text(
        text.replace('version = "1.0.0"', f'version = "{version}"').replace(
            "sequence = 1\n", f"sequence = {sequence}\n"
        )
    )
    if broken:
        (src / "model.onnx").write_bytes(b"these bytes are not an ONNX model\n")
    bundle = workdir / f"{name}-{version}.bundle"
    pack(src, bundle)
    sign(bundle, key.private)
    outcome = bundles.install(bundle, activate=activate)
    assert outcome.version == version
    return outcome.digest


@pytest.fixture
def models(trusted: Home) -> Iterator[Callable[..., ModelManager]]:
    """Make ModelManagers over the test home (closed at the end of the test)."""
    made: list[ModelManager] = []

    def make(
        backend_factory: Callable[[ModelSpec], Backend] | None = None, **settings: Any
    ) -> ModelManager:
        options = {} if backend_factory is None else {"backend_factory": backend_factory}
        m = ModelManager(trusted, RuntimeSettings(**settings), **options)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@dataclass
class Probe:
    """A job that records where it ran; with `hold`, it blocks the worker until released."""

    hold: threading.Event | None = None
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    ran_on: list[str] = field(default_factory=list)  # the version of the backend it ran on
    vectors: list[list[float]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    cancel: bool = False

    def job(self) -> Job:
        return Job(run=self._run, cancelled=lambda: self.cancel, fail=self._fail)

    def _run(self, backend: Backend) -> None:
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT), "the test never released the job"
        self.ran_on.append(backend.spec.version)
        vectors, _ = backend.embed(["the quick brown fox"])  # the model is still loaded
        self.vectors.extend(vectors)
        self.done.set()

    def _fail(self, error: BaseException) -> None:
        self.failures.append(error)
        self.done.set()


def _threads(spec: ModelSpec) -> list[threading.Thread]:
    """Live worker threads of this model version."""
    name = f"model-{spec.name}-{spec.version}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def _blocked(worker: ModelWorker) -> tuple[Probe, threading.Event]:
    """Submit a job that keeps `worker` busy until the returned event is set."""
    release = threading.Event()
    probe = Probe(hold=release)
    worker.submit(probe.job())
    assert probe.started.wait(WAIT)
    return probe, release


# -- what is served -----------------------------------------------------------------------


def test_refresh_loads_active_models_and_ignores_other_kinds(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key, "mini-embed")
    _install_model(manager, workdir, key, "mini-classify", classifier=True)
    _install_model(manager, workdir, key, "not-active", activate=False)
    manager.install(make_bundle(workdir, [key], name="a-policy", kind="policy"))
    m = models()

    m.refresh()

    assert [s.name for s in m.specs()] == ["mini-classify", "mini-embed"]
    assert sorted(m.loaded()) == ["mini-classify", "mini-embed"]
    assert m.ready() and m.errors == {}
    embed = m.worker("mini-embed")
    assert isinstance(embed.backend, OnnxBackend)
    assert (embed.spec.role, m.worker("mini-classify").spec.role) == ("embedding", "classifier")
    for unknown in ("a-policy", "not-active", "no-such-model"):
        with pytest.raises(ModelNotFoundError, match=unknown):
            m.worker(unknown)

    probe = Probe()
    embed.submit(probe.job())
    assert probe.done.wait(WAIT)
    assert probe.ran_on == ["1.0.0"] and len(probe.vectors[0]) == DIM


def test_without_preload_a_model_loads_on_its_first_request(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key)
    m = models(preload=False)

    m.refresh()

    assert [s.name for s in m.specs()] == ["mini-embed"]
    assert m.loaded() == {} and m.ready()
    worker = m.worker("mini-embed")
    assert m.loaded() == {"mini-embed": worker}
    assert m.worker("mini-embed") is worker


def test_spec_from_record_reads_the_installed_manifest(
    manager: BundleManager, workdir: Path, key: Key
):
    digest = _install_model(manager, workdir, key, classifier=True, name="mini-classify")
    (record,) = manager.list()
    spec = spec_from_record(manager.home, record)

    assert (spec.name, spec.version, spec.digest) == ("mini-classify", "1.0.0", digest)
    assert (spec.format, spec.role, spec.context_length) == ("onnx", "classifier", 64)
    assert spec.root == manager.home.bundle_dir("mini-classify", "1.0.0")
    assert spec.weights == spec.payload / "model.onnx" and spec.weights.is_file()
    assert spec.chat_template is None
    assert spec.extra == {
        "tokenizer": "tokenizer.json",
        "labels": ["allow", "review", "refuse"],
    }
    assert capped(spec, 16) == spec  # [runtime] context_length caps only GGUF generation


def test_runtime_context_length_caps_a_gguf_generator_only(tmp_path: Path):
    def spec(fmt: str, role: str, n: int) -> ModelSpec:
        return ModelSpec("m", "1", "d", tmp_path, fmt, role, n, tmp_path / "w")

    assert capped(spec("gguf", "chat", 2048), 512).context_length == 512
    assert capped(spec("gguf", "completion", 2048), 512).context_length == 512
    assert capped(spec("gguf", "chat", 256), 512).context_length == 256  # a cap, never more
    assert capped(spec("gguf", "chat", 2048), 0).context_length == 2048  # 0 = the manifest's
    assert capped(spec("gguf", "embedding", 2048), 512).context_length == 2048
    assert capped(spec("onnx", "embedding", 512), 64).context_length == 512


# -- activation swap and rollback ---------------------------------------------------------


def test_a_new_version_takes_over_and_the_old_one_finishes_its_queue(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key, version="1.0.0", sequence=1)
    m = models()
    m.refresh()
    old = m.worker("mini-embed")
    running, release = _blocked(old)
    queued = Probe()
    old.submit(queued.job())  # waits behind the running job

    try:
        v2 = _install_model(manager, workdir, key, version="2.0.0", sequence=2)
        m.refresh()

        new = m.worker("mini-embed")
        assert new is not old
        assert (new.spec.version, new.spec.digest) == ("2.0.0", v2)
        assert m.loaded() == {"mini-embed": new}
        with pytest.raises(QueueFullError, match="being replaced"):
            old.submit(Probe().job())
        served = Probe()
        new.submit(served.job())  # the new version serves while the old one is still busy
        assert served.done.wait(WAIT) and served.ran_on == ["2.0.0"]
        assert not queued.done.is_set() and _threads(old.spec)
    finally:
        release.set()

    assert running.done.wait(WAIT) and queued.done.wait(WAIT)
    assert running.ran_on == queued.ran_on == ["1.0.0"]  # on the old model, still loaded
    assert running.failures == queued.failures == []
    old.join(WAIT)
    assert _threads(old.spec) == []
    assert old.backend.providers == []  # the old model's memory is freed
    assert _threads(new.spec)


def test_a_swap_does_not_wait_for_the_old_models_full_queue(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    """refresh runs on the daemon's housekeeping thread: it must not stall behind old work."""
    _install_model(manager, workdir, key, version="1.0.0", sequence=1)
    m = models(queue_size=1)
    m.refresh()
    old = m.worker("mini-embed")
    running, release = _blocked(old)
    queued = Probe()
    old.submit(queued.job())  # the old queue is now full
    _install_model(manager, workdir, key, version="2.0.0", sequence=2)

    refresher = threading.Thread(target=m.refresh, daemon=True)
    try:
        refresher.start()
        refresher.join(timeout=2)
        assert not refresher.is_alive(), "refresh blocked until the old model's queue drained"
        assert m.worker("mini-embed").spec.version == "2.0.0"
    finally:
        release.set()
        refresher.join(WAIT)
    assert running.done.wait(WAIT) and queued.done.wait(WAIT)
    assert running.ran_on == queued.ran_on == ["1.0.0"]


def test_installing_without_activation_changes_nothing_served(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key, version="1.0.0", sequence=1)
    m = models()
    m.refresh()
    before = m.worker("mini-embed")

    _install_model(manager, workdir, key, version="2.0.0", sequence=2, activate=False)
    m.refresh()

    assert m.worker("mini-embed") is before
    assert before.spec.version == "1.0.0"


def test_rollback_serves_the_previous_version_again(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    v1 = _install_model(manager, workdir, key, version="1.0.0", sequence=1)
    _install_model(manager, workdir, key, version="2.0.0", sequence=2)
    m = models()
    m.refresh()
    current = m.worker("mini-embed")
    assert current.spec.version == "2.0.0"

    manager.rollback("mini-embed")
    m.refresh()

    restored = m.worker("mini-embed")
    assert (restored.spec.version, restored.spec.digest) == ("1.0.0", v1)
    assert [s.version for s in m.specs()] == ["1.0.0"]
    current.join(WAIT)
    assert _threads(current.spec) == []
    probe = Probe()
    restored.submit(probe.job())
    assert probe.done.wait(WAIT) and probe.ran_on == ["1.0.0"]


# -- keep-alive ---------------------------------------------------------------------------


def test_an_idle_model_is_unloaded_and_loaded_again_on_demand(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key)
    m = models(keep_alive_s=60)
    m.refresh()
    first = m.worker("mini-embed")

    assert m.reap_idle(now=time.monotonic()) == []  # used just now
    assert m.reap_idle(now=time.monotonic() + 3600) == ["mini-embed"]

    assert m.loaded() == {}
    assert m.ready()  # unloaded for being idle is not an error
    first.join(WAIT)
    assert _threads(first.spec) == [] and first.backend.providers == []
    again = m.worker("mini-embed")
    assert again is not first and m.loaded() == {"mini-embed": again}
    probe = Probe()
    again.submit(probe.job())
    assert probe.done.wait(WAIT) and probe.failures == []


def test_a_busy_model_with_a_queue_is_not_reaped(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key)
    m = models(keep_alive_s=1)
    m.refresh()
    worker = m.worker("mini-embed")
    running, release = _blocked(worker)
    queued = Probe()
    worker.submit(queued.job())
    try:
        assert worker.depth == 2
        assert m.reap_idle(now=time.monotonic() + 3600) == []
        assert m.loaded() == {"mini-embed": worker}
    finally:
        release.set()
    assert running.done.wait(WAIT) and queued.done.wait(WAIT)
    assert queued.failures == []


# -- memory and load failures -------------------------------------------------------------


def test_check_memory_names_what_is_needed_and_available(
    manager: BundleManager, workdir: Path, key: Key
):
    _install_model(manager, workdir, key)
    spec = spec_from_record(manager.home, manager.list()[0])
    needed = int(spec.weights.stat().st_size * MEMORY_OVERHEAD)
    needed += spec.context_length * KV_BYTES_PER_TOKEN

    check_memory(spec, available=needed)  # just fits
    with pytest.raises(ModelLoadError) as caught:
        check_memory(spec, available=3 * MiB)
    message = str(caught.value)
    assert "mini-embed 1.0.0" in message
    assert f"needs about {needed // MiB} MiB" in message
    assert "3 MiB are available" in message
    with pytest.raises(ModelLoadError):
        check_memory(spec, available=needed - 1)
    check_memory(spec, available=needed, slots=4)  # an embedding model is not batched
    # a batched GGUF chat model keeps a context's worth of KV memory per slot
    chat = dataclasses.replace(spec, format="gguf", role="chat")
    check_memory(chat, available=needed, slots=1)
    with pytest.raises(ModelLoadError):
        check_memory(chat, available=needed, slots=4)
    check_memory(chat, available=needed + 3 * spec.context_length * KV_BYTES_PER_TOKEN, slots=4)


def test_a_model_that_cannot_load_is_an_error_while_others_serve(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key, "mini-embed")
    _install_model(manager, workdir, key, "broken-embed", broken=True)
    m = models()

    m.refresh()

    assert sorted(m.loaded()) == ["mini-embed"]
    assert list(m.errors) == ["broken-embed"]
    assert "cannot load ONNX model model.onnx" in m.errors["broken-embed"]
    assert not m.ready()
    assert [s.name for s in m.specs()] == ["broken-embed", "mini-embed"]
    with pytest.raises(ModelLoadError, match="broken-embed"):
        m.worker("broken-embed")

    _install_model(manager, workdir, key, "broken-embed", version="1.0.1", sequence=2)
    m.refresh()  # a good version replaces the broken one

    assert m.errors == {} and m.ready()
    assert m.worker("broken-embed").spec.version == "1.0.1"


def test_a_model_that_does_not_fit_in_memory_is_not_loaded(
    manager: BundleManager,
    workdir: Path,
    key: Key,
    models: Callable[..., ModelManager],
    monkeypatch: pytest.MonkeyPatch,
):
    _install_model(manager, workdir, key)
    loads: list[str] = []

    def counting(spec: ModelSpec) -> Backend:
        loads.append(spec.version)
        return OnnxBackend(spec)

    m = models(backend_factory=counting)
    free = SimpleNamespace(available=2 * MiB)
    monkeypatch.setattr(manager_module.psutil, "virtual_memory", lambda: free)

    m.refresh()

    assert loads == []  # refused before any byte of the model was read
    assert m.loaded() == {} and not m.ready()
    assert re.search(r"needs about \d+ MiB of memory; 2 MiB are available", m.errors["mini-embed"])


# -- the queue ----------------------------------------------------------------------------


def test_a_full_queue_refuses_the_next_job(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key)
    m = models(queue_size=1)
    m.refresh()
    worker = m.worker("mini-embed")
    running, release = _blocked(worker)
    queued = Probe()
    try:
        worker.submit(queued.job())
        with pytest.raises(QueueFullError, match=r"queue for mini-embed is full \(1 requests\)"):
            worker.submit(Probe().job())
        assert worker.depth == 2
    finally:
        release.set()

    assert running.done.wait(WAIT) and queued.done.wait(WAIT)
    assert queued.ran_on == ["1.0.0"]
    after = Probe()
    worker.submit(after.job())  # room again
    assert after.done.wait(WAIT)


def test_cancelled_jobs_are_skipped_and_failures_reported(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key)
    m = models()
    m.refresh()
    worker = m.worker("mini-embed")
    running, release = _blocked(worker)
    skipped = Probe(cancel=True)
    worker.submit(skipped.job())
    failures: list[BaseException] = []

    def explode(backend: Backend) -> None:
        backend.generate(GenerationRequest(prompt="x"))  # an embedding model does not

    worker.submit(Job(run=explode, cancelled=lambda: False, fail=failures.append))
    after = Probe()
    worker.submit(after.job())
    release.set()

    assert after.done.wait(WAIT)  # the worker goes on after a failed job
    assert running.done.is_set() and after.failures == []
    assert not skipped.started.is_set() and skipped.failures == []
    assert len(failures) == 1 and "embedding" in str(failures[0])


# -- close --------------------------------------------------------------------------------


def test_close_finishes_queued_jobs_and_joins_every_worker(
    manager: BundleManager, workdir: Path, key: Key, models: Callable[..., ModelManager]
):
    _install_model(manager, workdir, key, "mini-embed")
    _install_model(manager, workdir, key, "other-embed")
    m = models()
    m.refresh()
    workers = list(m.loaded().values())
    assert len(workers) == 2 and all(_threads(w.spec) for w in workers)
    release = threading.Event()
    running = Probe(hold=release)
    queued = Probe()
    workers[0].submit(running.job())
    workers[0].submit(queued.job())
    assert running.started.wait(WAIT)
    threading.Timer(0.2, release.set).start()

    m.close()

    assert queued.done.is_set() and queued.failures == []  # close waited for it
    assert m.loaded() == {}
    assert all(_threads(w.spec) == [] for w in workers)
    assert all(w.backend.providers == [] for w in workers)


# -- a GGUF model through the manager -----------------------------------------------------


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with the real Gemma demo bundle installed and active."""
    return installed_gemma(tmp_path_factory.mktemp("gemma"))


@pytest.mark.parametrize("slots", [4, 1])
def test_the_gemma_bundle_is_served_by_the_llama_backend(gemma_home: Home, slots: int):
    """Batched (the default, 4 slots) or one request at a time ([runtime] slots = 1)."""
    m = ModelManager(gemma_home, RuntimeSettings(slots=slots))
    try:
        m.refresh()
        worker = m.worker(GEMMA)
        spec = worker.spec
        if slots > 1:
            assert isinstance(worker.backend, BatchedLlamaBackend)
            assert worker.backend.slots == slots == len(worker._threads)
        else:
            assert isinstance(worker.backend, LlamaBackend) and len(worker._threads) == 1
        assert (spec.format, spec.role, spec.context_length) == ("gguf", "chat", 2048)
        assert spec.chat_template is not None and "<start_of_turn>" in spec.chat_template
        assert spec.extra == {"architecture": "gemma3", "quantization": "Q4_K_M"}
        offload = gpu_present() and bool(llama_cpp.llama_supports_gpu_offload())
        assert worker.backend.device == ("gpu" if offload else "cpu")

        results: list[Any] = []
        done = threading.Event()

        def run(backend: Backend) -> None:
            prompt = backend.render_chat([{"role": "user", "content": "Hi"}])  # type: ignore[attr-defined]
            generation = backend.generate(GenerationRequest(prompt=prompt, max_tokens=4))
            results.append(("".join(e.text for e in generation), generation.result))
            done.set()

        worker.submit(Job(run=run, cancelled=lambda: False, fail=results.append))
        assert done.wait(30), results
        text, result = results[0]
        assert result.completion_tokens == 4 and result.text == text

        # sized as `appliance plan` sizes it: weights, this many slots' KV cache, buffers
        weights = spec.weights.stat().st_size
        slots = int(spec.extra.get("slots", 1))
        needed = need(spec.weights, weights, spec.context_length, slots, True, False).host_bytes
        with pytest.raises(ModelLoadError, match=f"needs about {needed // MiB} MiB"):
            check_memory(spec, available=256 * MiB)  # an explicit figure: the GPU is not asked
        assert needed // MiB > weights // MiB + 100  # the KV cache and buffers are counted
    finally:
        m.close()


def test_a_capped_context_is_what_the_loaded_model_holds(gemma_home: Home):
    """[runtime] context_length = 256: each slot holds 256 tokens, and says so."""
    m = ModelManager(gemma_home, RuntimeSettings(slots=2, context_length=256))
    try:
        m.refresh()
        worker = m.worker(GEMMA)
        assert worker.spec.context_length == worker.backend.spec.context_length == 256
        results: list[Any] = []
        done = threading.Event()

        def run(backend: Backend) -> None:
            list(backend.generate(GenerationRequest(prompt="word " * 300, max_tokens=4)))
            done.set()

        def fail(error: BaseException) -> None:
            results.append(error)
            done.set()

        worker.submit(Job(run=run, cancelled=lambda: False, fail=fail))
        assert done.wait(30)
        assert len(results) == 1 and "holds 256" in str(results[0])
    finally:
        m.close()
