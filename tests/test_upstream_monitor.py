"""UplinkMonitor with an injected clock against fake upstreams.

The clock is injected so that backoff is checked exactly (within its jitter) without any
test sleeping through a real probe interval.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from appliance.settings import SyncSettings
from appliance.upstream import UplinkMonitor, UpstreamClient, UpstreamError
from appliance.upstream.monitor import UplinkState
from tests.fake_upstream import FakeUpstream
from tests.test_upstream import KEY, make_settings

SYNC = SyncSettings(probe_interval_s=10.0, backoff_max_s=50.0)


class FakeClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clients(tmp_path: Path, **fakes: FakeUpstream) -> dict[str, UpstreamClient]:
    out = {}
    for name, fake in fakes.items():
        settings = make_settings(fake.url, "openai", tmp_path / name)
        out[name] = UpstreamClient(settings, timeout_s=2, probe_timeout_s=0.5)
    return out


async def close(monitor: UplinkMonitor) -> None:
    for client in monitor.clients.values():
        await client.aclose()


@pytest.fixture(autouse=True)
def _key_folders(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()


def test_good_probe_marks_up(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        with FakeUpstream(api_key=KEY) as fake:
            monitor = UplinkMonitor(
                clients(tmp_path, a=fake), SYNC, clock, wall_clock=lambda: 1.7e9
            )
            assert not monitor.is_up("a")  # never probed: down
            assert not monitor.is_up("unknown")
            await monitor.probe_due()
            assert monitor.is_up("a")
            assert monitor.states() == [
                UplinkState(
                    name="a", up=True, last_ok_at=1.7e9, last_error=None, failures=0,
                    next_probe_at=1010.0, checked_at=1.7e9,
                )
            ]  # fmt: skip
            await monitor.probe_due()  # not due yet: no request
            clock.now = 1009.9
            await monitor.probe_due()
            assert len(fake.requests) == 1
            clock.now = 1010.0
            await monitor.probe_due()
            assert len(fake.requests) == 2
            await close(monitor)

    asyncio.run(main())


def test_down_with_growing_capped_backoff(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        with FakeUpstream(api_key=KEY) as fake:
            monitor = UplinkMonitor(clients(tmp_path, a=fake), SYNC, clock, rng=random.Random(1))
            await monitor.probe_due()
            assert monitor.is_up("a")
            fake.down()
            expected = [10.0, 20.0, 40.0, 50.0, 50.0]
            for failures, base in enumerate(expected, start=1):
                clock.now = monitor.states()[0].next_probe_at
                await monitor.probe_due()
                [state] = monitor.states()
                assert not state.up and state.failures == failures
                assert state.last_error and "failed" in state.last_error
                delay = state.next_probe_at - clock.now
                assert base * 0.9 <= delay <= min(base * 1.1, SYNC.backoff_max_s)
            fake.up()
            clock.now = monitor.states()[0].next_probe_at
            await monitor.probe_due()
            [state] = monitor.states()
            assert state.up and state.failures == 0 and state.last_error is None
            assert state.next_probe_at == clock.now + SYNC.probe_interval_s
            await close(monitor)

    asyncio.run(main())


def test_jitter_spreads_probes(tmp_path: Path) -> None:
    async def main() -> None:
        with FakeUpstream() as fake:
            fake.down()
            delays = set()
            for seed in range(8):
                clock = FakeClock()
                monitor = UplinkMonitor(
                    clients(tmp_path, a=fake), SYNC, clock, rng=random.Random(seed)
                )
                await monitor.probe_due()
                delays.add(round(monitor.states()[0].next_probe_at - clock.now, 6))
                await close(monitor)
            assert len(delays) > 1 and all(9.0 <= d <= 11.0 for d in delays)

    asyncio.run(main())


def test_refused_key_counts_as_down(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        with FakeUpstream(api_key="sk-another") as fake:
            monitor = UplinkMonitor(clients(tmp_path, a=fake), SYNC, clock)
            await monitor.probe_due()
            [state] = monitor.states()
            assert not state.up and state.failures == 1
            assert state.last_error and "check the API key" in state.last_error
            assert KEY not in state.last_error
            await close(monitor)

    asyncio.run(main())


def test_probes_run_concurrently(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        with FakeUpstream(api_key=KEY) as slow, FakeUpstream(api_key=KEY) as good:
            slow.timeout(0.4, probes=True)
            monitor = UplinkMonitor(clients(tmp_path, a=slow, b=good), SYNC, clock)
            started = time.monotonic()
            await monitor.probe_due()
            assert time.monotonic() - started < 0.9  # one probe's timeout, not two
            assert not monitor.is_up("a") and monitor.is_up("b")
            await close(monitor)

    asyncio.run(main())


def test_mark_down_and_up() -> None:
    clock = FakeClock()
    client = object()  # never called: mark_* do no I/O
    monitor = UplinkMonitor({"a": client}, SYNC, clock, wall_clock=lambda: 5.0)  # type: ignore[dict-item]
    monitor.mark_up("a")
    assert monitor.is_up("a") and monitor.states()[0].last_ok_at == 5.0
    monitor.mark_down("a", UpstreamError("upstream a: HTTP 503", retryable=True, status=503))
    [state] = monitor.states()
    assert not state.up and state.failures == 1 and state.last_error == "upstream a: HTTP 503"
    assert 9.0 <= state.next_probe_at - clock.now <= 11.0
    # Retry-After longer than the backoff wins (capped at backoff_max_s).
    monitor.mark_down("a", UpstreamError("x", retryable=True, retry_after_s=45.0))
    assert monitor.states()[0].next_probe_at - clock.now == 45.0
    monitor.mark_down("a", UpstreamError("x", retryable=True, retry_after_s=4000.0))
    assert monitor.states()[0].next_probe_at - clock.now == SYNC.backoff_max_s
    monitor.mark_down("a", "sync: connection reset")
    assert monitor.states()[0].last_error == "sync: connection reset"
    assert monitor.states()[0].failures == 4
    monitor.mark_up("a")
    assert monitor.is_up("a") and monitor.states()[0].failures == 0
    monitor.mark_up("unknown")  # an upstream no longer configured: ignored
    monitor.mark_down("unknown", "x")
    assert not monitor.is_up("unknown")
    states = monitor.states()
    states[0].up = False  # a snapshot: changing it changes nothing
    assert monitor.is_up("a")


def test_run_until_stopped(tmp_path: Path) -> None:
    async def main() -> None:
        with FakeUpstream(api_key=KEY) as fake:
            monitor = UplinkMonitor(clients(tmp_path, a=fake), SYNC)
            stop = asyncio.Event()
            task = asyncio.create_task(monitor.run(stop))
            for _ in range(100):
                if monitor.is_up("a"):
                    break
                await asyncio.sleep(0.02)
            assert monitor.is_up("a")
            stop.set()
            await asyncio.wait_for(task, 1.5)
            assert len(fake.requests) == 1  # the next probe is 10 s away
            await close(monitor)

    asyncio.run(main())


def test_run_with_no_upstreams_stops() -> None:
    async def main() -> None:
        monitor = UplinkMonitor({}, SYNC)
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 1.5)
        assert monitor.states() == []

    asyncio.run(main())
