"""Installing, listing, activating and rolling back bundles: the operator's normal day."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.keys import PublicKey
from appliance.errors import BundleError, BundleNotFoundError, SignatureError, TrustError
from appliance.home import Home
from tests.helpers import Key, make_bundle, read_members, write_raw_bundle


def _active(manager: BundleManager, name: str) -> str | None:
    found = [b.version for b in manager.list() if b.name == name and b.active]
    return found[0] if found else None


def test_install_writes_verified_read_only_tree(manager: BundleManager, workdir: Path, key: Key):
    files = {"weights.bin": os.urandom(300_000), "nested/deep/config.json": b"{}"}
    bundle = make_bundle(workdir, [key], files=files)

    outcome = manager.install(bundle)

    assert (outcome.action, outcome.active, outcome.files) == ("installed", True, 2)
    assert outcome.signers == (key.keyid,)
    root = manager.home.bundle_dir("demo", "1.0.0")
    for rel, data in files.items():
        installed = root / "payload" / rel
        assert installed.read_bytes() == data
        assert stat.S_IMODE(installed.stat().st_mode) == 0o444
    assert stat.S_IMODE(root.stat().st_mode) == 0o555
    manifest = json.loads((root / "manifest.json").read_bytes())
    assert hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest() == outcome.digest
    assert {f["path"] for f in manifest["files"]} == set(files)
    assert list(manager.home.staging_dir.iterdir()) == []


def test_verify_checks_payload_without_installing(manager: BundleManager, workdir: Path, key: Key):
    bundle = make_bundle(workdir, [key], files={"a.bin": b"a" * 5000})
    seen: list[tuple[int, int]] = []

    outcome = manager.verify_file(bundle, progress=lambda done, total: seen.append((done, total)))

    assert outcome.action == "verified"
    assert seen[0] == (0, 5000) and seen[-1] == (5000, 5000)
    assert manager.list() == []
    assert not (manager.home.bundles_dir / "demo").exists()


def test_reinstalling_the_same_bundle_is_a_no_op(manager: BundleManager, workdir: Path, key: Key):
    bundle = make_bundle(workdir, [key])
    manager.install(bundle)
    before = manager.list()

    outcome = manager.install(bundle)

    assert outcome.action == "already-installed"
    assert manager.list() == before


def test_newer_sequence_replaces_active_and_rollback_returns(
    manager: BundleManager, workdir: Path, key: Key
):
    v1 = make_bundle(workdir, [key], version="1.0.0", sequence=1)
    v2 = make_bundle(workdir, [key], version="2.0.0", sequence=2)
    manager.install(v1)
    manager.install(v2)
    assert _active(manager, "demo") == "2.0.0"

    rolled = manager.rollback("demo")

    assert (rolled.version, _active(manager, "demo")) == ("1.0.0", "1.0.0")
    # The anti-rollback floor does not move back: v1 cannot be re-installed "fresh",
    # and a re-install of v2 is a no-op; activating v2 again works.
    assert manager.install(v2).action == "already-installed"
    assert manager.activate("demo", "2.0.0").version == "2.0.0"
    assert manager.rollback("demo").version == "1.0.0"
    with pytest.raises(BundleNotFoundError, match="no earlier usable version"):
        manager.rollback("demo")


def test_install_without_activate_keeps_current(manager: BundleManager, workdir: Path, key: Key):
    manager.install(make_bundle(workdir, [key], version="1.0.0", sequence=1))

    outcome = manager.install(
        make_bundle(workdir, [key], version="2.0.0", sequence=2), activate=False
    )

    assert outcome.active is False
    assert _active(manager, "demo") == "1.0.0"
    manager.activate("demo", "2.0.0")
    assert _active(manager, "demo") == "2.0.0"


def test_activate_unknown_version_is_refused(manager: BundleManager):
    with pytest.raises(BundleNotFoundError, match=r"demo 9\.9 is not installed"):
        manager.activate("demo", "9.9")


def test_rollback_without_active_version_is_refused(manager: BundleManager):
    with pytest.raises(BundleNotFoundError, match="no version of demo is active"):
        manager.rollback("demo")


def test_model_bundle_records_model_section(manager: BundleManager, workdir: Path, key: Key):
    bundle = make_bundle(
        workdir,
        [key],
        name="tiny-model",
        kind="model",
        files={"m.gguf": b"GGUF" + b"\0" * 100},
        model={"format": "gguf", "role": "chat", "context_length": 512, "file": "m.gguf"},
    )

    manager.install(bundle)

    (installed,) = manager.list()
    assert installed.manifest["model"]["file"] == "m.gguf"
    assert installed.kind == "model"


def test_keyring_rotation_replaces_trusted_keys(
    manager: BundleManager, workdir: Path, key: Key, key_b: Key, key_c: Key
):
    new_keys = [PublicKey.from_raw(_raw(k), k.name) for k in (key_b, key_c)]
    keyring = make_bundle(
        workdir,
        [key, key_b, key_c],
        name="keyring",
        kind="keyring",
        files={},
        keyring={
            "threshold": 2,
            "keys": [{"name": k.name, "public": k.raw.hex()} for k in new_keys],
        },
    )

    manager.install(keyring)

    store = trust.load_store(manager.home)
    assert set(store.keys) == {key_b.keyid, key_c.keyid}
    assert store.threshold == 2
    # The old key alone no longer installs anything; two of the new ones do.
    with pytest.raises(SignatureError):
        manager.install(make_bundle(workdir / "old", [key]))
    assert manager.install(make_bundle(workdir / "new", [key_b, key_c])).action == "installed"


def test_keyring_not_signed_by_its_new_keys_is_refused(
    manager: BundleManager, workdir: Path, key: Key, key_b: Key
):
    keyring = make_bundle(
        workdir,
        [key],
        name="keyring",
        kind="keyring",
        files={},
        keyring={"threshold": 1, "keys": [{"name": "b", "public": _raw(key_b).hex()}]},
    )

    with pytest.raises(SignatureError, match="not in its own new keyring"):
        manager.install(keyring)

    assert set(trust.load_store(manager.home).keys) == {key.keyid}


def test_policy_and_keyring_kinds_cannot_be_activated_by_hand(
    manager: BundleManager, workdir: Path, key: Key
):
    revocation = make_bundle(
        workdir, [key], name="revocations", kind="revocation", files={}, revocation={}
    )
    manager.install(revocation)

    with pytest.raises(BundleError, match="take effect on install"):
        manager.activate("revocations", "1.0.0")


def test_trust_remove_refuses_to_drop_below_threshold(trusted: Home, key: Key):
    with pytest.raises(TrustError, match="below the threshold"):
        trust.remove_key(trusted, key.keyid[:12])
    assert key.keyid in trust.load_store(trusted).keys


def test_trust_store_fails_closed_on_a_corrupt_key(trusted: Home):
    (trusted.trust_dir / "junk.pub").write_text("not a key")
    with pytest.raises(TrustError, match=r"junk\.pub is unusable"):
        trust.load_store(trusted)


def _raw(k: Key) -> bytes:
    from appliance.bundles.keys import load_public_key

    return load_public_key(k.public).raw


def test_verify_hashes_a_copy_of_an_installed_bundle_every_time(
    manager: BundleManager, workdir: Path, key: Key
):
    """`bundle verify` checks the bytes of the file it is given, also when a bundle with the
    same manifest is installed: a tampered copy is refused, not 'already installed'."""
    bundle = make_bundle(workdir, [key])
    manager.install(bundle)

    seen: list[tuple[int, int]] = []
    outcome = manager.verify_file(bundle, progress=lambda done, total: seen.append((done, total)))
    assert outcome.action == "already-installed"
    assert seen and seen[-1][0] == seen[-1][1] > 0  # every payload byte was hashed

    members = read_members(bundle)
    tampered = [
        (name, data.replace(b"schema", b"SCHEMA") if name.startswith("payload/") else data)
        for name, data in members
    ]
    assert tampered != members
    copy = write_raw_bundle(workdir / "tampered.bundle", tampered)
    with pytest.raises(BundleError, match=r"sha256|SHA-256|hash"):
        manager.verify_file(copy)
