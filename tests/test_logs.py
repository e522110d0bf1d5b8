"""Structured logs: one JSON object per line, the request id on each, and no PII.

The run-wide guarantee (no corpus PII value in any log line of the whole test run) is
checked by the ``tests.log_scan`` plugin at the end of the session; the daemon test here
makes sure that run includes PII-laden prompts going through every routing path.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from appliance import logs
from appliance.settings import Settings
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.log_scan import CORPUS, pii_values


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(f"appliance.test.{random.random()}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_each_line_is_one_json_object_with_the_request_id():
    logger, stream = _capture()
    logger.info("outside a request")
    token = logs.bind_request_id("req-42")
    try:
        logger.warning("inside %s", "one", extra={"route": "/v1/models", "status": 200})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logs.unbind_request_id(token)
    first, second, third = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "request_id" not in first and first["level"] == "info"
    assert first["ts"].endswith("Z")
    assert second["request_id"] == "req-42" and second["msg"] == "inside one"
    assert (second["route"], second["status"]) == ("/v1/models", 200)
    assert third["request_id"] == "req-42" and "ValueError: boom" in third["exc"]


def test_only_sane_request_ids_are_taken_from_devices():
    assert logs.new_request_id("abc-123") == "abc-123"
    for hostile in ("", "a" * 65, "x\ny", "has space", "-leading"):
        made = logs.new_request_id(hostile)
        assert made != hostile and len(made) == 32


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("logs-daemon")
    d = start_daemon(root / "home", gemma_source(root), Settings())
    yield d
    d.server.stop()


def test_pii_prompts_leave_no_trace_in_the_daemon_logs(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
):
    records = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    with_pii = [r for r in records if r["entities"]]
    sample = random.Random(7).sample(with_pii, 12)
    headers = {"Authorization": f"Bearer {daemon.infer_token}"}
    caplog.set_level(logging.DEBUG, logger="appliance")
    for index, record in enumerate(sample):
        response = httpx.post(
            f"{daemon.url}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": record["text"]}],
                "max_tokens": 1,
            },
            headers={**headers, "X-Request-Id": f"corpus-{index}"},
            timeout=120,
        )
        assert response.status_code in (200, 403), response.text
        assert response.headers["x-request-id"] == f"corpus-{index}"
    deadline = time.monotonic() + 10  # the access line follows the response's last byte
    while len([r for r in caplog.records if r.name == "appliance.http"]) < len(sample):
        assert time.monotonic() < deadline, "no access line for every request"
        time.sleep(0.02)
    formatter = logs.JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    tagged = {json.loads(line).get("request_id") for line in lines}
    assert {f"corpus-{i}" for i in range(len(sample))} <= tagged
    values = pii_values()
    assert not [v for v in values if any(v in line for line in lines)]
