"""`appliance serve` and `appliance status` together, as a field tech meets them (issue 19).

A real `appliance serve` process (the Gemma demo bundle) on a non-default port: status finds
it through the home's daemon record without being told the port; a second serve on that port
fails at once, in one line, exit 3, before loading anything; a clean stop removes the record;
a stale record never makes status claim the daemon is up. An invalid config.toml still gets
the whole screen, the config error first; --watch fits the window, and prints whole
snapshots when piped.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from rich.console import Console

from appliance import runfile
from appliance.cli import main
from appliance.errors import EXIT_CODES, SURFACES, StartupError
from appliance.home import Home
from appliance.status import cli as status_cli
from appliance.status import render
from tests.daemon import gemma_home

BAD_CONFIG = "[server]\nport = 'x'\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Home) -> dict[str, str]:
    return {**os.environ, "APPLIANCE_HOME": str(home.root)}


def _status(home: Home, monkeypatch, capsys, *args: str) -> tuple[int, dict]:
    monkeypatch.setenv("APPLIANCE_HOME", str(home.root))
    code = main(["status", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def _wait_until_serving(process: subprocess.Popen[bytes], home: Home) -> runfile.DaemonRecord:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        record = runfile.read(home)
        if record is not None:
            try:
                if httpx.get(f"{record.url}/readyz", timeout=5).status_code == 200:
                    return record
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise AssertionError("appliance serve did not become ready")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, int]]:
    """`appliance serve --port P` in its own process, P not the default."""
    home = gemma_home(tmp_path_factory.mktemp("serve-runfile"))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--port", str(port)],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_serving(process, home)
        yield home, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def _serve_process(home: Home) -> int:
    record = runfile.read(home)
    assert record is not None
    return record.pid


def test_status_finds_a_daemon_on_a_non_default_port(served, monkeypatch, capsys):
    home, port = served
    record = runfile.read(home)
    assert record is not None and (record.host, record.port) == ("127.0.0.1", port)
    assert runfile.is_running(record)
    assert stat.S_IMODE(home.daemon_file.stat().st_mode) == 0o600
    code, doc = _status(home, monkeypatch, capsys)  # no --url, no --port
    assert doc["daemon"]["up"] is True, doc["daemon"]
    assert doc["daemon"]["url"] == f"http://127.0.0.1:{port}"
    assert doc["daemon"]["pid"] == record.pid and code == doc["exit_code"]
    assert [m["loaded"] for m in doc["models"]] == [True]
    # explicit flags still win over the record
    code, doc = _status(home, monkeypatch, capsys, "--port", str(_free_port()))
    assert code == 2 and doc["daemon"]["up"] is False


def test_an_invalid_config_still_gets_the_screen_with_the_error_first(
    served, monkeypatch, capsys
):
    home, _ = served
    home.config_file.write_text(BAD_CONFIG)
    try:
        code, doc = _status(home, monkeypatch, capsys)
        # the daemon is found through its record although config.toml cannot be read
        assert doc["daemon"]["up"] is True
        first = doc["problems"][0]
        assert first["what"].startswith("config.toml is invalid:")
        assert "server.port" in first["what"]
        assert "will not start again until it is fixed" in first["do"]
        assert (code, doc["health"]) == (1, "degraded")
        assert doc["errors"][0]["source"] == "config"
        assert main(["status"]) == 1
        screen = capsys.readouterr().out
        assert screen.index("config.toml is invalid") < screen.index("daemon  up")
    finally:
        home.config_file.unlink()


def test_a_second_serve_on_the_port_fails_at_once_in_one_line(served):
    home, port = served
    before = home.daemon_file.read_bytes()
    second = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--port", str(port)],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 3
    # one line, naming the address and what to do; no log line at all: nothing was loaded
    # (no model, no policy) before the port was checked
    assert second.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use (another "
        "appliance serve? appliance status says which); stop it, or pick another with --port"
    ]
    assert home.daemon_file.read_bytes() == before  # the running daemon's record stands


def test_a_clean_stop_removes_the_record(served, monkeypatch, capsys):
    """Runs last of the daemon tests: it stops the module's daemon."""
    home, _ = served
    pid = _serve_process(home)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while home.daemon_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not home.daemon_file.exists()
    _, doc = _status(home, monkeypatch, capsys)
    assert doc["daemon"]["up"] is False and "no longer runs" not in doc["daemon"]["error"]


