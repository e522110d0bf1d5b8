"""``/admin/…``: bundles, the outbox and device tokens over HTTP, for an admin token only.

What ``appliance bundle``, ``appliance outbox`` and ``appliance tokens`` do at the box, from
a technician's laptop on the site network. Each route calls the same code as its command
(``BundleManager``, ``Outbox``, ``TokenStore``), so the same checks apply; an infer token is
refused (403), no token too (401). Nothing here returns a secret: a token is shown once, in
the answer that creates it; the outbox shows no messages, answers or placeholder maps.

| route | does |
| --- | --- |
| ``GET /admin/bundles`` | installed bundles, the active one of each name marked |
| ``POST /admin/bundles?activate=true`` | body: a bundle file; verified and installed |
| ``POST /admin/bundles/{name}/{version}/activate`` | make an installed version active |
| ``POST /admin/bundles/{name}/rollback`` | back to the previous installed version |
| ``GET /admin/outbox?state=&limit=`` | escalations, newest first (no content) |
| ``POST /admin/outbox/{id}/retry`` | a failed or expired escalation goes back in the queue |
| ``POST /admin/outbox/purge?state=&include_golden=`` | forget finished ones, golden kept |
| ``GET /admin/tokens`` · ``POST /admin/tokens`` | devices with a token · a new token |
| ``POST /admin/tokens/{device}/revoke`` | the device's requests are refused from now on |

An uploaded bundle is the request body as it is (``curl --data-binary @FILE``; a form
upload, ``curl -F``, is refused with 415). It is streamed into an unnamed file under
``bundles/.uploads/`` (gone when closed, or if the daemon dies), at most the largest bundle
the limits allow (``bundles.limits``: 413 beyond), and installed exactly as ``appliance
bundle install FILE`` installs a file: verified, copied while hashed, renamed into place, one
transaction. A refused bundle changes nothing. The daemon starts serving a newly active model
within ``runtime.refresh_interval_s``, as after the command.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from appliance.api.errors import APIError
from appliance.api.security import GuardMiddleware, require_admin
from appliance.bundles.installer import BundleManager
from appliance.errors import ApplianceError, OutboxError, surface
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.outbox.model import FINISHED_STATES, FinishedChoice, OutboxItem, StateChoice
from appliance.settings import BundleLimits, ServerSettings, Settings
from appliance.tokens import TokenStore

log = logging.getLogger("appliance.admin")
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

UPLOAD_PATH = "/admin/bundles"
UPLOAD_DIR = ".uploads"  # under bundles/: same filesystem; install recovery skips dot-names
WRITE_CHUNK_BYTES = 1024 * 1024  # bytes gathered before one write to the upload file
TAR_BLOCK = 512  # bytes
# the body is the file as it is: octet-stream, or what curl --data-binary sends by default
RAW_BODY_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded", "")
CLOSE = {"Connection": "close"}  # refused before the body was read: do not wait for the rest
UPLOADED = "the uploaded bundle"  # how messages name the upload (its path means nothing)


def upload_limit(limits: BundleLimits) -> int:
    """The largest bundle file the limits allow, in bytes: manifest, signatures and every
    payload byte at their caps, each member with its tar header and padding."""
    members = limits.max_files + 2
    return (
        limits.manifest_max_bytes
        + limits.signatures_max_bytes
        + limits.max_total_bytes
        + members * 2 * TAR_BLOCK
        + 2 * TAR_BLOCK
    )


class UploadGuard:
    """``GuardMiddleware`` (Host allow-list, body cap) for every request; on ``POST
    /admin/bundles`` without ``server.max_body_bytes``: that route caps the upload itself, at
    ``upload_limit`` (by its Content-Length, and while it streams), naming bundles.limits."""

    def __init__(self, app: Callable[..., Awaitable[None]], server: ServerSettings) -> None:
        self.default = GuardMiddleware(app, server)
        unlimited = server.model_copy(update={"max_body_bytes": sys.maxsize})
        self.upload = GuardMiddleware(app, unlimited)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        is_upload = (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == UPLOAD_PATH
        )
        await (self.upload if is_upload else self.default)(scope, receive, send)


def _who(request: Request) -> str:
    return str(getattr(request.state, "device", None) or "a loopback client (auth = none)")


def _refusal(error: ApplianceError, upload_path: str | None = None) -> APIError:
    """An appliance error as the API shows it (``errors.SURFACES``), the upload named plainly."""
    shown = surface(error)
    message = str(error)
    if upload_path is not None:
        message = message.replace(f"bundle file {upload_path}", UPLOADED)
        message = message.replace(upload_path, UPLOADED)
    return APIError(shown.http_status, message, type=shown.type, code=shown.code)


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


# -- bundles ----------------------------------------------------------------------------------


@contextmanager
def _bundles(home: Home, settings: Settings) -> Iterator[BundleManager]:
    manager = BundleManager(home, settings)
    try:
        yield manager
    finally:
        manager.close()


def _bundle_call(request: Request, action: Callable[[BundleManager], Any]) -> Any:
    with _bundles(request.app.state.home, request.app.state.settings) as manager:
        return action(manager)


@router.get("/bundles")
async def list_bundles(request: Request) -> dict[str, Any]:
    bundles = await asyncio.to_thread(_bundle_call, request, lambda m: m.list())
    return _listing([b.to_json() for b in bundles])


async def _receive_upload(request: Request, file: IO[bytes], cap: int) -> int:
    """Stream the body into `file`; returns its size. 413 past `cap`, 507 on a full disk."""
    size = 0
    pending = bytearray()
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise APIError(
                    413,
                    f"the bundle is over {cap} bytes, the largest the limits allow "
                    "(bundles.limits)",
                    code="limit_exceeded",
                    headers=CLOSE,
                )
            pending += chunk
            if len(pending) >= WRITE_CHUNK_BYTES:
                await asyncio.to_thread(file.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(file.write, bytes(pending))
        await asyncio.to_thread(file.flush)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise APIError(
                507,
                "not enough disk space for the uploaded bundle",
                code="insufficient_storage",
                headers=CLOSE,
            ) from None
        raise
    return size


def _check_upload_headers(request: Request, cap: int, folder_free: int) -> None:
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    if kind.lower() not in RAW_BODY_TYPES:
        raise APIError(
            415,
            f"send the bundle file itself as the body, Content-Type: application/octet-stream "
            f"(curl --data-binary @FILE), not {kind}",
            code="unsupported_media_type",
            headers=CLOSE,
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > cap:
            raise APIError(
                413,
                f"the bundle is {int(declared)} bytes, over the {cap} bytes the limits allow "
                "(bundles.limits)",
                code="limit_exceeded",
                headers=CLOSE,
            )
        # the upload, and the installed copy beside it
        if 2 * int(declared) > folder_free:
            raise APIError(
                507,
                f"not enough disk space: installing {int(declared)} bytes needs twice that, "
                f"{folder_free} bytes are free",
                code="insufficient_storage",
                headers=CLOSE,
            )


@router.post("/bundles")
async def install_bundle(
    request: Request,
    activate: Annotated[
        bool, Query(description="Make it the active version (as without --no-activate).")
    ] = True,
) -> JSONResponse:
    home: Home = request.app.state.home
    settings: Settings = request.app.state.settings
    cap = upload_limit(settings.bundles.limits)
    folder = home.bundles_dir / UPLOAD_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    _check_upload_headers(request, cap, shutil.disk_usage(folder).free)
    # An unnamed file (O_TMPFILE, else unlinked at once): nothing is left if the daemon dies.
    with tempfile.TemporaryFile(dir=folder, suffix=".bundle") as file:
        size = await _receive_upload(request, file, cap)
        path = f"/proc/self/fd/{file.fileno()}"  # the installer opens the same file again
        try:
            outcome = await asyncio.to_thread(
                _bundle_call, request, lambda m: m.install(Path(path), activate=activate)
            )
        except ApplianceError as e:
            log.warning("admin: %s: bundle upload of %d bytes refused: %s", _who(request), size, e)
            raise _refusal(e, path) from None
    log.info(
        "admin: %s: %s %s %s (uploaded, %d bytes)",
        _who(request),
        outcome.action,
        outcome.name,
        outcome.version,
        size,
    )
    return JSONResponse(
        outcome.to_json(), status_code=201 if outcome.action == "installed" else 200
    )


@router.post("/bundles/{name}/{version}/activate")
async def activate_bundle(name: str, version: str, request: Request) -> dict[str, Any]:
    try:
        bundle = await asyncio.to_thread(_bundle_call, request, lambda m: m.activate(name, version))
    except ApplianceError as e:
        raise _refusal(e) from None
    log.info("admin: %s: activated %s %s", _who(request), name, version)
    result: dict[str, Any] = bundle.to_json()
    return result


@router.post("/bundles/{name}/rollback")
async def rollback_bundle(name: str, request: Request) -> dict[str, Any]:
    try:
        bundle = await asyncio.to_thread(_bundle_call, request, lambda m: m.rollback(name))
    except ApplianceError as e:
        raise _refusal(e) from None
    log.info("admin: %s: rolled %s back to %s", _who(request), name, bundle.version)
    result: dict[str, Any] = bundle.to_json()
    return result


# -- outbox -----------------------------------------------------------------------------------


def _summary(item: OutboxItem) -> dict[str, Any]:
    """An item without its content: no messages, local answer, parameters or map."""
    return {
        "id": item.id,
        "created_at": item.created_at,
        "priority": item.priority,
        "state": item.state,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at,
        "expires_at": item.expires_at,
        "upstream": item.upstream,
        "endpoint": item.endpoint,
        "model": item.model,
        "device": item.device,
        "sensitivity": item.sensitivity,
        "reasons": list(item.reasons),
        "last_error": item.last_error,
        "size_bytes": item.size_bytes,
    }


def _outbox_call(request: Request, action: Callable[[Outbox], Any]) -> Any:
    settings: Settings = request.app.state.settings
    with Outbox(request.app.state.home, settings.outbox) as outbox:
        return action(outbox)


@router.get("/outbox")
async def list_outbox(
    request: Request,
    state: Annotated[StateChoice | None, Query(description="Only items in this state.")] = None,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="At most this many, newest first.")
    ] = 100,
) -> dict[str, Any]:
    chosen = state.value if state else None
    items = await asyncio.to_thread(_outbox_call, request, lambda o: o.list(chosen, limit))
    return _listing([_summary(i) for i in items])


def _retry(outbox: Outbox, item_id: str) -> OutboxItem:
    if outbox.get(item_id) is None:
        raise APIError(404, f"no outbox item {item_id}", type="not_found_error", code="not_found")
    try:
        return outbox.retry(item_id)
    except OutboxError as e:  # not failed or expired
        raise APIError(409, str(e), code="outbox_refused") from None


@router.post("/outbox/{item_id}/retry")
async def retry_outbox(item_id: str, request: Request) -> dict[str, Any]:
    item = await asyncio.to_thread(_outbox_call, request, lambda o: _retry(o, item_id))
    log.info("admin: %s: outbox item %s queued again", _who(request), item_id)
    return _summary(item)


@router.post("/outbox/purge")
async def purge_outbox(
    request: Request,
    state: Annotated[
        list[FinishedChoice] | None,
        Query(description="Purge this state (repeatable); default: done, failed, expired."),
    ] = None,
    include_golden: Annotated[
        bool,
        Query(description="Also delete done items answered by a trainable upstream."),
    ] = False,
) -> dict[str, Any]:
    chosen = sorted({s.value for s in state}) if state else sorted(FINISHED_STATES)
    settings: Settings = request.app.state.settings
    # as `appliance outbox purge`: the golden answers distillation wants stay unless told
    keep = [] if include_golden else settings.trainable_upstreams()
    purged = await asyncio.to_thread(
        _outbox_call, request, lambda o: o.purge(chosen, keep_golden=keep)
    )
    log.info("admin: %s: purged %d outbox items (%s)", _who(request), purged, ", ".join(chosen))
    return {"purged": purged, "states": chosen, "kept_golden": bool(keep)}


# -- tokens -----------------------------------------------------------------------------------


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    scope: Literal["infer", "admin"] = "infer"


def _token_info(info: Any) -> dict[str, Any]:
    return {
        "device": info.device,
        "scope": info.scope,
        "created_at": info.created_at,
        "last_used_at": info.last_used_at,
    }


@router.get("/tokens")
async def list_tokens(request: Request) -> dict[str, Any]:
    store: TokenStore = request.app.state.tokens
    infos = await asyncio.to_thread(store.list)
    return _listing([_token_info(i) for i in infos])


@router.post("/tokens")
async def create_token(body: TokenRequest, request: Request) -> JSONResponse:
    store: TokenStore = request.app.state.tokens
    try:
        token = await asyncio.to_thread(store.create, body.device, body.scope)
    except ApplianceError as e:
        raise _refusal(e) from None
    log.info("admin: %s: created a %s token for %s", _who(request), body.scope, body.device)
    # The only time the token is shown: the store keeps its SHA-256.
    return JSONResponse(
        {"device": body.device, "scope": body.scope, "token": token}, status_code=201
    )


def _revoke(store: TokenStore, device: str) -> None:
    if not any(info.device == device for info in store.list()):
        raise APIError(
            404, f"no token for device {device!r}", type="not_found_error", code="not_found"
        )
    store.revoke(device)


@router.post("/tokens/{device}/revoke")
async def revoke_token(device: str, request: Request) -> dict[str, Any]:
    store: TokenStore = request.app.state.tokens
    try:
        await asyncio.to_thread(_revoke, store, device)
    except APIError:
        raise
    except ApplianceError as e:
        raise _refusal(e) from None
    log.info("admin: %s: revoked the token of %s", _who(request), device)
    return {"revoked": device}
