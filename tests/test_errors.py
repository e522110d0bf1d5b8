"""One table says how every deliberate error shows: HTTP status, JSON type and code, exit code."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from appliance import errors
from appliance.api.errors import install_handlers


def _all_errors() -> list[type[errors.ApplianceError]]:
    found, todo = [], [errors.ApplianceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_errors_live_in_one_module_per_layer_at_most_and_each_has_a_surface():
    modules: dict[str, set[str]] = {}  # layer (appliance.X) -> modules defining errors
    for cls in _all_errors():
        layer = ".".join(cls.__module__.split(".")[:2])
        modules.setdefault(layer, set()).add(cls.__module__)
        assert errors.surface(cls.__new__(cls)).http_status >= 400, cls
    assert {layer: m for layer, m in modules.items() if len(m) > 1} == {}
    assert "appliance.errors" in modules


@pytest.mark.parametrize(
    "error, status, code, exit_code",
    [
        (errors.UsageError("bad flag"), 400, "invalid_request", 2),
        (errors.ModelNotFoundError("no model m"), 404, "model_not_found", 1),
        (errors.ModelLoadError("cannot load"), 503, "model_unavailable", 1),
        (errors.ModelError("bad prompt"), 400, "model_error", 1),
        (errors.QueueFullError("busy"), 503, "queue_full", 1),
        (errors.OutboxFullError("full"), 503, "outbox_full", 1),
        (errors.HashMismatchError("tampered"), 400, "bundle_refused", 1),
        (errors.BundleNotFoundError("no such bundle"), 404, "bundle_not_found", 1),
        (errors.StateError("broken"), 500, "internal_error", 1),
    ],
)
def test_the_table_drives_http_and_the_cli(error, status, code, exit_code):
    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    response = TestClient(app).get("/boom")
    assert response.status_code == status
    body = response.json()["error"]
    assert (body["code"], body["message"]) == (code, str(error))
    assert ("Retry-After" in response.headers) == errors.surface(error).retry_after
    assert error.exit_code == exit_code
