"""`appliance doctor`: a sound install passes; each planted fault fails with its fix."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.bundles.installer import BundleManager
from appliance.cli import main
from appliance.doctor import Check, run_checks
from appliance.home import Home
from appliance.outbox import MapCipher
from tests.helpers import Key, make_bundle

Usage = namedtuple("Usage", "total used free")
GiB = 1024**3


@pytest.fixture
def installed(manager: BundleManager, workdir: Path, key: Key) -> Home:
    """A home trusting `key`, with a signed policy bundle installed and active."""
    bundle = make_bundle(workdir, [key], name="site-policy", expires="2031-01-01T00:00:00Z")
    manager.install(bundle)
    MapCipher(manager.home).seal(str(uuid.uuid4()), {})  # the outbox key exists too
    return manager.home


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def test_a_sound_install_passes(installed: Home, capsys):
    checks = run_checks(installed)
    assert _failed(checks) == [] and [c for c in checks if c.status == "warn"] == []
    names = _by_name(checks)
    assert names["bundle site-policy 1.0.0"].detail == "1 file(s) match their SHA-256"
    assert names["state.db"].detail == "integrity_check: ok"
    assert names["key outbox.key"].detail == "mode 0600"
    assert main(["doctor"]) == 0
    assert "the install looks sound" in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    assert {c["status"] for c in json.loads(capsys.readouterr().out)} == {"pass"}


def _payload(home: Home) -> Path:
    return home.bundle_dir("site-policy", "1.0.0") / "payload"


def test_a_tampered_bundle_file_fails_with_the_fix(installed: Home, capsys):
    target = _payload(installed) / "policy.toml"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[0] ^= 0x20  # same size, one bit
    target.write_bytes(bytes(data))
    checks = _by_name(run_checks(installed))
    failed = checks["bundle site-policy 1.0.0"]
    assert failed.status == "fail"
    assert failed.detail == "policy.toml does not match its SHA-256"
    assert checks["policy"].status == "fail"  # the changed policy no longer loads either
    assert "appliance bundle rollback site-policy" in failed.fix
    assert main(["doctor"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_extra_and_missing_bundle_files_fail(installed: Home):
    payload = _payload(installed)
    os.chmod(payload, 0o755)
    (payload / "smuggled.gguf").write_bytes(b"x")
    (payload / "policy.toml").chmod(0o644)
    (payload / "policy.toml").unlink()
    failed = _by_name(run_checks(installed))["bundle site-policy 1.0.0"]
    assert failed.status == "fail" and "policy.toml is missing" in failed.detail
    assert "smuggled.gguf is not in the manifest" in failed.detail


def test_a_key_readable_by_others_fails(installed: Home):
    (installed.root / "outbox.key").chmod(0o644)
    [failed] = _failed(run_checks(installed))
    assert failed.name == "key outbox.key" and "mode 0644" in failed.detail
    assert failed.fix == f"chmod 600 {installed.root / 'outbox.key'}"


def test_a_trust_store_others_can_write_fails(installed: Home):
    installed.trust_dir.chmod(0o777)
    [failed] = _failed(run_checks(installed))
    assert failed.name == "trust store permissions"
    assert "writable by group or others (mode 0777)" in failed.detail
    assert "chmod -R go-w" in failed.fix


def test_an_empty_trust_store_fails(home: Home):
    [failed] = _failed(run_checks(home))
    assert failed.name == "trust store" and "appliance trust add" in failed.fix


def test_a_damaged_state_db_fails(installed: Home):
    db = installed.state_db
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    assert pages > 4
    with db.open("r+b") as f:  # garbage over a b-tree page in the middle of the file
        f.seek(page * (pages // 2))
        f.write(os.urandom(page))
    failed = _by_name(run_checks(installed))["state.db"]
    assert failed.status == "fail" and failed.detail.startswith("integrity_check: ")
    assert "restore the last backup" in failed.fix and ".recover" in failed.fix


def test_expiry_and_the_clock(installed: Home):
    soon = _by_name(run_checks(installed, now=datetime(2030, 12, 28, tzinfo=UTC)))
    assert soon["expiry site-policy 1.0.0"].status == "warn"
    gone = _by_name(run_checks(installed, now=datetime(2031, 2, 1, tzinfo=UTC)))
    assert gone["expiry site-policy 1.0.0"].status == "fail"
    assert "install a newer signed version" in gone["expiry site-policy 1.0.0"].fix
    behind = _by_name(run_checks(installed, now=datetime(2026, 2, 1, tzinfo=UTC)))
    assert behind["clock"].status == "fail" and "behind the newest bundle" in behind["clock"].detail
    assert "timedatectl" in behind["clock"].fix
    ancient = _by_name(run_checks(installed, now=datetime(2001, 1, 1, tzinfo=UTC)))
    assert ancient["clock"].status == "fail"


def test_low_disk_warns_then_fails(installed: Home):
    def usage(free: int):
        return lambda _path: Usage(100 * GiB, 100 * GiB - free, free)

    assert _by_name(run_checks(installed, disk_usage=usage(50 * GiB)))["disk"].status == "pass"
    warn = _by_name(run_checks(installed, disk_usage=usage(5 * GiB)))["disk"]
    assert warn.status == "warn" and "appliance outbox purge" in warn.fix
    fail = _by_name(run_checks(installed, disk_usage=usage(GiB)))["disk"]
    assert fail.status == "fail" and "1.0 GiB (1%) free" in fail.detail


def test_a_broken_config_and_a_missing_home(installed: Home, tmp_path: Path, monkeypatch):
    installed.config_file.write_text("[server]\nportt = 1\n")
    failed = _by_name(run_checks(installed))["config.toml"]
    assert failed.status == "fail" and "portt" in failed.detail
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path / "nowhere"))
    assert main(["doctor"]) == 1
    assert not (tmp_path / "nowhere").exists()  # the doctor creates nothing
