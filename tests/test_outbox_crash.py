"""SIGKILL under load: no escalation a device was told about is ever lost or paid twice.

The real daemon runs as a child process (`python -m appliance serve`) with the Gemma demo
bundle and a policy that queues every request for the upstream. Client threads keep
sending; an escalation counts as *acknowledged* only when the device got a 200 with route
``queued`` and its escalation id. The daemon is killed with SIGKILL at random moments, many
times, and restarted: in half of the cycles the fake upstream is down (items pile up), in the
other half it is up, so kills also land while the daemon is sending and completing items.
The random delay runs from the cycle's first acknowledgement, not from ``/readyz``: the first
answer after a start can take seconds on a busy 2-core box, and a kill before it would test
an idle daemon.

After the last restart: every acknowledged id is in the outbox, exactly once; all of them
reach the upstream at least once; the upstream never accepted one idempotency key twice
(a resend after a crash carries the same key and is answered, not charged again).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.api.server import free_port
from appliance.home import Home
from tests.daemon import MODEL, gemma_home
from tests.fake_upstream import FakeUpstream

KILLS = 8
CLIENTS = 3
FIRST_ACK_S = 60  # the longest a restarted daemon may take to acknowledge its first request
SEED = 20261128
POLICY = """
schema = 1
name = "crash-test"
default_class = "public"
[classes.public]
egress = "allowed"
[cascade]
confidence_threshold = 1.0
escalation = "queue"
"""


class Load:
    """Client threads sending requests until stopped; they keep the acknowledged ids."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.acked: list[str] = []
        self.sent = 0
        self.first = threading.Event()  # set on the first acknowledgement
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, client: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"{self.prefix}-{client}-{n}: hi"}],
                    "max_tokens": 1,
                }
                try:
                    response = http.post(f"{self.url}/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    time.sleep(0.05)  # killed, or not listening yet
                    continue
                with self._lock:
                    self.sent += 1
                if (
                    response.status_code == 200
                    and response.headers.get("X-Appliance-Route") == "queued"
                ):
                    with self._lock:
                        self.acked.append(response.headers["X-Appliance-Escalation-Id"])
                    self.first.set()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-crash") as server:
        yield server


def _prepare(root: Path, fake: FakeUpstream, port: int) -> Home:
    home = gemma_home(root)
    (root / "upstream.key").write_text("sk-crash\n")
    (root / "policy.toml").write_text(POLICY)
    home.config_file.write_text(
        f"""
policy_file = "{root / "policy.toml"}"
[server]
port = {port}
auth = "none"
[outbox]
lease_s = 1.5
[sync]
interval_s = 0.1
probe_interval_s = 0.2
backoff_base_s = 0.1
backoff_max_s = 0.3
[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "{fake.url}"
model = "big-model"
api_key_file = "{root / "upstream.key"}"
"""
    )
    return home


def _start(home: Home, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "APPLIANCE_HOME": str(home.root), "APPLIANCE_LOG_LEVEL": "warning"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve"], env=env, stdout=out, stderr=out
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the daemon exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the daemon did not become ready")


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _rows(home: Home, *, check: bool = False) -> list[tuple[str, str]]:
    """(id, state) of every outbox item, read-only; `check`: PRAGMA integrity_check first."""
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=10)
    try:
        if check:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT id, state FROM outbox").fetchall()
    finally:
        conn.close()


def test_sigkill_under_load_loses_nothing_and_charges_nothing_twice(
    tmp_path: Path, fake: FakeUpstream
):
    rng = random.Random(SEED)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = _prepare(tmp_path, fake, port)
    log = tmp_path / "daemon.log"
    acked: list[str] = []
    sent = 0
    waited = {"ready": 0.0, "first ack": 0.0, "drain": 0.0}  # seconds, for the summary
    process = _start(home, log)
    try:
        for cycle in range(KILLS):
            if cycle % 2 == 0:  # the last cycle (odd) leaves items queued for the final drain
                fake.up()  # the daemon drains while it is being killed
            else:
                fake.down()
            start = time.monotonic()
            _wait_ready(url, process, log)
            waited["ready"] += time.monotonic() - start
            with Load(url, f"c{cycle}") as load:
                start = time.monotonic()
                assert load.first.wait(FIRST_ACK_S), f"cycle {cycle}: nothing acknowledged"
                waited["first ack"] += time.monotonic() - start
                time.sleep(rng.uniform(0.2, 1.5))
                _kill(process)  # mid-request, mid-commit, mid-send: wherever it is
            acked += load.acked
            sent += load.sent
            process = _start(home, log)

        # After the last crash: every acknowledged escalation is there, exactly once.
        _wait_ready(url, process, log)
        rows = _rows(home, check=True)
        ids = [row[0] for row in rows]
        assert len(ids) == len(set(ids))
        missing = set(acked) - set(ids)
        assert not missing, f"{len(missing)} acknowledged escalations lost"
        assert len(acked) == len(set(acked))
        assert len(acked) > KILLS, f"too little load to mean anything: {len(acked)}"

        # The uplink stays up: all of them reach the upstream.
        fake.up()
        start = time.monotonic()
        deadline = start + 120
        while True:
            states = dict(_rows(home))
            waiting = [i for i in acked if states.get(i) != "done"]
            if not waiting:
                waited["drain"] = time.monotonic() - start
                break
            assert time.monotonic() < deadline, f"{len(waiting)} never delivered"
            time.sleep(0.2)
    finally:
        _kill(process)

    keys = {r.headers.get("idempotency-key") for r in fake.requests}
    assert set(acked) <= keys  # each reached the upstream at least once
    twice = {k: n for k, n in fake.accepted_keys.items() if n > 1}
    assert not twice, f"idempotency keys accepted more than once: {twice}"
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    print(
        f"\n{KILLS} SIGKILLs, {sent} requests answered, {len(acked)} acknowledged as queued, "
        f"{len(fake.requests)} upstream requests, {len(fake.accepted_keys)} keys accepted once; "
        + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in waited.items())
    )
