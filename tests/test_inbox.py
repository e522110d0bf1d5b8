"""The inbox: bundles dropped into APPLIANCE_HOME/inbox or found on a USB path get installed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from appliance.bundles.inbox import scan_once
from appliance.bundles.installer import BundleManager
from tests.helpers import Key, make_bundle


def _drop(bundle: Path, folder: Path, name: str | None = None, age_s: float = 60) -> Path:
    """Copy a bundle into a folder as a settled file (mtime `age_s` seconds ago)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or bundle.name)
    shutil.copyfile(bundle, target)
    then = time.time() - age_s
    os.utime(target, (then, then))
    return target


def _events(manager: BundleManager, outcome: str) -> int:
    return manager.db.execute(
        "SELECT count(*) FROM bundle_events WHERE outcome = ?", [outcome]
    ).fetchone()[0]


def _active(manager: BundleManager) -> list[tuple[str, str]]:
    return [(b.name, b.version) for b in manager.list() if b.active]


def test_good_bundle_is_installed_activated_and_moved_aside(
    manager: BundleManager, workdir: Path, key: Key
):
    inbox = manager.home.inbox_dir
    dropped = _drop(make_bundle(workdir, [key]), inbox)

    (result,) = scan_once(manager)

    assert result.error is None and result.outcome is not None
    assert (result.outcome.action, result.outcome.active) == ("installed", True)
    assert _active(manager) == [("demo", "1.0.0")]
    assert not dropped.exists()
    assert result.moved_to == inbox / "installed" / "demo-1.0.0.bundle"
    assert result.moved_to.read_bytes() == (workdir / "demo-1.0.0.bundle").read_bytes()
    record = json.loads((inbox / "installed" / "demo-1.0.0.bundle.result.json").read_text())
    assert record == json.loads(json.dumps(result.outcome.to_json()))
    assert json.dumps(result.to_json())  # serialisable for the daemon's log
    assert scan_once(manager) == []


@pytest.mark.parametrize(
    ("signers", "cause"), [([], "bundle is not signed"), (["key_b"], "keys not in")]
)
def test_untrusted_bundle_is_refused_and_moved_aside(
    manager: BundleManager,
    workdir: Path,
    key_b: Key,
    signers: list[str],
    cause: str,
):
    inbox = manager.home.inbox_dir
    _drop(make_bundle(workdir, [key_b] if signers else []), inbox)

    (result,) = scan_once(manager)

    assert result.outcome is None
    assert result.error is not None and result.error.startswith("UnknownKeyError:")
    assert cause in result.error
    assert result.moved_to == inbox / "refused" / "demo-1.0.0.bundle"
    record = json.loads((inbox / "refused" / "demo-1.0.0.bundle.result.json").read_text())
    assert record["type"] == "UnknownKeyError" and cause in record["error"]
    assert "\n" not in record["error"]
    assert manager.list() == []
    assert not (manager.home.bundles_dir / "demo").exists()
    assert scan_once(manager) == []  # a refused file is never retried
    assert _events(manager, "refused") == 1


def test_recent_file_is_skipped_until_it_settles(manager: BundleManager, workdir: Path, key: Key):
    dropped = _drop(make_bundle(workdir, [key]), manager.home.inbox_dir, age_s=0)

    assert scan_once(manager, settle_s=5) == []
    assert dropped.exists() and manager.list() == []

    then = time.time() - 6
    os.utime(dropped, (then, then))
    (result,) = scan_once(manager, settle_s=5)
    assert result.outcome is not None and result.outcome.action == "installed"


def test_usb_bundle_is_installed_in_place_and_not_retried(
    manager: BundleManager, workdir: Path, key: Key, tmp_path: Path
):
    usb = tmp_path / "usb"
    on_stick = _drop(make_bundle(workdir, [key]), usb)
    before = (on_stick.read_bytes(), on_stick.stat().st_mtime_ns)

    (result,) = scan_once(manager, usb_paths=[usb])

    assert result.source == on_stick and result.moved_to is None and result.error is None
    assert result.outcome is not None and result.outcome.action == "installed"
    assert _active(manager) == [("demo", "1.0.0")]
    assert (on_stick.read_bytes(), on_stick.stat().st_mtime_ns) == before
    assert sorted(p.name for p in usb.iterdir()) == ["demo-1.0.0.bundle"]
    (seen,) = (manager.home.inbox_dir / "usb-seen").iterdir()
    assert json.loads(seen.read_text())["action"] == "installed"
    assert scan_once(manager, usb_paths=[usb]) == []


