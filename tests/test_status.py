"""`appliance status` and `GET /status`: the same document, up and down, healthy and not.

The daemon-up cases run the real daemon (Gemma demo bundle) in this process and call the
CLI against it; the planted faults are the ones a field tech meets: a bundle file changed
on disk, a full outbox, an uplink that is down while escalations wait and expire.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from appliance.cli import main
from appliance.forward import uplinks
from appliance.governance.escalation import Escalation
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings, Settings, SyncSettings, UpstreamSettings
from appliance.status import advice, hardware, render
from appliance.upstream.monitor import UplinkState
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon

MAX_ITEMS = 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings() -> Settings:
    return Settings(
        upstreams=[
            UpstreamSettings(
                name="cloud",
                kind="openai",
                base_url=f"http://127.0.0.1:{_closed_port()}/v1",
                model="big-model",
            )
        ],
        outbox=OutboxSettings(max_items=MAX_ITEMS, ttl_s=3600),
        sync=SyncSettings(probe_interval_s=0.2, interval_s=0.2, backoff_max_s=0.5),
    )


def _config_toml(settings: Settings) -> str:
    upstream = settings.upstreams[0]
    return (
        f"[outbox]\nmax_items = {settings.outbox.max_items}\n"
        f'[[upstreams]]\nname = "{upstream.name}"\nkind = "openai"\n'
        f'base_url = "{upstream.base_url}"\nmodel = "{upstream.model}"\n'
    )


def _item(created: datetime | None = None) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at=(created or datetime.now(UTC)).isoformat(),
        upstream="cloud",
        endpoint="chat",
        messages=({"role": "user", "content": "hello"},),
        mapping={},
    )


def _status(home: Home, monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, dict]:
    monkeypatch.setenv("APPLIANCE_HOME", str(home.root))
    code = main(["status", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def _problems(doc: dict) -> str:
    return "\n".join(f"{p['what']} -> {p['do']}" for p in doc["problems"])


# -- the daemon down -------------------------------------------------------------------


def test_a_fresh_home_with_no_daemon_is_down(home: Home, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    code, doc = _status(home, monkeypatch, capsys, "--url", url)
    assert code == 2 and doc["exit_code"] == 2 and doc["health"] == "down"
    assert doc["daemon"]["up"] is False and "no answer" in doc["daemon"]["error"]
    problems = _problems(doc)
    assert "the daemon is not running" in problems and "systemctl start appliance" in problems
    assert "no model is active" in problems and "appliance bundle install" in problems
    assert not home.state_db.exists()  # a status check creates nothing
    # The same on a terminal: problems first, each with what to do.
    monkeypatch.setenv("APPLIANCE_HOME", str(home.root))
    assert main(["status", "--url", url]) == 2
    screen = capsys.readouterr().out
    assert "DOWN" in screen and "→ start it" in screen


def test_daemon_down_reads_the_outbox_and_the_last_uplink_states(home: Home, monkeypatch, capsys):
    settings = _settings()
    home.config_file.write_text(_config_toml(settings))
    with Outbox(home, settings.outbox) as outbox:
        old = _item(datetime.now(UTC) - timedelta(hours=3))
        outbox.enqueue_many([old, _item(), _item()])
        outbox.fail(old.id, "test", "HTTP 400: bad request")
    uplinks.save(
        home,
        [UplinkState("cloud", up=False, last_error="ConnectError: refused", failures=3)],
    )
    code, doc = _status(home, monkeypatch, capsys, "--url", f"http://127.0.0.1:{_closed_port()}")
    assert code == 2
    assert doc["outbox"]["counts"] == {
        "queued": 2,
        "sending": 0,
        "done": 0,
        "failed": 1,
        "expired": 0,
    }
    [link] = doc["uplinks"]
    assert (link["up"], link["source"], link["last_error"]) == (
        False,
        "last seen by the daemon",
        "ConnectError: refused",
    )
    assert doc["sync"]["waiting"] == "no uplink is up"
    problems = _problems(doc)
    assert "2 escalations waiting" in problems and "appliance outbox export" in problems
    assert "1 escalations failed for good" in problems
    assert "appliance outbox list --state failed" in problems
    sources = [e["source"] for e in doc["errors"]]
    assert f"escalation {old.id}" in sources and "uplink cloud" in sources


def test_status_of_a_100k_outbox_is_quick_to_build(home: Home):
    """Counts come from indexes and the usage tally, not a table scan (timed in the bench)."""
    from appliance.status import document

    with Outbox(home, OutboxSettings(max_items=200_000)) as outbox:
        outbox.enqueue_many([_item() for _ in range(2000)])
    doc = document.build(home, Settings(), daemon={"up": False, "url": "x"}, gpus=[])
    assert doc["outbox"]["counts"]["queued"] == 2000 and doc["outbox"]["items"] == 2000


# -- the daemon up ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("status-daemon")
    d = start_daemon(root / "home", gemma_source(root), _settings())
    d.home.config_file.write_text(_config_toml(_settings()))
    yield d
    d.server.stop()


def test_a_healthy_daemon_says_so_and_the_cli_shows_the_same_document(
    daemon: Daemon, monkeypatch, capsys
):
    # This machine's own state is not under test here (its findings have their own tests
    # below): a shared CI disk that is nearly full, or a busy host, must not fail it.
    monkeypatch.setattr(advice, "DISK_FREE_MIN_PERCENT", 0.0)
    monkeypatch.setattr(advice, "DISK_FREE_MIN_BYTES", 0)
    monkeypatch.setattr(advice, "MEMORY_USED_MAX_PERCENT", 101.0)
    monkeypatch.setattr(advice, "HOT_CELSIUS", 1000.0)
    code, doc = _status(daemon.home, monkeypatch, capsys, "--url", daemon.url)
    assert (code, doc["health"], doc["problems"]) == (0, "healthy", []), _problems(doc)
    assert doc["daemon"]["up"] is True and doc["daemon"]["pid"] == os.getpid()
    assert doc["daemon"]["rss_bytes"] > 200 * 1024 * 1024  # the model is in there
    [model] = doc["models"]
    assert (model["name"], model["loaded"], model["device"]) == (MODEL, True, "cpu")
    assert (model["slots"], model["busy"]) == (4, 0)  # [runtime] slots, none generating
    assert model["signers"] and model["files_changed"] == []
    console = Console(width=200, record=True)
    console.print(render.render(doc))
    assert "cpu, 0 of 4 slots busy" in console.export_text()
    assert doc["uplinks"][0]["source"] == "live"
    # GET /status from the box itself needs no token; from elsewhere it would.
    direct = httpx.get(f"{daemon.url}/status", timeout=30).json()
    assert direct.keys() == doc.keys() and direct["models"] == doc["models"]
    # No path over HTTP; the field tech at the box still reads where the home is.
    assert str(daemon.home.root) not in json.dumps(direct)
    assert doc["home"] == str(daemon.home.root)


def test_status_from_the_network_needs_a_token(daemon: Daemon):
    from fastapi.testclient import TestClient

    client = TestClient(daemon.app, base_url="http://127.0.0.1", client=("203.0.113.10", 5000))
    assert client.get("/status").status_code == 401
    authorized = {"Authorization": f"Bearer {daemon.infer_token}"}
    assert client.get("/status", headers=authorized).status_code == 200


def test_planted_faults_make_the_box_degraded_with_advice(daemon: Daemon, monkeypatch, capsys):
    home = daemon.home
    # A full outbox, with an uplink that is down: items wait, some expire.
    with Outbox(home, _settings().outbox) as outbox:
        stale = _item(datetime.now(UTC) - timedelta(hours=2))  # past the 1 h TTL
        outbox.enqueue_many([stale, _item(), _item(), _item()])
        outbox.expire()
        outbox.enqueue(_item())
    # A payload file of the active model changed on disk after install.
    [weights] = (home.bundles_dir / MODEL).glob("*/payload/*.gguf")
    size, mtime = weights.stat().st_size, weights.stat().st_mtime
    os.chmod(weights, 0o644)
    with weights.open("ab") as f:
        f.write(b"\0")  # (the model is loaded: only the file on disk changes)
    try:
        code, doc = _status(home, monkeypatch, capsys, "--url", daemon.url)
    finally:
        os.truncate(weights, size)
        os.utime(weights, (mtime, mtime))
        os.chmod(weights, 0o444)
    assert (code, doc["health"]) == (1, "degraded")
    problems = _problems(doc)
    assert "outbox 100% full (4 of 4 items): new escalations will be refused" in problems
    assert "escalations waiting" in problems and "no uplink is up" in problems
    assert "1 escalations expired before an uplink came" in problems
    assert "appliance outbox retry ID" in problems
    assert f"bundle {MODEL} 1.0.0 was changed on disk after install" in problems
    assert f"expected {size}" in problems
    assert "appliance doctor" in problems
    [link] = doc["uplinks"]
    assert link["up"] is False and link["source"] == "live" and link["last_error"]


# -- pieces ----------------------------------------------------------------------------


def test_nvidia_smi_lines_are_parsed_and_na_is_none():
    gpu = hardware.parse_gpu_line("0, NVIDIA H100 80GB HBM3, 1024, 81559, 37, 41, [N/A]")
    assert gpu == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_used_mib": 1024.0,
        "memory_total_mib": 81559.0,
        "utilization_percent": 37.0,
        "temperature_celsius": 41.0,
        "power_watts": None,
    }


def test_a_fake_nvidia_smi_fills_the_gpu_section(tmp_path: Path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, Test GPU, 100, 8000, 5, 95, 70.5'\n")
    smi.chmod(0o755)
    [gpu] = hardware.gpus(str(smi))
    assert gpu["name"] == "Test GPU" and gpu["power_watts"] == 70.5
    document = {
        "hardware": {
            "disk": {"free_bytes": 100 * advice.GiB, "free_percent": 50.0, "path": "/"},
            "memory_used_percent": 10.0,
            "temperatures": [],
        },
        "gpus": [gpu],
    }
    [hot] = advice._hardware_problems(document)
    assert "GPU 0 at 95 °C" in hot["what"] and "fans" in hot["do"]


def test_low_disk_is_a_problem():
    document = {
        "hardware": {
            "disk": {"free_bytes": advice.GiB, "free_percent": 1.0, "path": "/var/lib/appliance"},
            "memory_used_percent": 10.0,
            "temperatures": [{"label": "cpu", "celsius": 99.0, "high_celsius": None}],
        },
        "gpus": [],
    }
    disk, heat = advice._hardware_problems(document)
    assert "disk nearly full: 1.0 GiB (1%) free" in disk["what"]
    assert "appliance outbox purge" in disk["do"]
    assert "cpu at 99 °C" in heat["what"]


def test_a_file_modified_after_install_is_noticed(tmp_path: Path):
    from appliance.status.document import files_changed

    (tmp_path / "w.gguf").write_bytes(b"1234")
    entry = [{"path": "w.gguf", "size": 4}]
    assert files_changed(tmp_path, entry, "2999-01-01T00:00:00Z") == []
    assert files_changed(tmp_path, entry, "2020-01-01T00:00:00Z") == [
        "w.gguf: modified after install"
    ]
    assert files_changed(tmp_path, [{"path": "gone.gguf", "size": 1}], "2999-01-01T00:00:00Z") == [
        "gone.gguf: missing"
    ]


def test_the_console_script_takes_the_fast_path_for_status(home: Home, capsys):
    from appliance import _entry

    url = f"http://127.0.0.1:{_closed_port()}"
    assert _entry.main(["--debug", "status", "--json", "--url", url]) == 2
    assert json.loads(capsys.readouterr().out)["health"] == "down"
    assert _entry.main(["status", "--url", "not a url at all"]) == 2  # bad usage
    assert "is not an http:// address" in capsys.readouterr().err
    assert _entry.main(["status", "--bogus"]) == 2  # usage error
    assert "--bogus" in capsys.readouterr().err
    home.config_file.write_text("[server]\nport = 'x'\n")
    # an invalid config.toml is the screen's first finding, not the end of it (issue 19)
    assert _entry.main(["status", "--url", url]) == 2
    assert "config.toml is invalid" in capsys.readouterr().out
    assert _entry.main(["--version"]) == 0  # everything else: the full CLI
    assert "appliance" in capsys.readouterr().out


def test_watch_refreshes_until_interrupted(home: Home):
    """--watch redraws every 2 s on a terminal; Ctrl-C ends it with the last health."""
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "APPLIANCE_HOME": str(home.root), "COLUMNS": "200", "LINES": "60"}
    url = f"http://127.0.0.1:{_closed_port()}"
    master, slave = pty.openpty()  # a terminal, so that rich redraws in place
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "status", "--watch", "--url", url],
        env=env,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 30
    while screen.count(b"the daemon is not running") < 2 and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            screen += os.read(master, 65536)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    os.close(master)
    assert screen.count(b"the daemon is not running") >= 2  # drawn, then redrawn
    assert process.returncode == 2
