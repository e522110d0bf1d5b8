"""Slow and hoarding clients cannot stop the daemon (issue 14, item 5).

A real daemon without a model (so these run in seconds) is attacked from 127.0.0.2 with a
few hundred connections that send half a request, or a head and half a body, or nothing;
meanwhile a supervisor's ``/healthz`` and an authorised request from 127.0.0.1 are answered,
the connections past the per-client cap are refused at once with a 503, and the rest are
closed with a 408 once their deadline passes. Every socket has a generous safety timeout, so
a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.connections import LOOPBACK_RESERVE, ConnectionGuard, ConnectionLimits
from appliance.api.ratelog import RateLimitedLog
from appliance.api.server import BackgroundServer, LoopErrors
from appliance.home import Home
from appliance.settings import RuntimeSettings, ServerSettings, Settings
from appliance.tokens import TokenStore

ATTACKER = "127.0.0.2"  # loopback, but another client address than the supervisor's
SAFETY_S = 20.0  # seconds: no socket operation of these tests waits longer
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"
HALF_BODY = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    b'{"model": "gemma3-270m", "messages": ['
)


@dataclass
class Served:
    server: BackgroundServer
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


def serve(tmp_path: Path, **server: object) -> Iterator[Served]:
    home = Home(tmp_path / "home").ensure()
    token = TokenStore(home).create("device", "infer")
    app = create_app(home, Settings(server=ServerSettings(**server)))
    with BackgroundServer(app) as running:
        yield Served(running, token)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Served]:
    """The default caps (512 connections, 64 per client), short deadlines."""
    yield from serve(tmp_path, header_timeout_s=2.0, body_timeout_s=2.0)


def connect(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(SAFETY_S)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_slow_clients_leave_healthz_and_authorised_requests_answered(daemon: Served):
    count = 300
    with ExitStack() as stack:
        slow = []
        for i in range(count):
            sock = stack.enter_context(connect(daemon.port))
            sock.sendall((HALF_HEAD, HALF_BODY, b"")[i % 3])  # b"": connects, says nothing
            slow.append(sock)

        started = time.monotonic()
        health = httpx.get(f"{daemon.url}/healthz", timeout=SAFETY_S)
        health_s = time.monotonic() - started
        models = httpx.get(
            f"{daemon.url}/v1/models",
            headers={"Authorization": f"Bearer {daemon.token}"},
            timeout=SAFETY_S,
        )
        assert health.status_code == 200, health.text
        assert models.status_code == 200, models.text

        answers = [read_until_closed(sock) for sock in slow]  # each ends: none is kept
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    head_late = [a for a in answers if b"request head did not arrive within 2 s" in a]
    body_late = [a for a in answers if b"request body did not arrive within 2 s" in a]
    assert len(refused) == count - 64  # server.max_connections_per_client
    assert b"too_many_connections" in refused[0]
    assert len(head_late) + len(body_late) == 64
    assert head_late and body_late
    assert all(a.startswith(b"HTTP/1.1 408") for a in head_late + body_late)
    print(f"\n{count} slow connections: /healthz answered in {health_s * 1000:.0f} ms")


def test_an_answer_slower_than_the_deadlines_is_not_cut(tmp_path: Path):
    """The deadlines cover reading a request, not answering it (a long generation)."""
    home = Home(tmp_path / "home").ensure()
    settings = Settings(server=ServerSettings(header_timeout_s=0.3, body_timeout_s=0.3))
    app = create_app(home, settings)

    @app.post("/slow-answer")
    async def slow_answer() -> dict[str, str]:
        await asyncio.sleep(1.0)
        return {"status": "done"}

    with BackgroundServer(app) as running, httpx.Client(timeout=SAFETY_S) as client:
        for _ in range(2):  # the second on the same kept-alive connection
            response = client.post(f"{running.url}/slow-answer", content=b"{}")
            assert response.json() == {"status": "done"}


def test_a_slow_second_request_on_a_kept_alive_connection_is_closed(daemon: Served):
    with connect(daemon.port, "127.0.0.1") as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # then nothing more
        assert b"HTTP/1.1 408" in read_until_closed(sock)


def test_at_the_cap_the_oldest_idle_connection_makes_room(tmp_path: Path):
    """Hoarders from many addresses fill the cap; a request that arrives whole is served."""
    cap = 4
    for served in serve(tmp_path, max_connections=cap, header_timeout_s=2.0):
        with ExitStack() as stack:
            hoarders = [
                stack.enter_context(connect(served.port, f"127.0.0.{10 + i}"))
                for i in range(cap + LOOPBACK_RESERVE)
            ]
            for sock in hoarders:
                sock.sendall(HALF_HEAD)
            health = httpx.get(f"{served.url}/healthz", timeout=SAFETY_S)
            assert health.status_code == 200
            evicted = read_until_closed(hoarders[0])  # the oldest
            assert evicted.startswith(b"HTTP/1.1 503") and b"too_many_connections" in evicted
            for sock in hoarders[2:]:  # [1] may have made room for the second client
                assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_connections_busy_with_a_request_are_not_evicted(tmp_path: Path):
    cap = 4
    for served in serve(tmp_path, max_connections=cap, body_timeout_s=2.0):
        with ExitStack() as stack:
            busy = [
                stack.enter_context(connect(served.port, f"127.0.0.{10 + i}"))
                for i in range(cap + LOOPBACK_RESERVE)
            ]
            for sock in busy:  # a head, then the body is awaited (100 Continue says so)
                sock.sendall(HALF_BODY.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            for sock in busy:
                assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            with connect(served.port, "127.0.0.99") as late:
                refused = read_until_closed(late)
            assert refused.startswith(b"HTTP/1.1 503") and b"too_many_connections" in refused
            for sock in busy:
                assert b"HTTP/1.1 408" in read_until_closed(sock)


LIMITS = ConnectionLimits(
    header_timeout_s=10, body_timeout_s=30, max_connections=3, max_per_client=2
)


class FakeConnection:
    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_per_client_cap_counts_an_ipv6_client_by_its_64():
    guard = ConnectionGuard(LIMITS)
    assert guard.admit("2001:db8::1") is None
    assert guard.admit("2001:db8::ffff:2") is None
    assert "max_connections_per_client" in (guard.admit("2001:db8::3") or "")
    assert guard.admit("2001:db8:0:1::1") is None  # another /64, another client
    guard.release(FakeConnection(), "2001:db8::1")
    assert guard.by_client["2001:db8::/64"] == 1


def test_the_loopback_reserve_is_for_loopback_only():
    guard = ConnectionGuard(LIMITS)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert guard.admit(host) is None
    assert "max_connections" in (guard.admit("10.0.0.4") or "")
    assert guard.admit("127.0.0.1") is None  # the box's own supervisor still gets in
    assert guard.admit("::ffff:10.0.0.5") is not None
    assert guard.open == 4


def test_at_the_cap_the_longest_idle_is_evicted_first():
    guard = ConnectionGuard(LIMITS)
    first, second, third = FakeConnection(), FakeConnection(), FakeConnection()
    for connection, host in ((first, "10.0.0.1"), (second, "10.0.0.2"), (third, "10.0.0.3")):
        assert guard.admit(host) is None
        guard.mark_idle(connection, host)
    guard.mark_busy(first)  # its head arrived: it holds its place
    guard.mark_idle(first, "10.0.0.1")  # answered, kept alive: idle again, the newest
    assert guard.admit("10.0.0.4") is None
    assert (first.evicted, second.evicted, third.evicted) == (False, True, False)
    assert guard.open == 3 and "10.0.0.2" not in guard.by_client


def test_rate_limited_log_writes_one_line_and_a_count(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.rate"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for _ in range(1000):
            log.note("accept", "cannot accept connections: [Errno 24] Too many open files")
        now[0] = 10.5
        log.note("accept", "cannot accept connections: [Errno 24] Too many open files")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "cannot accept connections: [Errno 24] Too many open files",
        "cannot accept connections: [Errno 24] Too many open files (and 999 more like it in 10 s)",
        "cannot accept connections: [Errno 24] Too many open files",
    ]


def test_accept_errors_are_not_a_traceback_flood(caplog: pytest.LogCaptureFixture):
    """What asyncio reports for every failed accept() while the process has no descriptor."""
    handler = LoopErrors()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(2000):
                error = OSError(24, "Too many open files")
                handler(loop, {"message": LoopErrors.ACCEPT_FAILED, "exception": error})
            error = RuntimeError("boom")
            for _ in range(2000):
                failed = {"message": "Task exception was never retrieved", "exception": error}
                handler(loop, failed)
    finally:
        loop.close()
    assert len(caplog.records) == 2  # one per kind; the counts follow once a window ends
    assert caplog.records[0].exc_info is None
    assert "Too many open files" in caplog.records[0].getMessage()


def test_housekeeping_that_keeps_failing_logs_one_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Out of file descriptors, every round fails; 50 rounds are one traceback, not 50."""
    from appliance.api import app as app_module

    home = Home(tmp_path / "home").ensure()
    app = create_app(home, Settings(runtime=RuntimeSettings(refresh_interval_s=0.01)))
    rounds: list[int] = []

    def no_descriptors(*_: object) -> None:
        rounds.append(1)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(app_module, "_scan_inbox", no_descriptors)

    async def run() -> None:
        task = asyncio.create_task(app_module._housekeeping(app))
        while len(rounds) < 50:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="appliance.daemon"):
        asyncio.run(asyncio.wait_for(run(), SAFETY_S))
    assert len([r for r in caplog.records if r.exc_info]) == 1
