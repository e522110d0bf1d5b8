"""``GET /status``: the same document as ``appliance status --json``, with what only the
running daemon knows (loaded models and their device, live uplink states, why sync waits).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from appliance import __version__
from appliance.api.paths import hide_paths_in
from appliance.api.security import require_observer
from appliance.runtime.manager import ModelManager
from appliance.status import document, hardware

router = APIRouter(dependencies=[Depends(require_observer)])
GPU_CACHE_S = 5.0  # seconds an nvidia-smi reading is reused (a watch polls every 2 s)


class _GpuCache:
    def __init__(self) -> None:
        self.at = 0.0
        self.value: list[dict[str, Any]] = []

    def get(self) -> list[dict[str, Any]]:
        if time.monotonic() - self.at > GPU_CACHE_S:
            self.value, self.at = hardware.gpus(), time.monotonic()
        return self.value


_gpus = _GpuCache()


def model_states(manager: ModelManager) -> dict[str, dict[str, Any]]:
    """Each active model: version, loaded, device, slots and how many are busy, load error
    (also ``/readyz``'s body)."""
    loaded = manager.loaded()
    states = {}
    for spec in manager.specs():
        worker = loaded.get(spec.name)
        states[spec.name] = {
            "version": spec.version,
            "loaded": worker is not None,
            "device": worker.backend.device if worker else None,
            "slots": worker.slots if worker else None,
            "busy": worker.running if worker else None,
            "error": manager.errors.get(spec.name),
        }
    return states


def live_of(app: Any) -> document.Live:
    manager: ModelManager = app.state.models
    loaded = manager.loaded()
    models = model_states(manager)
    forwarding = app.state.forwarding
    return document.Live(
        pid=os.getpid(),
        started_at=app.state.started_at,
        models=models,
        uplinks=forwarding.monitor.states() if forwarding else None,
        waiting=forwarding.engine.waiting if forwarding else None,
        last_sync_at=forwarding.engine.last_sync_at if forwarding else None,
        queue_depth={name: worker.depth for name, worker in loaded.items()},
    )


def build(app: Any, url: str) -> dict[str, Any]:
    """The document, with every filesystem path in it replaced (``paths.hide_paths``):
    ``appliance status`` at the box reads the home itself when it needs them."""
    governor = app.state.governor
    built = document.build(
        app.state.home,
        app.state.settings,
        daemon={"up": True, "url": url, "version": __version__},
        live=live_of(app),
        policy=lambda: governor.active.current.summary(),
        gpus=_gpus.get(),
    )
    shown: dict[str, Any] = hide_paths_in(built, app.state.home.root)
    return shown


@router.get("/status")
async def status(request: Request) -> JSONResponse:
    url = str(request.base_url).rstrip("/")
    body = await asyncio.to_thread(build, request.app, url)
    return JSONResponse(body)