def test_refused_usb_bundle_is_recorded_once(
    manager: BundleManager, workdir: Path, key_b: Key, tmp_path: Path
):
    usb = tmp_path / "usb"
    on_stick = _drop(make_bundle(workdir, [key_b]), usb)

    (result,) = scan_once(manager, usb_paths=[usb])

    assert result.error is not None and "UnknownKeyError" in result.error
    assert on_stick.exists() and manager.list() == []
    (seen,) = (manager.home.inbox_dir / "usb-seen").iterdir()
    assert json.loads(seen.read_text())["type"] == "UnknownKeyError"
    for _ in range(3):
        assert scan_once(manager, usb_paths=[usb]) == []
    assert _events(manager, "refused") == 1


def test_other_files_and_missing_usb_paths_are_ignored(
    manager: BundleManager, workdir: Path, key: Key, tmp_path: Path
):
    inbox = manager.home.inbox_dir
    bundle = make_bundle(workdir, [key])
    _drop(bundle, inbox, "notes.txt")
    _drop(bundle, inbox, ".partial.bundle")
    _drop(bundle, inbox, "._demo.bundle")
    (inbox / "folder.bundle").mkdir()
    (inbox / "link.bundle").symlink_to(bundle)
    before = sorted(p.name for p in inbox.iterdir())

    results = scan_once(manager, usb_paths=[tmp_path / "not-mounted", Path("/nonexistent/usb")])

    assert results == []
    assert manager.list() == []
    assert sorted(p.name for p in inbox.iterdir() if p.name != ".scan.lock") == before


def test_one_bad_bundle_does_not_stop_the_scan(
    manager: BundleManager, workdir: Path, key: Key, key_b: Key
):
    inbox = manager.home.inbox_dir
    _drop(make_bundle(workdir / "bad", [key_b], name="bad"), inbox, "a-bad.bundle")
    _drop(make_bundle(workdir / "good", [key], name="good"), inbox, "b-good.bundle")
    (inbox / "c-garbage.bundle").write_bytes(b"not a tar at all")
    os.utime(inbox / "c-garbage.bundle", (0, 0))

    results = scan_once(manager)

    assert [(r.source.name, r.outcome is not None) for r in results] == [
        ("a-bad.bundle", False),
        ("b-good.bundle", True),
        ("c-garbage.bundle", False),
    ]
    assert _active(manager) == [("good", "1.0.0")]
    assert sorted(p.name for p in (inbox / "refused").glob("*.bundle")) == [
        "a-bad.bundle",
        "c-garbage.bundle",
    ]
    assert [p.name for p in inbox.glob("*.bundle")] == []


def test_name_collisions_get_a_numeric_suffix(manager: BundleManager, workdir: Path, key_b: Key):
    inbox = manager.home.inbox_dir
    bundle = make_bundle(workdir, [key_b])
    _drop(bundle, inbox)
    scan_once(manager)
    _drop(bundle, inbox)

    (result,) = scan_once(manager)

    assert result.moved_to == inbox / "refused" / "demo-1.0.0-1.bundle"
    assert (inbox / "refused" / "demo-1.0.0-1.bundle.result.json").exists()
    assert (inbox / "refused" / "demo-1.0.0.bundle.result.json").exists()


def test_unexpected_error_is_refused_as_internal_and_logged(
    manager: BundleManager,
    workdir: Path,
    key: Key,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    def broken(path: Path, **_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(manager, "install", broken)
    _drop(make_bundle(workdir, [key]), manager.home.inbox_dir)

    with caplog.at_level(logging.ERROR, logger="appliance.inbox"):
        (result,) = scan_once(manager)

    assert result.error == "InternalError: RuntimeError: boom"
    record = json.loads(Path(f"{result.moved_to}.result.json").read_text())
    assert record == {"error": "RuntimeError: boom", "type": "InternalError"}
    assert any(r.exc_info for r in caplog.records)
