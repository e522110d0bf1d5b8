"""The status document: what ``GET /status`` and ``appliance status --json`` return.

Built from APPLIANCE_HOME alone when the daemon is down (state.db opened read-only, so a
status check never takes the daemon's write lock, and never creates anything), and from
the running daemon's memory when it is up (``Live``: loaded models, live uplink states,
why the sync engine waits). The shape is the same either way; ``daemon.up`` says which.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__, policy_upstreams
from appliance.calibrate.observed import for_status as observed_agreement
from appliance.clock import format_timestamp, utc_now_dt
from appliance.forward import uplinks
from appliance.home import Home
from appliance.policy_source import PolicySummary
from appliance.settings import Settings
from appliance.status import advice, hardware

if TYPE_CHECKING:
    from appliance.upstream.monitor import UplinkState

SCHEMA = 1
MTIME_SLACK_S = 5.0  # seconds: a payload file's mtime may trail its install record this much
ERRORS_SHOWN = 10  # the last errors listed
_STATES = ("queued", "sending", "done", "failed", "expired")


@dataclass
class Live:
    """What only the running daemon knows."""

    pid: int
    started_at: float  # wall time
    models: dict[str, dict[str, Any]]  # name -> {version, loaded, device, slots, busy, error}
    uplinks: list[UplinkState] | None = None  # None: no store-and-forward configured
    waiting: str | None = None  # why the sync engine sends nothing now
    last_sync_at: datetime | None = None
    queue_depth: dict[str, int] = field(default_factory=dict)  # requests waiting per model


def now_text(moment: datetime | None = None) -> str:
    return format_timestamp(moment or utc_now_dt())


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_read_only(home: Home) -> sqlite3.Connection | None:
    """state.db for reading only; None when there is none yet (a fresh home)."""
    if not home.state_db.exists():
        return None
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=2.0)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _rows(conn: sqlite3.Connection | None, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of `sql`; [] without a database or before the table exists."""
    if conn is None:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise


