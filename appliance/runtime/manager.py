"""The model manager: which models are loaded, the queue and thread in front of each.

Each active model bundle gets a ``ModelWorker``: one backend, one thread, one bounded queue.
``refresh`` follows state.db: a newly activated version is loaded beside the old one, new
requests go to it at once, and the old worker finishes what it has queued before it closes,
so a swap fails no request. A model idle longer than its keep-alive is unloaded and loaded
again on the next request. Nothing is loaded that would not fit in the memory left.

Every load (start, swap, reload after an idle unload, a restart after a crash) checks the
files the backend reads against the manifest that was verified at install, and a changed
file is refused with a ModelLoadError naming the bundle and the file (see signed_files). A
model already loaded keeps the signed bytes it read: llama.cpp and ONNX Runtime hold their
own copy, so a file changed on disk afterwards never reaches them.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from appliance.bundles import records
from appliance.errors import ApplianceError, ModelLoadError, ModelNotFoundError, QueueFullError
from appliance.home import Home
from appliance.runtime.backend import Backend, ModelSpec
from appliance.runtime.signed_files import ModelFileChangedError, signed_files
from appliance.settings import RuntimeSettings
from appliance.state import open_state

log = logging.getLogger("appliance.runtime")

SERVED_ROLES = ("chat", "completion", "embedding", "classifier")
# Classifier bundles with this task label tokens (names, organisations): the PII analyzer
# runs them (appliance.governance.entities), not the API, so the manager does not load them.
TOKEN_CLASSIFICATION = "token-classification"
# The fallback where a model's header cannot be read (appliance.plan.guard uses these)
MEMORY_OVERHEAD = 1.2  # the weights' size times this, plus the KV estimate below
KV_BYTES_PER_TOKEN = 64 * 1024  # bytes per token per slot


@dataclass
class Job:
    """Work for a worker thread: `run(backend)` is called there, once, unless cancelled."""

    run: Callable[[Backend], None]
    cancelled: Callable[[], bool]
    fail: Callable[[BaseException], None]


def spec_from_record(home: Home, bundle: records.InstalledBundle) -> ModelSpec:
    """What loading `bundle` needs, from the manifest state.db recorded when it was verified
    (not manifest.json on disk): every payload file's size and SHA-256 come along, and the
    backend checks the files it reads against them at every load (see signed_files)."""
    model: dict[str, Any] = dict(bundle.manifest["model"])
    root = home.bundle_dir(bundle.name, bundle.version)
    known = ("format", "role", "context_length", "file", "chat_template")
    return ModelSpec(
        name=bundle.name,
        version=bundle.version,
        digest=bundle.digest,
        root=root,
        format=model["format"],
        role=model["role"],
        context_length=model["context_length"],
        weights=root / "payload" / model["file"],
        chat_template=model.get("chat_template"),
        extra={k: v for k, v in model.items() if k not in known},
        files=signed_files(f"{bundle.name} {bundle.version}", root / "payload", bundle.manifest),
    )


def _base_is_at_fault(error: ModelLoadError, spec: ModelSpec) -> bool:
    """A changed file of the base model is no reason to leave its adapter out."""
    return isinstance(error, ModelFileChangedError) and error.path != spec.adapter


def capped(spec: ModelSpec, context_length: int) -> ModelSpec:
    """`spec` with at most `context_length` tokens of context (``[runtime] context_length``;
    0 = no cap) if it is a GGUF chat/completion model, whose KV memory that sizes."""
    if context_length and spec.format == "gguf" and spec.role in ("chat", "completion"):
        return dataclasses.replace(spec, context_length=min(spec.context_length, context_length))
    return spec


def default_backend(spec: ModelSpec, slots: int = 1) -> Backend:
    """The runner for `spec`: GGUF generation is batched when it may serve several at once.

    `slots` comes from ``[runtime] slots``; a manifest's ``model.slots`` overrides it.
    """
    if spec.format == "gguf":
        slots = int(spec.extra.get("slots", slots))
        if slots > 1 and spec.role in ("chat", "completion"):
            from appliance.runtime.batched import BatchedLlamaBackend

            return BatchedLlamaBackend(spec, slots=slots)
        from appliance.runtime.llama_backend import LlamaBackend

        return LlamaBackend(spec)
    from appliance.runtime.onnx_backend import OnnxBackend

    return OnnxBackend(spec)


def check_memory(spec: ModelSpec, available: int | None = None, slots: int = 1) -> None:
    """Refuse a model that would not fit in the memory that is free now.

    A GGUF model is sized as `appliance plan` sizes it (appliance.plan.guard): its weights,
    the KV cache of `slots` contexts (per layer, sliding-window layers as the GGUF states
    them) and llama.cpp's buffers; with a GPU, the offloaded part must fit in GPU memory.
    """
    from appliance.plan.guard import gpu_free_bytes, need
    from appliance.runtime.gpu import gpu_present

    free = psutil.virtual_memory().available if available is None else available
    signed = (spec.files or {}).get(spec.weights)
    # the signed size: a missing or changed file is for the load's own check to name
    weights = signed.size if signed is not None else spec.weights.stat().st_size
    generates = spec.format == "gguf" and spec.role in ("chat", "completion")
    slots = int(spec.extra.get("slots", slots)) if generates else 1
    offload = generates and available is None and gpu_present()
    wanted = need(spec.weights, weights, spec.context_length, slots, generates, offload)
    if offload and wanted.gpu_bytes > (gpu_free := gpu_free_bytes()):
        raise ModelLoadError(
            f"{spec.name} {spec.version} needs about {wanted.gpu_bytes // 2**20} MiB of GPU "
            f"memory; {gpu_free // 2**20} MiB are free ({wanted.detail}): lower [runtime] "
            f"slots or context_length"
        )
    needed = wanted.host_bytes
    if needed > free:
        raise ModelLoadError(
            f"{spec.name} {spec.version} needs about {needed // 2**20} MiB of memory; "
            f"{free // 2**20} MiB are available ({wanted.detail}): lower [runtime] slots "
            f"or context_length"
        )


class ModelWorker:
    """One loaded model behind one bounded queue and its threads.

    A backend that batches (``concurrency`` > 1) gets that many threads, each running one
    request's job while the backend interleaves them; others get one.
    """

    def __init__(self, backend: Backend, queue_size: int) -> None:
        self.backend = backend
        self.spec = backend.spec
        # Unbounded underneath so that retire()'s stop markers never wait; the bound on
        # requests is enforced in submit().
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queue_size = queue_size
        self._submit_lock = threading.Lock()
        self.last_used = time.monotonic()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._accepting = True
        count = max(1, backend.concurrency)
        self._left = count  # threads still serving; the last one frees the model
        self._threads = [
            threading.Thread(
                target=self._serve,
                name=f"model-{self.spec.name}-{self.spec.version}",
                daemon=True,
            )
            for _ in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> bool:
        return self._busy > 0

    @property
    def slots(self) -> int:
        """Requests this model generates at once."""
        return len(self._threads)

    @property
    def running(self) -> int:
        """Requests generating now (the rest of `depth` waits in the queue)."""
        return self._busy

    @property
    def depth(self) -> int:
        return self._queue.qsize() + self._busy

    def submit(self, job: Job) -> None:
        with self._submit_lock:
            if not self._accepting:
                raise QueueFullError(f"{self.spec.name} {self.spec.version} is being replaced")
            if self._queue.qsize() >= self._queue_size:
                raise QueueFullError(
                    f"the queue for {self.spec.name} is full ({self._queue_size} requests)"
                )
            self._queue.put_nowait(job)
        self.last_used = time.monotonic()

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            if job.cancelled():
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                job.run(self.backend)
            except BaseException as e:
                job.fail(e)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                self.last_used = time.monotonic()
        with self._busy_lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.backend.close()

    def retire(self) -> None:
        """Stop taking work; finish what is queued, then free the model (in the background)."""
        with self._submit_lock:
            self._accepting = False
            for _ in self._threads:
                self._queue.put_nowait(None)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)


class ModelManager:
    """The active models of one home, loaded on demand and swapped on activation."""

    def __init__(
        self,
        home: Home,
        settings: RuntimeSettings,
        backend_factory: Callable[[ModelSpec], Backend] = default_backend,
    ) -> None:
        self.home = home
        self.settings = settings
        if backend_factory is default_backend:
            self._factory: Callable[[ModelSpec], Backend] = lambda spec: default_backend(
                spec, settings.slots
            )
        else:
            self._factory = backend_factory
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._specs: dict[str, ModelSpec] = {}
        self._workers: dict[str, ModelWorker] = {}
        self.errors: dict[str, str] = {}  # model name -> why it could not be loaded
        self.bad_adapters: dict[str, str] = {}  # adapter bundle digest -> why it failed to load
        # active adapters trained on another bundle of their base's name -> why (each refresh)
        self.mismatched_adapters: dict[str, str] = {}

    # -- what should be served ------------------------------------------------------------

    def _active_specs(self) -> dict[str, ModelSpec]:
        db = open_state(self.home)
        try:
            active = records.query(db, "WHERE a.version IS NOT NULL AND b.kind = 'model'")
            adapters = records.query(db, "WHERE a.version IS NOT NULL AND b.kind = 'adapter'")
        finally:
            db.close()
        specs = {}
        mismatched: dict[str, str] = {}
        for bundle in active:
            spec = spec_from_record(self.home, bundle)
            if spec.role in SERVED_ROLES and spec.extra.get("task") != TOKEN_CLASSIFICATION:
                specs[spec.name] = capped(spec, self.settings.context_length)
        for adapter in adapters:
            model = adapter.manifest["model"]
            base = specs.get(str(model.get("base", "")))
            if base is None or base.format != "gguf" or adapter.revoked:
                continue
            if adapter.digest in self.bad_adapters:
                continue
            trained_on = model.get("base_digest")
            if trained_on is not None and trained_on != base.digest:
                # trained on other weights of the same name: its update would not fit these
                why = (
                    f"adapter {adapter.name} {adapter.version} was trained on {base.name} "
                    f"bundle {str(trained_on)[:12]}, the active one is {base.digest[:12]} "
                    f"({base.version}); it is left out until its base is active again"
                )
                if adapter.digest not in self.mismatched_adapters:
                    log.warning("%s", why)
                mismatched[adapter.digest] = why
                continue
            payload = self.home.bundle_dir(adapter.name, adapter.version) / "payload"
            adapter_files = signed_files(
                f"{adapter.name} {adapter.version}", payload, adapter.manifest
            )
            specs[base.name] = dataclasses.replace(
                base,
                adapter=payload / model["file"],
                adapter_scale=float(model.get("scale", 1.0)),
                adapter_digest=adapter.digest,
                files={**(base.files or {}), **adapter_files},
            )
        self.mismatched_adapters = mismatched
        return specs

    def refresh(self) -> None:
        """Follow state.db: load newly activated versions, retire replaced and removed ones."""
        specs = self._active_specs()
        with self._lock:
            self._specs = specs
            for name in list(self._workers):
                if name not in specs:
                    self._workers.pop(name).retire()
        for name, spec in specs.items():
            current = self._workers.get(name)
            if current is None and not self.settings.preload:
                continue
            if current is not None and current.spec.identity == spec.identity:
                continue
            try:
                self._load(spec)
            except ApplianceError as e:
                self.errors[name] = str(e)
                log.error("model %s %s not loaded: %s", spec.name, spec.version, e)

    def _load(self, spec: ModelSpec) -> ModelWorker:
        with self._load_lock:
            current = self._workers.get(spec.name)
            if current is not None and current.spec.identity == spec.identity:
                return current
            check_memory(spec, slots=self.settings.slots)
            backend = self._factory(spec)
            try:
                backend.load()
            except ModelLoadError as e:
                if spec.adapter is None or _base_is_at_fault(e, spec):
                    raise
                # A bad adapter must not take its base model down: serve the base without
                # it, and leave that adapter bundle out until another one is activated.
                assert spec.adapter_digest is not None
                self.bad_adapters[spec.adapter_digest] = str(e)
                log.error("adapter for %s not applied: %s", spec.name, e)
                spec = dataclasses.replace(spec, adapter=None, adapter_digest=None)
                backend = self._factory(spec)
                backend.load()
            worker = ModelWorker(backend, self.settings.queue_size)
            with self._lock:
                previous = self._workers.get(spec.name)
                self._workers[spec.name] = worker
                self.errors.pop(spec.name, None)
            if previous is not None:
                previous.retire()
            log.info("model %s %s loaded on %s", spec.name, spec.version, backend.device)
            return worker

    # -- serving ----------------------------------------------------------------------------

    def specs(self) -> list[ModelSpec]:
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def worker(self, name: str) -> ModelWorker:
        """The worker for `name`, loading it if it is active but not loaded."""
        with self._lock:
            worker = self._workers.get(name)
            spec = self._specs.get(name)
        if worker is not None:
            return worker
        if spec is None:
            raise ModelNotFoundError(f"no active model named '{name}'")
        return self._load(spec)

    def loaded_worker(self, name: str) -> ModelWorker | None:
        """The worker for `name` if it is loaded now; never loads (cheap, no I/O)."""
        with self._lock:
            return self._workers.get(name)

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Unload models idle for longer than the keep-alive; returns their names."""
        now = time.monotonic() if now is None else now
        reaped = []
        with self._lock:
            for name, worker in list(self._workers.items()):
                idle = now - worker.last_used
                if worker.depth == 0 and idle > self.settings.keep_alive_s:
                    self._workers.pop(name).retire()
                    reaped.append(name)
        return reaped

    def loaded(self) -> dict[str, ModelWorker]:
        with self._lock:
            return dict(self._workers)

    def ready(self) -> bool:
        """Every active model is loaded, or was unloaded only for being idle."""
        with self._lock:
            return not any(name in self.errors for name in self._specs)

    def close(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.retire()
        for worker in workers:
            worker.join(timeout=30)
