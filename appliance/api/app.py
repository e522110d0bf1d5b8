"""The daemon's HTTP application and its background duties.

``create_app`` wires the pieces; a background task follows state.db (newly activated
bundles), picks up bundles from the inbox and USB paths, and unloads idle models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from appliance import __version__
from appliance.api import admin, escalations, inference, metrics_route, openai_routes, status_route
from appliance.api.context import RequestIdMiddleware
from appliance.api.errors import install_handlers
from appliance.api.paths import hide_paths_in
from appliance.api.ratelog import RateLimitedLog
from appliance.api.security import is_loopback, require_readiness
from appliance.errors import ConfigError
from appliance.forward.wiring import build as build_forwarding
from appliance.governance.active import ActivePolicy
from appliance.governance.audit import AuditLog
from appliance.governance.entities import AnalyzerSlot
from appliance.governance.escalation import Escalator, NoEscalator
from appliance.governance.pipeline import Pipeline
from appliance.home import Home
from appliance.runtime.manager import ModelManager
from appliance.settings import Settings
from appliance.tco.ledger import Ledger
from appliance.tokens import TokenStore

log = logging.getLogger("appliance.daemon")
HOUSEKEEPING_ERROR_INTERVAL_S = 60.0  # seconds between two tracebacks of one kind of failure


def check_bind(settings: Settings) -> None:
    if settings.server.auth == "none" and not is_loopback(settings.server.host):
        raise ConfigError(
            f'server.auth = "none" is allowed only on loopback, not on {settings.server.host}'
        )


def _scan_inbox(home: Home, settings: Settings) -> list[Any]:
    from appliance.bundles.inbox import scan_once
    from appliance.bundles.installer import BundleManager

    manager = BundleManager(home, settings)
    try:
        return scan_once(manager, [Path(p) for p in settings.bundles.usb_paths])
    finally:
        manager.close()


def _recover(home: Home, settings: Settings) -> None:
    """Finish or clear what an interrupted install left, before anything is served."""
    from appliance.bundles.installer import BundleManager

    manager = BundleManager(home, settings)
    try:
        manager.recover()
    finally:
        manager.close()


async def _housekeeping(app: FastAPI) -> None:
    home: Home = app.state.home
    settings: Settings = app.state.settings
    models: ModelManager = app.state.models
    failures = RateLimitedLog(log, HOUSEKEEPING_ERROR_INTERVAL_S)
    while True:
        await asyncio.sleep(settings.runtime.refresh_interval_s)
        try:
            results = await asyncio.to_thread(_scan_inbox, home, settings)
            for result in results:  # the whole result as a field, not a dict inside msg
                what = f"refused: {result.error}" if result.error else "installed"
                log.info(
                    "inbox: %s %s", result.source.name, what, extra={"inbox": result.to_json()}
                )
            await asyncio.to_thread(models.refresh)
            await asyncio.to_thread(app.state.governor.active.refresh)
            await asyncio.to_thread(app.state.governor.analyzers.refresh)
            for name in models.reap_idle():
                log.info("model %s unloaded after keep-alive", name)
        except Exception as e:
            # A cause that lasts (a full disk, no file descriptors) fails every round: its
            # traceback once per interval, then a count.
            if failures.note(type(e).__name__, f"housekeeping failed again: {e}", emit=False):
                log.exception("housekeeping failed; will retry")


def create_app(
    home: Home,
    settings: Settings,
    models: ModelManager | None = None,
    escalator: Escalator | None = None,
) -> FastAPI:
    """The daemon's app. Raises PolicyError when the policy in force is invalid."""
    check_bind(settings)
    models = models if models is not None else ModelManager(home, settings.runtime)
    policy = ActivePolicy(home, settings)
    audit = AuditLog(home)
    ledger = Ledger(home, settings)
    analyzers = AnalyzerSlot(home)
    forwarding = None
    if escalator is None and settings.upstreams:
        forwarding = build_forwarding(home, settings, lambda: policy.policy, "daemon", ledger)
        escalator = forwarding.escalator
    governor = Pipeline(
        policy,
        analyzers,
        escalator or NoEscalator(),
        audit,
        settings,
        ledger,
        inference.hardness_check(models, settings.server),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(_recover, home, settings)
        await asyncio.to_thread(models.refresh)
        await asyncio.to_thread(analyzers.refresh)
        task = asyncio.create_task(_housekeeping(app))
        stop = asyncio.Event()
        forward = asyncio.create_task(forwarding.run(stop)) if forwarding else None
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if forwarding is not None and forward is not None:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(forward, 10)
                await forwarding.aclose()
            await asyncio.to_thread(models.close)
            await asyncio.to_thread(audit.close)
            await asyncio.to_thread(ledger.close)

    app = FastAPI(
        title="Appliance", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.home = home
    app.state.started_at = time.time()
    app.state.settings = settings
    app.state.models = models
    app.state.governor = governor
    app.state.forwarding = forwarding
    app.state.outbox = forwarding.outbox if forwarding else None
    app.state.tokens = TokenStore(home)
    install_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(escalations.router)
    app.include_router(status_route.router)
    app.include_router(metrics_route.router)
    app.include_router(admin.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", dependencies=[Depends(require_readiness)])
    async def readyz(request: Request) -> JSONResponse:
        manager: ModelManager = request.app.state.models
        models_state = hide_paths_in(status_route.model_states(manager), home.root)
        ready = manager.ready()
        return JSONResponse(
            {"ready": ready, "models": models_state}, status_code=200 if ready else 503
        )

    # Host allow-list and body cap; bundle uploads to /admin/bundles have their own cap
    app.add_middleware(admin.UploadGuard, server=settings.server)
    app.add_middleware(metrics_route.RequestMetrics)  # outside the guard: refusals count too
    app.add_middleware(RequestIdMiddleware)  # outermost: every line logged has the id
    return app
