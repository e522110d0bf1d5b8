"""`appliance doctor`: a sound install passes; each planted fault fails with its fix."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.manifest import parse_timestamp
from appliance.bundles.pack import pack, sign
from appliance.cli import main
from appliance.doctor import Check, run_checks
from appliance.home import Home
from appliance.offline.identity import Identity
from appliance.outbox import MapCipher
from tests.helpers import Key, make_bundle
from tests.onnx_models import write_embedding_source

GiB, MiB = 1024**3, 1024**2
BUNDLE = "bundle site-policy 1.0.0"


@pytest.fixture(autouse=True)
def plenty_of_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine running the tests may be short of disk; only test_low_disk_* is."""
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: (100 * GiB, 50 * GiB, 50 * GiB))


@pytest.fixture
def installed(manager: BundleManager, workdir: Path, key: Key) -> Iterator[Home]:
    """A home trusting `key`, a signed policy bundle active, the outbox and identity keys made."""
    manager.install(make_bundle(workdir, [key], name="site-policy", expires="2031-01-01T00:00:00Z"))
    MapCipher(manager.home).seal(str(uuid.uuid4()), {})
    Identity(manager.home)
    yield manager.home


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def _writable(path: Path) -> Path:
    """Installed bundles are read-only (0555 folders, 0444 files): what an attacker undoes first."""
    for folder in [path.parent, *path.parent.parents]:
        if folder.name == "bundles":
            break
        folder.chmod(0o755)
    if path.exists():
        path.chmod(0o644)
    return path


def _payload(home: Home, version: str = "1.0.0") -> Path:
    return home.bundle_dir("site-policy", version) / "payload"