def build(
    home: Home,
    settings: Settings,
    *,
    daemon: dict[str, Any],
    live: Live | None = None,
    policy: Callable[[], PolicySummary] | None = None,
    now: datetime | None = None,
    gpus: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole document; `daemon` is {"up", "url", ...} as the caller found the daemon.

    `policy` returns a summary of the policy in force (the daemon's; the CLI peeks at the
    file), for the daily budget; it may raise, which the document reports as an error.
    """
    now = now or datetime.now(UTC)
    conn = open_read_only(home)
    try:
        errors: list[dict[str, Any]] = []
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "generated_at": now_text(now),
            "version": __version__,
            "home": str(home.root),
            "daemon": daemon,
            "models": _models(home, conn, live),
            "hardware": hardware.machine(home.root),
            "gpus": hardware.gpus() if gpus is None else gpus,
            "outbox": _outbox(conn, settings, now),
            "uplinks": _uplinks(conn, settings, live),
        }
        document["sync"], document["budget"], document["policy"] = _sync_and_budget(
            conn, live, policy, now, document, errors
        )
        document["policy_upstreams"] = _policy_upstreams(home, settings)
        document["calibration"] = observed_agreement(conn, policy)  # audit samples' agreement
        document["errors"] = _errors(conn, document, errors)
    finally:
        if conn is not None:
            conn.close()
    if live is not None:
        document["daemon"].update(
            pid=live.pid,
            uptime_s=round(time.time() - live.started_at, 1),
            rss_bytes=hardware.process_rss(live.pid),
            queue_depth=live.queue_depth,
        )
    document["problems"] = advice.problems(document, settings)
    document["health"] = advice.health(document)
    document["exit_code"] = advice.EXIT_CODES[document["health"]]
    return document


def files_changed(payload: Path, files: list[dict[str, Any]], installed_at: str) -> list[str]:
    """Payload files missing, of another size, or modified after install (a cheap look:
    a stat per file; ``appliance doctor`` checks every hash)."""
    installed = _parse(installed_at)
    limit = installed.timestamp() + MTIME_SLACK_S if installed else None
    changed = []
    for entry in files:
        path = payload / str(entry.get("path", ""))
        try:
            info = path.lstat()
        except OSError:
            changed.append(f"{entry.get('path')}: missing")
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.get("size"):
            changed.append(
                f"{entry.get('path')}: size {info.st_size}, expected {entry.get('size')}"
            )
        elif limit is not None and info.st_mtime > limit:
            changed.append(f"{entry.get('path')}: modified after install")
    return changed


def _models(home: Home, conn: sqlite3.Connection | None, live: Live | None) -> list[dict[str, Any]]:
    """Active model and adapter bundles: who signed them, when verified, where loaded."""
    found = []
    for name, version, kind, manifest, signers, installed_at, expires, size in _rows(
        conn,
        "SELECT b.name, b.version, b.kind, b.manifest, b.signers, b.installed_at, b.expires, "
        "b.total_size FROM bundles b JOIN active_bundles a "
        "ON a.name = b.name AND a.version = b.version "
        "WHERE b.kind IN ('model', 'adapter') ORDER BY b.name",
    ):
        parsed = json.loads(manifest)
        model = parsed.get("model") or {}
        entry: dict[str, Any] = {
            "name": name,
            "version": version,
            "kind": kind,
            "format": model.get("format"),
            "role": model.get("role"),
            "signers": list(json.loads(signers)),
            "verified_at": installed_at,  # verified in full when installed, then read-only
            "expires": expires,
            "size_bytes": size,
            "loaded": None,  # unknown: the daemon is down
            "device": None,
            "slots": None,  # requests it generates at once, and how many do now
            "busy": None,
            "error": None,
            "files_changed": files_changed(
                home.bundle_dir(name, version) / "payload", parsed.get("files") or [], installed_at
            ),
        }
        if live is not None:
            state = live.models.get(name) or {}
            entry.update(
                loaded=bool(state.get("loaded")),
                device=state.get("device"),
                slots=state.get("slots"),
                busy=state.get("busy"),
                error=state.get("error"),
            )
        found.append(entry)
    return found


def _outbox(conn: sqlite3.Connection | None, settings: Settings, now: datetime) -> dict[str, Any]:
    counts = dict.fromkeys(_STATES, 0)
    counts.update(dict(_rows(conn, "SELECT state, COUNT(*) FROM outbox GROUP BY state")))
    oldest = _rows(conn, "SELECT MIN(created_at) FROM outbox WHERE state = 'queued'")
    oldest_at = oldest[0][0] if oldest else None
    moment = _parse(oldest_at)
    usage = _rows(conn, "SELECT items, bytes FROM outbox_usage WHERE id = 1")
    items, used = usage[0] if usage else (0, 0)
    return {
        "counts": counts,
        "oldest_queued_at": oldest_at,
        "oldest_queued_age_s": round((now - moment).total_seconds()) if moment else None,
        "items": items,
        "bytes": used,
        "max_items": settings.outbox.max_items,
        "max_bytes": settings.outbox.max_bytes,
        "when_full": settings.outbox.when_full,
    }


def _uplinks(
    conn: sqlite3.Connection | None, settings: Settings, live: Live | None
) -> list[dict[str, Any]]:
    """Each configured upstream: live from the daemon, else as the daemon last saw it."""
    stored = uplinks.load(conn) if conn is not None else {}
    current = {s.name: uplinks.live(s) for s in live.uplinks or []} if live else {}
    found = []
    for upstream in settings.upstreams:
        entry: dict[str, Any] = {
            "name": upstream.name,
            "kind": upstream.kind,
            "perimeter": upstream.perimeter,
        }
        if upstream.name in current:
            entry.update(current[upstream.name], source="live")
        elif upstream.name in stored:
            entry.update(stored[upstream.name], source="last seen by the daemon")
        else:
            entry.update(
                up=None,
                last_ok_at=None,
                last_error=None,
                failures=0,
                checked_at=None,
                source="never probed",
            )
        found.append(entry)
    return found


def _policy_upstreams(home: Home, settings: Settings) -> dict[str, Any] | None:
    """The policy's upstream names against config.toml's (``appliance.policy_upstreams``);
    None when the policy cannot be read (the policy error is reported on its own)."""
    try:
        names = policy_upstreams.peek(
            home, settings.policy_file, [u.name for u in settings.upstreams]
        )
    except Exception:
        return None
    return {
        "listed": list(names.listed),
        "configured": list(names.configured),
        "missing": list(names.missing),
        "escalation_off": names.escalation_off,
    }


def _sync_and_budget(
    conn: sqlite3.Connection | None,
    live: Live | None,
    policy: Callable[[], PolicySummary] | None,
    now: datetime,
    document: dict[str, Any],
    errors: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    last = _rows(conn, "SELECT MAX(received_at) FROM outbox_spend")
    last_sync_at = last[0][0] if last else None
    if live is not None and live.last_sync_at is not None:
        last_sync_at = max(last_sync_at or "", now_text(live.last_sync_at))
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent_rows = _rows(
        conn,
        "SELECT COALESCE(SUM(cost_usd), 0) FROM outbox_spend WHERE received_at >= ?",
        (day.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),),
    )
    spent = float(spent_rows[0][0]) if spent_rows else 0.0
    daily: float | None = None
    policy_doc: dict[str, Any] | None = None
    if policy is not None:
        try:
            summary: PolicySummary = policy()
            daily = summary.daily_usd
            policy_doc = {
                "name": summary.name,
                "digest": summary.digest,
                "origin": summary.origin,
            }
        except Exception as e:  # an invalid policy is a finding, not a crash of status
            errors.append({"at": now_text(now), "source": "policy", "message": str(e)})
    waiting = live.waiting if live is not None else None
    queued = document["outbox"]["counts"]["queued"]
    if waiting is None and daily is not None and spent >= daily and queued:
        waiting = (
            f"the daily budget of ${daily:.2f} is spent; escalations wait for the next UTC day"
        )
    links = document["uplinks"]
    if waiting is None and live is None and queued and links and not any(u["up"] for u in links):
        waiting = "no uplink is up"
    sync = {"last_sync_at": last_sync_at, "waiting": waiting}
    budget = {
        "daily_usd": daily,
        "spent_today_usd": round(spent, 6),
        "left_usd": None if daily is None else round(max(daily - spent, 0.0), 6),
        "resets_at": now_text(day + timedelta(days=1)),
    }
    return sync, budget, policy_doc


def _errors(
    conn: sqlite3.Connection | None, document: dict[str, Any], errors: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The last errors, newest first: refused bundles, failed escalations, uplinks, models."""
    for at, action, reason in _rows(
        conn,
        "SELECT at, action, reason FROM bundle_events WHERE outcome != 'accepted' "
        "ORDER BY id DESC LIMIT ?",
        (ERRORS_SHOWN,),
    ):
        errors.append({"at": at, "source": f"bundle {action}", "message": reason or "refused"})
    for item_id, created_at, last_error in _rows(
        conn,
        "SELECT id, created_at, last_error FROM outbox WHERE state = 'failed' "
        "ORDER BY created_at DESC LIMIT ?",
        (ERRORS_SHOWN,),
    ):
        errors.append(
            {"at": created_at, "source": f"escalation {item_id}", "message": last_error or ""}
        )
    for uplink in document["uplinks"]:
        if uplink.get("last_error") and not uplink.get("up"):
            errors.append(
                {
                    "at": uplink.get("checked_at"),
                    "source": f"uplink {uplink['name']}",
                    "message": uplink["last_error"],
                }
            )
    for model in document["models"]:
        if model.get("error"):
            errors.append(
                {"at": None, "source": f"model {model['name']}", "message": model["error"]}
            )
    errors.sort(key=lambda e: _sort_key(e.get("at")), reverse=True)
    return errors[:ERRORS_SHOWN]


def _sort_key(at: str | None) -> float:
    moment = _parse(at)
    return moment.timestamp() if moment else float("inf")  # undated (live) ones first
