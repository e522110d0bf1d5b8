"""Issue 14, items 8 and 11: what a client on the network must not get.

- ``/readyz`` needs a token off loopback (or always, per ``server.readyz_public``);
- no response names a file path (``/readyz``, ``/status``, error messages);
- a chunked body over ``server.max_body_bytes`` is a 413 in the API's JSON error shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.errors import error_body
from appliance.api.paths import hide_paths
from appliance.api.server import BackgroundServer
from appliance.home import Home
from appliance.settings import ServerSettings, Settings
from appliance.tokens import TokenStore

SAFETY_S = 20.0  # seconds: no request of these tests waits longer


# -- /readyz and paths in responses (item 8) ---------------------------------------------------


@dataclass
class _Spec:
    name: str
    version: str


@dataclass
class FailedModels:
    """A model manager whose one model failed to load, with a path in the error (as
    llama.cpp writes it)."""

    home: Home
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        weights = self.home.bundle_dir("gemma3-270m", "1.0.0") / "payload" / "model.gguf"
        self.errors["gemma3-270m"] = f"Failed to load model from file: {weights}"

    def specs(self) -> list[_Spec]:
        return [_Spec("gemma3-270m", "1.0.0")]

    def loaded(self) -> dict[str, Any]:
        return {}

    def ready(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def refresh(self) -> None:
        pass


def _app(home: Home, **server: object) -> Any:
    return create_app(home, Settings(server=ServerSettings(**server)), models=FailedModels(home))  # type: ignore[arg-type]


def _get(app: Any, path: str, client: str, token: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get(path, headers=headers)

    return asyncio.run(go())


@pytest.fixture
def token(home: Home) -> str:
    return TokenStore(home).create("device", "infer")


def test_readyz_from_the_network_needs_a_token(home: Home, token: str):
    app = _app(home)
    assert _get(app, "/readyz", "10.1.2.3").status_code == 401
    assert _get(app, "/readyz", "10.1.2.3", token).status_code == 503  # answered: not ready
    assert _get(app, "/readyz", "127.0.0.1").status_code == 503  # a local supervisor


def test_readyz_public_never_asks_a_token_of_loopback_too(home: Home, token: str):
    app = _app(home, readyz_public="never")
    assert _get(app, "/readyz", "127.0.0.1").status_code == 401
    assert _get(app, "/readyz", "127.0.0.1", token).status_code == 503


def test_readyz_names_the_bundle_not_the_path(home: Home, token: str):
    body = _get(_app(home), "/readyz", "10.1.2.3", token).text
    assert str(home.root) not in body and "/bundles/" not in body
    error = json.loads(body)["models"]["gemma3-270m"]["error"]
    assert error == "Failed to load model from file: model.gguf of bundle gemma3-270m 1.0.0"


def test_status_names_no_path(home: Home):
    response = _get(_app(home), "/status", "127.0.0.1")
    assert response.status_code == 200
    assert str(home.root) not in response.text
    document = response.json()
    assert document["home"] == "$APPLIANCE_HOME"
    assert document["hardware"]["disk"]["path"] == "$APPLIANCE_HOME"


def test_error_messages_name_no_path():
    message = "cannot read /etc/appliance/openai.key: Permission denied"
    body = error_body(message, "server_error", "x")
    assert body["error"]["message"] == "cannot read .../openai.key: Permission denied"
    kept = "POST /v1/chat/completions to https://api.example.com/v1 failed 1/2 times"
    assert hide_paths(kept) == kept  # routes, URLs and ratios are no files


# -- an oversized chunked body (item 11) -------------------------------------------------------


def test_an_oversized_chunked_body_is_413_in_the_json_error_shape(home: Home, token: str):
    app = create_app(home, Settings(server=ServerSettings(max_body_bytes=4096)))

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}]}'

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with BackgroundServer(app) as server, httpx.Client(timeout=SAFETY_S) as client:
        url = f"{server.url}/v1/chat/completions"
        response = client.post(url, content=chunks(64 * 1024), headers=headers)
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert set(error) >= {"type", "message", "code"}
        assert error["code"] == "limit_exceeded" and "max_body_bytes" in error["message"]
        small = client.post(url, content=chunks(1024), headers=headers)
        assert small.status_code not in (400, 413), small.text  # read whole, then judged