def test_a_sound_install_passes(installed: Home, capsys):
    checks = run_checks(installed)
    assert [c for c in checks if c.status != "pass"] == []
    names = _by_name(checks)
    assert set(names) >= {
        "trust store",
        "trust store permissions",
        "home permissions",
        "key outbox.key",
        "key identity/sign.key",
        "key identity/box.key",
        "state.db",
        BUNDLE,
        "disk",
        "clock",
        "expiry site-policy 1.0.0",
        "config.toml",
        "policy",
    }
    assert names[BUNDLE].detail == "manifest and 1 file(s) match their SHA-256"
    assert names["state.db"].detail == "integrity_check: ok"
    assert names["key outbox.key"].detail.startswith("mode 0600")
    assert names["policy"].detail.endswith("from bundle site-policy 1.0.0")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "0 failed: the install is sound" in out and "PASS" in out
    assert main(["doctor", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in document} == {"pass"}
    assert set(document[0]) == {"name", "status", "detail", "fix"}


def test_keys_not_made_yet_pass_and_nothing_is_created(home: Home, key: Key):
    trust.add_key(home, key.public)
    before = sorted(p.relative_to(home.root) for p in home.root.rglob("*"))
    checks = _by_name(run_checks(home))
    assert checks["key outbox.key"].status == "pass"
    assert checks["key outbox.key"].detail == "not created yet (made on first use)"
    assert checks["state.db"].detail == "not created yet"
    assert _failed(list(checks.values())) == []
    assert sorted(p.relative_to(home.root) for p in home.root.rglob("*")) == before


# -- bundles against their manifests -----------------------------------------------------


def test_a_tampered_bundle_file_fails_with_the_fix(installed: Home, capsys):
    target = _writable(_payload(installed) / "policy.toml")
    data = bytearray(target.read_bytes())
    data[0] ^= 0x20  # one bit, same size: only the SHA-256 tells
    target.write_bytes(bytes(data))
    checks = _by_name(run_checks(installed))
    failed = checks[BUNDLE]
    assert failed.status == "fail"
    assert failed.detail == "payload/policy.toml does not match its SHA-256"
    assert "appliance bundle rollback site-policy" in failed.fix
    assert checks["policy"].status == "fail"  # the changed policy no longer loads either
    assert main(["doctor"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_truncated_bundle_file_fails(installed: Home):
    target = _writable(_payload(installed) / "policy.toml")
    size = target.stat().st_size
    target.write_bytes(target.read_bytes()[:-1])
    failed = _by_name(run_checks(installed))[BUNDLE]
    assert failed.detail == f"payload/policy.toml has {size - 1} bytes, not {size}"


def test_extra_and_missing_bundle_files_fail(installed: Home):
    payload = _payload(installed)
    _writable(payload / "smuggled.gguf").write_bytes(b"x")
    _writable(payload / "policy.toml").unlink()
    (payload.parent / "README").write_text("extra")
    failed = _by_name(run_checks(installed))[BUNDLE]
    assert failed.status == "fail"
    assert "README does not belong in the bundle folder" in failed.detail
    assert "payload/policy.toml is missing" in failed.detail
    assert "payload/smuggled.gguf is not in the manifest" in failed.detail


def test_a_payload_file_replaced_by_a_link_fails(installed: Home, tmp_path: Path):
    target = _writable(_payload(installed) / "policy.toml")
    copy = tmp_path / "policy.toml"
    shutil.copy(target, copy)
    target.unlink()
    target.symlink_to(copy)  # same bytes, but whoever owns the target decides them later
    failed = _by_name(run_checks(installed))[BUNDLE]
    assert failed.detail == "payload/policy.toml is not a regular file"


def test_a_changed_manifest_fails(installed: Home):
    manifest = _writable(installed.bundle_dir("site-policy", "1.0.0") / "manifest.json")
    manifest.write_bytes(manifest.read_bytes().replace(b'"sequence":1', b'"sequence":9'))
    failed = _by_name(run_checks(installed))[BUNDLE]
    assert failed.detail == "manifest.json differs from the one verified at install"


def test_a_tampered_inactive_version_says_not_to_activate_it(
    installed: Home, manager: BundleManager, workdir: Path, key: Key
):
    manager.install(make_bundle(workdir, [key], name="site-policy", version="2.0.0", sequence=2))
    _writable(_payload(installed, "1.0.0") / "policy.toml").write_bytes(b"schema = 2\n")
    checks = _by_name(run_checks(installed))
    assert checks["bundle site-policy 2.0.0"].status == "pass"
    failed = checks[BUNDLE]
    assert failed.status == "fail" and "do not activate site-policy 1.0.0" in failed.fix
    assert "rollback" not in failed.fix


def test_a_changed_active_model_file_fails_with_the_fix(
    installed: Home, manager: BundleManager, workdir: Path, key: Key, capsys
):
    """The file the daemon would load (and now refuses to): FAIL, and what to do."""
    bundle = workdir / "mini-embed.bundle"
    pack(write_embedding_source(workdir / "src-embed"), bundle)
    sign(bundle, key.private)
    manager.install(bundle)
    target = _writable(installed.bundle_dir("mini-embed", "1.0.0") / "payload" / "model.onnx")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    checks = run_checks(installed)
    (failed,) = _failed(checks)
    assert failed.name == "bundle mini-embed 1.0.0"
    assert failed.detail == "payload/model.onnx does not match its SHA-256"
    assert failed.fix.startswith("appliance bundle rollback mini-embed")
    assert "refuses to load mini-embed 1.0.0" in failed.fix
    assert main(["doctor"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_an_unrecorded_bundle_folder_warns(installed: Home):
    leftover = installed.bundle_dir("site-policy", "9.9.9")
    _writable(installed.bundle_dir("site-policy", "1.0.0"))
    leftover.mkdir()
    checks = run_checks(installed)
    [warned] = [c for c in checks if c.status == "warn"]
    assert warned.name == "bundle folder site-policy/9.9.9" and "not recorded" in warned.detail
    assert _failed(checks) == []
    assert main(["doctor"]) == 0  # warnings alone do not fail


# -- key files and the trust store -------------------------------------------------------


def test_a_key_readable_by_others_fails(installed: Home):
    (installed.root / "outbox.key").chmod(0o644)
    [failed] = _failed(run_checks(installed))
    assert failed.name == "key outbox.key" and "mode 0644" in failed.detail
    assert failed.fix.endswith(f"chmod 600 {installed.root / 'outbox.key'}")
    assert main(["doctor"]) == 1


def test_any_key_file_in_the_home_is_checked(installed: Home):
    stray = installed.inbox_dir / "publisher.key"
    stray.write_bytes(b"secret")
    stray.chmod(0o640)
    [failed] = _failed(run_checks(installed))
    assert failed.name == "key inbox/publisher.key" and failed.fix.endswith(f"chmod 600 {stray}")


def test_a_linked_or_wrong_size_key_fails(installed: Home, tmp_path: Path):
    sign = installed.root / "identity" / "sign.key"
    elsewhere = tmp_path / "sign.key"
    shutil.move(sign, elsewhere)
    sign.symlink_to(elsewhere)
    box = installed.root / "identity" / "box.key"
    box.write_bytes(box.read_bytes() + b"\n")
    failed = _by_name(_failed(run_checks(installed)))
    assert failed["key identity/sign.key"].detail == f"{sign} is a symbolic link"
    assert failed["key identity/box.key"].detail.endswith(
        "holds 33 bytes, not 32: the appliance refuses it"
    )


def test_a_trust_store_others_can_write_fails(installed: Home):
    installed.trust_dir.chmod(0o777)
    [failed] = _failed(run_checks(installed))
    assert failed.name == "trust store permissions"
    assert "writable by group or others (mode 0777)" in failed.detail
    assert "chmod -R go-w" in failed.fix and str(installed.trust_dir) in failed.fix
    assert main(["doctor"]) == 1


def test_a_trusted_key_file_others_can_write_fails(installed: Home, key: Key):
    pub = installed.trust_dir / f"{key.name}.pub"
    pub.chmod(0o666)
    [failed] = _failed(run_checks(installed))
    assert failed.detail == f"{pub} is writable by group or others (mode 0666)"


def test_a_home_others_can_write_fails(installed: Home):
    installed.root.chmod(0o777)  # anyone could rename trust/ and put their own in its place
    [failed] = _failed(run_checks(installed))
    assert failed.name == "home permissions" and "chmod go-w" in failed.fix


def test_trust_files_owned_by_another_user_fail(installed: Home):
    not_me = os.geteuid() + 4242  # an unprivileged user that does not own the files
    checks = _by_name(run_checks(installed, euid=not_me))
    failed = checks["trust store permissions"]
    assert failed.status == "fail" and f"not {not_me}" in failed.detail
    assert failed.fix.startswith(f"sudo chown -R {not_me} {installed.trust_dir}")
    assert checks["key outbox.key"].status == "fail"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_as_root_trust_files_must_be_root_or_the_service_user(installed: Home, key: Key):
    pub = installed.trust_dir / f"{key.name}.pub"
    os.chown(pub, 4242, 4242)  # neither root nor the home's owner: could add its own keys
    failed = _by_name(run_checks(installed, euid=0))["trust store permissions"]
    assert failed.status == "fail" and "owned by 4242, not root" in failed.detail
    for path in [installed.root, *installed.root.rglob("*")]:  # a home run as user 4242
        os.chown(path, 4242, 4242, follow_symlinks=False)
    assert _failed(run_checks(installed, euid=0)) == []


def test_an_unusable_trust_file_fails(installed: Home):
    (installed.trust_dir / "broken.pub").write_text("not a key")
    failed = _by_name(run_checks(installed))["trust store"]
    assert failed.status == "fail" and "broken.pub is unusable" in failed.detail
    assert failed.fix.startswith("replace the file named with the publisher's .pub")


def test_a_trusted_key_replaced_by_a_link_fails(installed: Home, key: Key):
    pub = installed.trust_dir / f"{key.name}.pub"
    pub.unlink()
    pub.symlink_to(key.public)  # still parses, but whoever owns the target picks the key
    [failed] = _failed(run_checks(installed))
    assert failed.name == "trust store permissions"
    assert failed.detail == f"{pub} is a symbolic link"
    assert "replace each link with the file it points to" in failed.fix


def test_a_threshold_above_the_keys_fails(installed: Home):
    installed.trust_policy_file.write_text("threshold = 2\n")
    failed = _by_name(run_checks(installed))["trust store"]
    assert failed.status == "fail" and "threshold 2" in failed.detail


def test_an_empty_trust_store_fails(home: Home):
    [failed] = _failed(run_checks(home))
    assert failed.name == "trust store" and "appliance trust add" in failed.fix
    assert failed.detail.startswith("no publisher keys in")


# -- state.db ---------------------------------------------------------------------------


def _checkpointed(db: Path) -> bytes:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    conn.close()
    return db.read_bytes()


def test_garbage_over_a_state_db_page_fails(installed: Home):
    db = installed.state_db
    raw = _checkpointed(db)
    page = int.from_bytes(raw[16:18], "big")  # the header's page size
    middle = (len(raw) // page // 2) * page
    assert middle > page
    db.write_bytes(raw[:middle] + os.urandom(page) + raw[middle + page :])
    failed = _by_name(run_checks(installed))["state.db"]
    assert failed.status == "fail" and failed.detail.startswith("integrity_check: ")
    assert "restore the last backup" in failed.fix and ".recover" in failed.fix


def test_a_flipped_byte_in_a_row_is_found_by_integrity_check(
    installed: Home, manager: BundleManager
):
    db = installed.state_db
    raw = bytearray(_checkpointed(db))
    digest = manager.list()[0].digest
    raw[raw.index(digest.encode())] ^= 0x01  # the row no longer matches its index entry
    db.write_bytes(bytes(raw))
    failed = _by_name(run_checks(installed))["state.db"]
    assert failed.status == "fail"
    assert "missing from index" in failed.detail  # integrity_check's own report, not an error


# -- clock, expiry, disk, config ----------------------------------------------------------


def test_expiry_and_the_clock(installed: Home, manager: BundleManager):
    created = parse_timestamp(manager.list()[0].created)

    def at(moment: datetime) -> dict[str, Check]:
        return _by_name(run_checks(installed, now=moment))

    soon = at(datetime(2030, 12, 28, tzinfo=UTC))["expiry site-policy 1.0.0"]
    assert soon.status == "warn" and "get a newer signed version" in soon.fix
    gone = at(datetime(2031, 2, 1, tzinfo=UTC))["expiry site-policy 1.0.0"]
    assert gone.status == "fail" and "install a newer signed version" in gone.fix
    assert at(created - timedelta(seconds=200))["clock"].status == "pass"  # within the skew
    behind = at(created - timedelta(days=1))["clock"]
    assert behind.status == "fail" and "behind the newest bundle" in behind.detail
    assert "timedatectl" in behind.fix
    ancient = at(datetime(2001, 1, 1, tzinfo=UTC))["clock"]
    assert ancient.status == "fail" and "before this release" in ancient.detail


def test_the_clock_skew_comes_from_config(installed: Home, manager: BundleManager):
    created = parse_timestamp(manager.list()[0].created)
    installed.config_file.write_text("[bundles.limits]\nclock_skew_s = 10\n")
    clock = _by_name(run_checks(installed, now=created - timedelta(seconds=200)))["clock"]
    assert clock.status == "fail"


def test_low_disk_warns_then_fails(installed: Home):
    def free(total: int, available: int) -> dict[str, Check]:
        usage = (total, total - available, available)
        return _by_name(run_checks(installed, disk_usage=lambda _path: usage))

    assert free(100 * GiB, 50 * GiB)["disk"].status == "pass"
    warn = free(100 * GiB, 5 * GiB)["disk"]  # 5 %
    assert warn.status == "warn" and "appliance outbox purge" in warn.fix
    assert free(10 * GiB, int(1.5 * GiB))["disk"].status == "warn"  # 15 % but under 2 GiB
    fail = free(100 * GiB, GiB)["disk"]
    assert fail.status == "fail" and "1.0 GiB (1%) free" in fail.detail
    assert free(5 * GiB, 200 * MiB)["disk"].status == "fail"  # 4 % but under 256 MiB


def test_low_disk_fails_the_command(installed: Home, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: (100 * GiB, 100 * GiB, MiB))
    assert main(["doctor"]) == 1


def test_a_broken_config_fails_and_the_rest_still_run(installed: Home):
    installed.config_file.write_text("[server]\nportt = 1\n")
    checks = _by_name(run_checks(installed))
    assert checks["config.toml"].status == "fail" and "portt" in checks["config.toml"].detail
    assert checks["clock"].status == "pass"  # the other checks still run


def test_a_missing_policy_file_fails(home: Home, tmp_path: Path):
    home.config_file.write_text(f'policy_file = "{tmp_path / "gone.toml"}"\n')
    policy = _by_name(run_checks(home))["policy"]
    assert policy.status == "fail" and "gone.toml" in policy.detail
    assert policy.fix.startswith(f"correct {tmp_path / 'gone.toml'}")


def test_a_missing_home_fails_and_creates_nothing(tmp_path: Path, monkeypatch):
    [failed] = run_checks(Home(tmp_path / "nowhere"))
    assert failed.name == "home" and failed.status == "fail"
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path / "nowhere"))
    assert main(["doctor"]) == 1
    assert not (tmp_path / "nowhere").exists()


def test_a_check_that_cannot_finish_is_a_fail_not_a_crash(
    installed: Home, monkeypatch: pytest.MonkeyPatch
):
    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("appliance.doctor.bundles.sha256_file", unreadable)
    checks = _by_name(run_checks(installed))
    assert checks["bundles"].status == "fail"
    assert "PermissionError" in checks["bundles"].detail
    assert checks["clock"].status == "pass"  # the checks after it still ran
    assert main(["doctor"]) == 1


def test_a_state_db_that_cannot_be_opened_fails(installed: Home, manager: BundleManager):
    manager.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{installed.state_db}{suffix}").unlink(missing_ok=True)
    installed.state_db.mkdir()  # what sqlite cannot open at all
    checks = _by_name(run_checks(installed))
    assert checks["state.db"].status == "fail"
    assert checks["state.db"].detail.startswith(f"cannot open {installed.state_db}")
    assert "sudo appliance doctor" in checks["state.db"].fix
    assert checks["bundles"].status == "fail" and checks["bundles"].fix == "see the state.db check"