# -- without a daemon --------------------------------------------------------------------


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Another service that answers GET /status with a healthy-looking document."""

    def do_GET(self) -> None:
        body = json.dumps({"health": "healthy", "exit_code": 0, "daemon": {"up": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)
    return int(done.stdout)


def test_a_stale_record_never_makes_status_claim_up(home: Home, impostor: int, monkeypatch, capsys):
    home.config_file.write_text(f"[server]\nport = {_free_port()}\n")
    ours = runfile.this_process("127.0.0.1", impostor, "0.1.0")
    for stale in (
        replace(ours, pid=_dead_pid()),  # killed: its pid is gone
        replace(ours, started=ours.started - 3600),  # its pid now belongs to another process
    ):
        runfile.write(home, stale)
        assert runfile.running(home) is None
        code, doc = _status(home, monkeypatch, capsys)
        assert (code, doc["daemon"]["up"]) == (2, False)
        assert str(impostor) not in doc["daemon"]["url"]
        assert f"daemon.json names pid {stale.pid}, which no longer runs" in doc["daemon"]["error"]
    runfile.write(home, ours)  # a live record is used (here: this test process)
    assert runfile.running(home) == ours
    runfile.remove(home, replace(ours, port=1))  # someone else's record: left alone
    assert home.daemon_file.exists()
    runfile.remove(home, ours)
    assert not home.daemon_file.exists()


def test_an_invalid_config_with_the_daemon_down(home: Home, monkeypatch, capsys):
    home.config_file.write_text(BAD_CONFIG)
    code, doc = _status(home, monkeypatch, capsys, "--port", str(_free_port()))
    assert code == 2 and doc["health"] == "down"
    assert doc["problems"][0]["what"].startswith("config.toml is invalid")
    assert "the daemon will not start until it is fixed" in doc["problems"][0]["do"]
    assert doc["problems"][1]["what"].startswith("the daemon is not running")
    assert not home.state_db.exists()  # still creates nothing


def test_every_exit_code_is_listed_in_one_place():
    assert {s.exit_code for s in SURFACES.values()} <= set(EXIT_CODES)
    assert StartupError("x").exit_code == 3
    assert set(EXIT_CODES) == {0, 1, 2, 3}


# -- --watch -------------------------------------------------------------------------------


def test_watch_fits_a_small_window_problems_first(home: Home, monkeypatch):
    home.config_file.write_text(BAD_CONFIG)
    target = status_cli.Target(f"http://127.0.0.1:{_free_port()}")
    from appliance.settings import Settings

    doc = status_cli.collect(home, Settings(), target, "config.toml: broken")
    for width, height in ((80, 24), (60, 12)):
        console = Console(width=width, height=height, record=True)
        console.print(render.fitted(doc))
        lines = console.export_text().splitlines()
        assert len(lines) <= height - 1 and all(len(line) <= width for line in lines)
        text = "\n".join(lines)
        assert "config.toml is invalid" in text and "hidden to fit the window" in text
    tall = Console(width=200, height=200, record=True)
    tall.print(render.fitted(doc))
    assert "hidden to fit" not in tall.export_text()  # room for everything: nothing cut


def test_watch_piped_prints_whole_snapshots(home: Home):
    url = f"http://127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "status", "--watch", "--url", url],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    while seen.count(b"gpu ") < 2 and time.monotonic() < deadline:
        seen += process.stdout.read1(65536)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    seen += rest
    assert process.returncode == 2
    assert seen.count(b"the daemon is not running") >= 2  # one whole screen per refresh
    assert b"\x1b[" not in seen  # plain text: no cursor movement, no colour
    assert b"hidden to fit" not in seen
