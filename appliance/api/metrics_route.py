"""``GET /metrics`` in the Prometheus text format, and the middleware that counts requests.

The process's counters and histograms are in ``appliance.metrics``; this adds, at scrape
time, what is read rather than counted: queue depth, load state, slots (busy and all) and
reused prompt tokens per model, outbox depth by state, uplink state, today's spend, and
bundle installs accepted or refused (from state.db's ``bundle_events``, so installs made by
the CLI count too).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance import __version__, metrics
from appliance.api.security import require_observer
from appliance.status.document import open_read_only

router = APIRouter(dependencies=[Depends(require_observer)])
access = logging.getLogger("appliance.http")
# probed every few seconds by supervisors and scrapers: counted, not logged
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/status"})
_STATES = ("queued", "sending", "done", "failed", "expired")


def _reason_of(text: str | None) -> str:
    """The error class of a refusal ("HashMismatchError: ..." -> "HashMismatchError")."""
    head = (text or "").split(":", 1)[0].strip()
    return head if head.isidentifier() else "other"


class StateCollector(Collector):
    """What one daemon (app) reads from its models, its outbox and state.db per scrape."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily("appliance_info", "The running appliance.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._models()
        yield from self._forwarding()
        yield from self._state_db()

    def _models(self) -> Iterator[Any]:
        manager = self.app.state.models
        loaded = manager.loaded()
        depth = GaugeMetricFamily(
            "appliance_queue_depth", "Requests waiting or running, per model.", labels=["model"]
        )
        up = GaugeMetricFamily(
            "appliance_model_loaded", "1 when the model is loaded.", labels=["model", "device"]
        )
        slots = GaugeMetricFamily(
            "appliance_model_slots", "Requests a loaded model generates at once.", labels=["model"]
        )
        running = GaugeMetricFamily(
            "appliance_model_slots_busy", "Requests generating now, per model.", labels=["model"]
        )
        reused = CounterMetricFamily(
            "appliance_prompt_tokens_reused",
            "Prompt tokens found in a slot's KV memory, not evaluated again (since load).",
            labels=["model"],
        )
        for spec in manager.specs():
            worker = loaded.get(spec.name)
            depth.add_metric([spec.name], worker.depth if worker else 0)
            device = worker.backend.device if worker else ""
            up.add_metric([spec.name, device], 1 if worker else 0)
            if worker:
                slots.add_metric([spec.name], worker.slots)
                running.add_metric([spec.name], worker.running)
                reused.add_metric([spec.name], worker.backend.reused_tokens)
        yield from (depth, up, slots, running, reused)

    def _forwarding(self) -> Iterator[Any]:
        forwarding = self.app.state.forwarding
        if forwarding is None:
            return
        uplink = GaugeMetricFamily(
            "appliance_uplink_up",
            "1 when the upstream answered its last probe.",
            labels=["upstream"],
        )
        for state in forwarding.monitor.states():
            uplink.add_metric([state.name], 1 if state.up else 0)
        yield uplink

    def _state_db(self) -> Iterator[Any]:
        conn = open_read_only(self.app.state.home)
        if conn is None:
            return
        try:
            outbox = GaugeMetricFamily(
                "appliance_outbox_items", "Escalations in the outbox, by state.", labels=["state"]
            )
            counts = dict.fromkeys(_STATES, 0)
            counts.update(_query(conn, "SELECT state, COUNT(*) FROM outbox GROUP BY state"))
            for state, n in counts.items():
                outbox.add_metric([state], n)
            yield outbox
            installs = CounterMetricFamily(
                "appliance_bundle_installs",
                "Bundle installs, accepted or refused (by reason), as recorded in state.db.",
                labels=["outcome", "reason"],
            )
            tally: dict[tuple[str, str], int] = {}
            for outcome, reason, n in _query(
                conn,
                "SELECT outcome, reason, COUNT(*) FROM bundle_events WHERE action = 'install' "
                "GROUP BY outcome, reason",
            ):
                key = (outcome, "" if outcome == "accepted" else _reason_of(reason))
                tally[key] = tally.get(key, 0) + n
            for (outcome, reason), n in sorted(tally.items()):
                installs.add_metric([outcome, reason], n)
            yield installs
            day = time.strftime("%Y-%m-%dT00:00:00.000000Z", time.gmtime())
            spent = _query(
                conn,
                "SELECT COALESCE(SUM(cost_usd), 0) FROM outbox_spend WHERE received_at >= ?",
                (day,),
            )
            spend = GaugeMetricFamily(
                "appliance_upstream_spend_today_usd", "USD spent on upstream answers today (UTC)."
            )
            spend.add_metric([], float(spent[0][0]) if spent else 0.0)
            yield spend
        finally:
            conn.close()


def _query(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # a table not created yet
        return []


def _scrape(app: Any) -> bytes:
    registry = getattr(app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(app))
        app.state.metrics_registry = registry
    return generate_latest(metrics.REGISTRY) + generate_latest(registry)


@router.get("/metrics")
async def scrape(request: Request) -> Response:
    body = await asyncio.to_thread(_scrape, request.app)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Counts every HTTP request by route template (never the raw path) and status, and
    logs one access line for it (method, route template, status, ms, device)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watching_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            metrics.REQUESTS.labels(template, str(status)).inc()
            metrics.REQUEST_SECONDS.labels(template).observe(seconds)
            if template not in QUIET_ROUTES:
                access.info(
                    "%s %s %d",
                    scope.get("method", "?"),
                    template,
                    status,
                    extra={
                        "route": template,
                        "status": status,
                        "ms": round(seconds * 1000, 1),
                        "device": (scope.get("state") or {}).get("device"),
                    },
                )
