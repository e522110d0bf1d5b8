"""``/admin/…``: bundles, outbox and tokens over HTTP, for an admin token only (issue 19).

A real daemon (no model: these routes need none) on a home that trusts one publisher key;
bundles are built and signed with the real publisher tools and uploaded over real HTTP.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from appliance.api import admin
from appliance.api.admin import UPLOAD_DIR, upload_limit
from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import (
    BundleLimits,
    BundleSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)
from appliance.tokens import TokenStore, hash_token
from tests.helpers import Key, make_bundle, make_key

KiB = 1024
SETTINGS = Settings(
    server=ServerSettings(max_body_bytes=64 * KiB),
    # trainable (the default): its answers are golden, kept by a purge unless told
    upstreams=[
        UpstreamSettings(name="cloud", kind="openai", base_url="http://127.0.0.1:9", model="m")
    ],
    bundles=BundleSettings(
        limits=BundleLimits(
            manifest_max_bytes=64 * KiB,
            signatures_max_bytes=16 * KiB,
            max_total_bytes=192 * KiB,
            max_files=8,
        )
    ),
)
OCTETS = {"Content-Type": "application/octet-stream"}


@dataclass
class Box:
    home: Home
    server: BackgroundServer
    key: Key
    work: Path
    admin: dict[str, str]
    infer: dict[str, str]
    infer_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def installed(self) -> set[tuple[str, str, bool]]:
        manager = BundleManager(self.home, SETTINGS)
        try:
            return {(b.name, b.version, b.active) for b in manager.list()}
        finally:
            manager.close()

    def upload(self, bundle: Path | bytes, **params: str) -> httpx.Response:
        data = bundle if isinstance(bundle, bytes) else bundle.read_bytes()
        return httpx.post(
            f"{self.url}/admin/bundles",
            content=data,
            params=params,
            headers={**self.admin, **OCTETS},
            timeout=60,
        )


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    root = tmp_path_factory.mktemp("admin")
    home = Home(root / "home").ensure()
    key = make_key(root / "keys", "publisher")
    trust.add_key(home, key.public)
    tokens = TokenStore(home)
    admin = tokens.create("tech-laptop", "admin")
    infer = tokens.create("edge-device", "infer")
    server = BackgroundServer(create_app(home, SETTINGS)).start()
    work = root / "publisher"
    work.mkdir()
    yield Box(
        home,
        server,
        key,
        work,
        {"Authorization": f"Bearer {admin}"},
        {"Authorization": f"Bearer {infer}"},
        infer,
    )
    server.stop()


def _admin_routes() -> list[tuple[str, str]]:
    """Every /admin route, its path parameters filled in."""
    found = []
    for route in admin.router.routes:
        path = getattr(route, "path", "")
        if path.startswith("/admin"):
            for method in sorted(getattr(route, "methods", ()) or ()):
                found.append((method, re.sub(r"\{[^}]+\}", "x", path)))
    return found


def test_every_admin_route_refuses_an_infer_token_and_no_token(box: Box):
    routes = _admin_routes()
    assert len(routes) == 10  # bundles 4, outbox 3, tokens 3: each one is checked here
    before = (box.installed(), [t.device for t in TokenStore(box.home).list()])
    for method, path in routes:
        body = {"device": "sneaky", "scope": "admin"} if path == "/admin/tokens" else None
        none = httpx.request(method, f"{box.url}{path}", json=body, timeout=30)
        assert none.status_code == 401, (method, path, none.text)
        infer = httpx.request(method, f"{box.url}{path}", json=body, headers=box.infer, timeout=30)
        assert infer.status_code == 403, (method, path, infer.text)
        error = infer.json()["error"]
        assert error["code"] == "insufficient_scope" and "edge-device" in error["message"]
    assert (box.installed(), [t.device for t in TokenStore(box.home).list()]) == before


# -- bundles ----------------------------------------------------------------------------------


def test_upload_install_activate_and_rollback(box: Box):
    v1 = make_bundle(box.work, [box.key], name="site-policy", version="1.0.0", sequence=1)
    v2 = make_bundle(box.work, [box.key], name="site-policy", version="2.0.0", sequence=2)
    first = box.upload(v1)
    assert first.status_code == 201, first.text
    outcome = first.json()
    assert (outcome["action"], outcome["name"], outcome["version"]) == (
        "installed",
        "site-policy",
        "1.0.0",
    )
    assert outcome["active"] is True and outcome["signers"] == [box.key.keyid]
    second = box.upload(v2, activate="false")  # as bundle install --no-activate
    assert second.status_code == 201 and second.json()["active"] is False
    assert {("site-policy", "1.0.0", True), ("site-policy", "2.0.0", False)} <= box.installed()

    activated = httpx.post(
        f"{box.url}/admin/bundles/site-policy/2.0.0/activate", headers=box.admin, timeout=30
    )
    assert activated.status_code == 200 and activated.json()["active"] is True
    listed = httpx.get(f"{box.url}/admin/bundles", headers=box.admin, timeout=30).json()
    assert listed["object"] == "list"
    active = {(b["name"], b["version"]) for b in listed["data"] if b["active"]}
    assert ("site-policy", "2.0.0") in active

    back = httpx.post(f"{box.url}/admin/bundles/site-policy/rollback", headers=box.admin)
    assert back.status_code == 200 and back.json()["version"] == "1.0.0"
    assert ("site-policy", "1.0.0", True) in box.installed()
    again = box.upload(v1)  # the same file again: verified, nothing changed
    assert again.status_code == 200 and again.json()["action"] == "already-installed"

    missing = httpx.post(f"{box.url}/admin/bundles/site-policy/9.9.9/activate", headers=box.admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "bundle_not_found"
    none = httpx.post(f"{box.url}/admin/bundles/site-policy/rollback", headers=box.admin)
    assert none.status_code == 404  # nothing earlier than 1.0.0 to go back to


def test_a_bundle_larger_than_a_request_may_be_is_uploaded(box: Box):
    """server.max_body_bytes (64 KiB here) caps every other request; an upload has the cap
    of the largest bundle the limits allow."""
    payload = {"adapter.bin": bytes(range(256)) * (150 * KiB // 256)}
    big = make_bundle(box.work, [box.key], name="big", version="1.0.0", files=payload)
    assert (
        SETTINGS.server.max_body_bytes < big.stat().st_size < upload_limit(SETTINGS.bundles.limits)
    )
    answer = box.upload(big, activate="false")
    assert answer.status_code == 201, answer.text
    assert ("big", "1.0.0", False) in box.installed()
    elsewhere = httpx.post(
        f"{box.url}/v1/completions",
        content=big.read_bytes(),
        headers={**box.infer, "Content-Type": "application/json"},
    )
    assert elsewhere.status_code == 413


def _no_leftovers(box: Box) -> None:
    assert list(box.home.staging_dir.iterdir()) == []
    assert list((box.home.bundles_dir / UPLOAD_DIR).iterdir()) == []


def test_a_refused_upload_changes_nothing_and_says_why(box: Box):
    stranger = make_key(box.work / "keys", "stranger")
    unsigned = make_bundle(box.work, [], name="refused", version="1.0.0")
    untrusted = make_bundle(box.work, [stranger], name="refused", version="1.0.1")
    tampered = bytearray(
        make_bundle(box.work, [box.key], name="refused", version="1.0.2").read_bytes()
    )
    at = tampered.index(b'name = "minimal"')
    tampered[at + 8] ^= 0x01  # one bit of the payload
    before = box.installed()
    events = _refusals(box.home)
    cases = [
        (unsigned.read_bytes(), "not signed"),
        (untrusted.read_bytes(), "not in the trust store"),
        (bytes(tampered), "SHA-256"),
        (b"this is no tar file" * 100, ""),
    ]
    for data, cause in cases:
        answer = box.upload(data)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "bundle_refused" and cause in error["message"]
        assert "/proc/" not in error["message"] and "/fd/" not in error["message"]
    assert box.installed() == before
    assert _refusals(box.home) == events + len(cases)  # recorded as the CLI's refusals are
    _no_leftovers(box)


def test_the_upload_cap_and_the_body_format(box: Box):
    cap = upload_limit(SETTINGS.bundles.limits)
    before = box.installed()
    declared = httpx.post(
        f"{box.url}/admin/bundles",
        content=b"\0" * (cap + 1),
        headers={**box.admin, **OCTETS},
    )
    assert declared.status_code == 413 and "bundles.limits" in declared.json()["error"]["message"]

    def endless() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        for _ in range(cap // (16 * KiB) + 2):
            yield b"\0" * (16 * KiB)

    streamed = httpx.post(
        f"{box.url}/admin/bundles", content=endless(), headers={**box.admin, **OCTETS}
    )
    assert streamed.status_code == 413
    bundle = make_bundle(box.work, [box.key], name="form", version="1.0.0")
    form = httpx.post(
        f"{box.url}/admin/bundles",
        files={"file": bundle.read_bytes()},
        headers=box.admin,
    )
    assert form.status_code == 415 and "--data-binary" in form.json()["error"]["message"]
    curl = httpx.post(  # what curl --data-binary sends without -H: the file, as it is
        f"{box.url}/admin/bundles",
        content=bundle.read_bytes(),
        params={"activate": "false"},
        headers={**box.admin, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert curl.status_code == 201, curl.text
    before.add(("form", "1.0.0", False))
    assert box.installed() == before
    _no_leftovers(box)


def _refusals(home: Home) -> int:
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM bundle_events WHERE outcome = 'refused'").fetchone()[
                0
            ]
        )
    finally:
        conn.close()


# -- outbox -----------------------------------------------------------------------------------


def _escalation(text: str) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at=datetime.now(UTC).isoformat(),
        upstream="cloud",
        endpoint="chat",
        messages=({"role": "user", "content": text},),
        mapping={"<EMAIL_1>": "jo@example.com"},
    )


def test_outbox_list_retry_and_purge(box: Box):
    with Outbox(box.home, SETTINGS.outbox) as outbox:
        queued, failing = _escalation("keep <EMAIL_1>"), _escalation("refused <EMAIL_1>")
        outbox.enqueue_many([queued, failing])
        outbox.fail(failing.id, "test", "400 from the upstream: bad request")
    url = f"{box.url}/admin/outbox"
    listed = httpx.get(url, headers=box.admin).json()["data"]
    assert {i["id"]: i["state"] for i in listed} == {queued.id: "queued", failing.id: "failed"}
    for item in listed:  # no content: not the messages, the answer or the map
        assert "messages" not in item and "local_answer" not in item and "params" not in item
    assert "jo@example.com" not in str(listed) and "EMAIL_1" not in str(listed)
    failed = httpx.get(url, params={"state": "failed"}, headers=box.admin).json()["data"]
    assert [i["last_error"] for i in failed] == ["400 from the upstream: bad request"]

    not_failed = httpx.post(f"{url}/{queued.id}/retry", headers=box.admin)
    assert not_failed.status_code == 409 and "only failed or expired" in not_failed.text
    unknown = httpx.post(f"{url}/no-such-id/retry", headers=box.admin)
    assert unknown.status_code == 404
    retried = httpx.post(f"{url}/{failing.id}/retry", headers=box.admin)
    assert retried.status_code == 200 and retried.json()["state"] == "queued"

    golden = _escalation("what is the torque for <EMAIL_1>'s valve?")
    with Outbox(box.home, SETTINGS.outbox) as outbox:
        outbox.fail(failing.id, "test", "400 again")
        outbox.enqueue(golden)
        outbox.complete(golden.id, "s", UpstreamAnswer("40 Nm.", "cloud", "m"), 0.001)
    live = httpx.post(f"{url}/purge", params={"state": "queued"}, headers=box.admin)
    assert live.status_code == 400  # a queued item is a promise to a device
    purged = httpx.post(f"{url}/purge", headers=box.admin)
    assert purged.json() == {
        "purged": 1,
        "states": ["done", "expired", "failed"],
        "kept_golden": True,
    }
    with Outbox(box.home, SETTINGS.outbox) as outbox:
        assert outbox.get(failing.id) is None and outbox.get(queued.id) is not None
        assert outbox.get(golden.id) is not None  # distillation still wants it
    told = httpx.post(f"{url}/purge", params={"include_golden": "true"}, headers=box.admin)
    assert told.json()["purged"] == 1
    with Outbox(box.home, SETTINGS.outbox) as outbox:
        assert outbox.get(golden.id) is None


# -- tokens -----------------------------------------------------------------------------------


def test_tokens_create_list_revoke(box: Box):
    url = f"{box.url}/admin/tokens"
    made = httpx.post(url, json={"device": "forklift-7", "scope": "infer"}, headers=box.admin)
    assert made.status_code == 201
    token = made.json()["token"]
    assert made.json() == {"device": "forklift-7", "scope": "infer", "token": token}
    device = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{box.url}/v1/models", headers=device).status_code == 200

    listed = httpx.get(url, headers=box.admin)
    assert {"device": "forklift-7", "scope": "infer"}.items() <= next(
        t for t in listed.json()["data"] if t["device"] == "forklift-7"
    ).items()
    for secret in (token, hash_token(token), box.infer_token, hash_token(box.infer_token)):
        assert secret not in listed.text  # shown once, at creation; never its hash

    twice = httpx.post(url, json={"device": "forklift-7"}, headers=box.admin)
    assert twice.status_code == 400 and "already has a token" in twice.text
    bad = httpx.post(url, json={"device": "no spaces allowed"}, headers=box.admin)
    assert bad.status_code == 400 and "invalid device name" in bad.text
    scope = httpx.post(url, json={"device": "x", "scope": "root"}, headers=box.admin)
    assert scope.status_code == 400

    revoked = httpx.post(f"{url}/forklift-7/revoke", headers=box.admin)
    assert revoked.status_code == 200 and revoked.json() == {"revoked": "forklift-7"}
    assert httpx.get(f"{box.url}/v1/models", headers=device).status_code == 401
    gone = httpx.post(f"{url}/forklift-7/revoke", headers=box.admin)
    assert gone.status_code == 404
