"""Issue 14, items 10 and 12: files that must not stall or expose the box.

- a FIFO given to ``bundle verify|install`` or swapped into the inbox is refused at once,
  before the install lock is taken;
- the home is created 0700 and state.db (-wal, -shm) 0600 whatever the umask.

Everything that could block (a FIFO) runs with a timeout, so a regression fails, not hangs.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.server import free_port
from appliance.bundles import inbox
from appliance.bundles.installer import BundleManager
from appliance.errors import BundleError
from appliance.home import Home
from appliance.state import open_state, write_transaction

SAFETY_S = 20.0  # seconds: a blocking open() of a FIFO would wait for ever


# -- a FIFO where a bundle file should be (item 10) --------------------------------------------


def _cli(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe.bundle"
    os.mkfifo(path)
    yield path
    _unblock(path)


def _unblock(path: Path) -> None:
    """Let a reader stuck in open() go (a regression), so no thread is left hanging."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader waits
    os.close(fd)


@pytest.mark.parametrize("command", ["verify", "install"])
def test_bundle_command_refuses_a_fifo_at_once(home: Home, fifo: Path, command: str):
    done = _cli(home, "bundle", command, str(fifo))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "is a named pipe (FIFO), not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


def test_install_refuses_a_fifo_before_taking_the_lock(trusted: Home, fifo: Path):
    """With another installer holding the lock, the FIFO is still refused at once."""
    outcome: list[BaseException] = []

    def install() -> None:
        manager = BundleManager(trusted)
        try:
            manager.install(fifo)
        except BaseException as e:
            outcome.append(e)
        finally:
            manager.close()

    worker = threading.Thread(target=install, daemon=True)
    with open(trusted.bundles_dir / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            worker.start()
            worker.join(SAFETY_S)
            assert not worker.is_alive(), "install waited for the lock or the FIFO"
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            _unblock(fifo)
            worker.join(SAFETY_S)
    assert isinstance(outcome[0], BundleError)
    assert "named pipe" in str(outcome[0])


def _scan_in_thread(home: Home, usb: Path, watched: Path) -> list[Any]:
    """One inbox scan on a thread (a BundleManager belongs to its thread), or fail."""
    results: list[Any] = []

    def scan() -> None:
        manager = BundleManager(home)
        try:
            results.extend(inbox.scan_once(manager, [usb]))
        finally:
            manager.close()

    worker = threading.Thread(target=scan, daemon=True)
    try:
        worker.start()
        worker.join(SAFETY_S)
        assert not worker.is_alive(), "the scan blocked on the FIFO"
    finally:
        _unblock(watched)
        worker.join(SAFETY_S)
    return results


@pytest.mark.parametrize("where", ["inbox", "usb"])
def test_a_fifo_swapped_into_the_inbox_does_not_block_the_scan(
    trusted: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
):
    """A regular file when listed, a FIFO when opened: the race the listing cannot see."""
    folder = trusted.inbox_dir if where == "inbox" else tmp_path / "usb"
    folder.mkdir(exist_ok=True)
    pipe = folder / "swapped.bundle"
    os.mkfifo(pipe)
    monkeypatch.setattr(
        inbox, "_candidates", lambda f, now, settle: iter([pipe] if f == folder else [])
    )
    results = _scan_in_thread(trusted, tmp_path / "usb", pipe)
    if where == "inbox":
        assert len(results) == 1 and "named pipe" in (results[0].error or "")
        assert results[0].moved_to is not None and results[0].moved_to.parent.name == "refused"
    else:
        assert results == []  # skipped, and tried again next scan
        assert pipe.exists()


# -- file modes whatever the umask (item 12) ---------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_home_and_state_db_are_private_under_umask_022(tmp_path: Path, open_umask: None):
    home = Home(tmp_path / "new" / "home").ensure()
    db = open_state(home)
    try:
        with write_transaction(db) as conn:
            conn.execute("CREATE TABLE probe (x)")
        assert _mode(home.root) == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            assert _mode(home.root / name) == 0o600, name
    finally:
        db.close()


def test_a_state_db_left_readable_is_made_private(tmp_path: Path, open_umask: None):
    home = Home(tmp_path / "home").ensure()
    open_state(home).close()
    os.chmod(home.state_db, 0o644)
    open_state(home).close()
    assert _mode(home.state_db) == 0o600


def test_appliance_serve_started_by_hand_keeps_its_home_private(tmp_path: Path):
    root = tmp_path / "served"
    port = free_port()
    env = {**os.environ, "APPLIANCE_HOME": str(root)}
    with subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--port", str(port)],
        env=env,
        umask=0o022,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as daemon:
        try:
            deadline = time.monotonic() + 60
            while not _answers(port):
                assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
                assert time.monotonic() < deadline, "appliance serve did not start"
                time.sleep(0.1)
            assert _mode(root) == 0o700
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                assert _mode(root / name) == 0o600, name
        finally:
            daemon.terminate()
            daemon.wait(SAFETY_S)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return False
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
