"""One answer from an installed model, in this process, with no daemon: an operator's smoke test.

The model is the active bundle of that name, loaded exactly as the daemon loads it (the same
memory check, every file checked against its signed manifest, the active adapter applied),
and evaluated alone from an empty memory (one slot), so the same request gets the same answer
the daemon gives a request alone. Nothing is recorded: no audit row, no ledger entry, no
policy; this is for the operator on the box, not for devices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.errors import ModelError, ModelNotFoundError
from appliance.home import Home
from appliance.runtime.backend import Backend, GenerationRequest, ModelSpec
from appliance.runtime.manager import ModelManager
from appliance.settings import RuntimeSettings


@dataclass(frozen=True)
class Answer:
    """What one model made of one prompt."""

    model: str
    version: str
    role: str
    device: str  # "cpu" or "gpu"
    prompt_tokens: int
    seconds: float  # generating (or embedding), after the load
    load_seconds: float
    text: str = ""  # chat and completion models
    finish_reason: str = ""
    completion_tokens: int = 0
    vector: list[float] = field(default_factory=list)  # embedding models
    labels: dict[str, float] = field(default_factory=dict)  # classifier models

    def to_json(self) -> dict[str, Any]:
        document = {k: v for k, v in self.__dict__.items() if v not in ("", [], {})}
        document["completion_tokens"] = self.completion_tokens
        return document


def answer_once(
    home: Home,
    settings: RuntimeSettings,
    model: str,
    prompt: str,
    *,
    system: str | None = None,
    raw: bool = False,
    max_tokens: int = 128,
    temperature: float = 0.0,
) -> Answer:
    """Load `model` (an active bundle's name), run `prompt` through it once, and unload it.

    A chat model gets `prompt` as the user's message (after `system`, if given) through its
    chat template, unless `raw`; a completion model gets it as is; an embedding model embeds
    it; a classifier gives label probabilities.
    """
    manager = ModelManager(home, settings.model_copy(update={"preload": False, "slots": 1}))
    try:
        manager.refresh()
        started = time.perf_counter()
        try:
            backend = manager.worker(model).backend
        except ModelNotFoundError as e:
            names = ", ".join(s.name for s in manager.specs()) or "none"
            raise ModelNotFoundError(f"no active model named '{model}' (active: {names})") from e
        loaded = time.perf_counter() - started
        return _run(backend, prompt, system, raw, max_tokens, temperature, loaded)
    finally:
        manager.close()


def _run(
    backend: Backend,
    prompt: str,
    system: str | None,
    raw: bool,
    max_tokens: int,
    temperature: float,
    loaded: float,
) -> Answer:
    spec: ModelSpec = backend.spec
    answer = Answer(
        model=spec.name,
        version=spec.version,
        role=spec.role,
        device=backend.device,
        prompt_tokens=0,
        seconds=0.0,
        load_seconds=loaded,
    )
    started = time.perf_counter()
    if spec.role == "embedding":
        vectors, tokens = backend.embed([prompt])
        elapsed = time.perf_counter() - started
        return replace(answer, prompt_tokens=tokens, seconds=elapsed, vector=vectors[0])
    if spec.role == "classifier":
        (labels,) = backend.classify([prompt])
        elapsed = time.perf_counter() - started
        tokens = backend.count_tokens(prompt)
        return replace(answer, prompt_tokens=tokens, seconds=elapsed, labels=labels)
    if system is not None and (raw or spec.role != "chat"):
        raise ModelError(f"{spec.name}: a system message needs a chat model and its template")
    text = prompt
    if spec.role == "chat" and not raw:
        messages = [{"role": "system", "content": system}] if system is not None else []
        text = backend.render_chat([*messages, {"role": "user", "content": prompt}])
    generation = backend.generate(
        GenerationRequest(prompt=text, max_tokens=max_tokens, temperature=temperature)
    )
    for _ in generation:
        pass
    result = generation.result
    return replace(
        answer,
        prompt_tokens=result.prompt_tokens,
        seconds=result.seconds,
        text=result.text,
        finish_reason=result.finish_reason,
        completion_tokens=result.completion_tokens,
    )
