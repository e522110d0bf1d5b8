"""Attacks on bundle installation, one test each (after python-tuf's attack tests).

Every refusal is checked twice: the specific error class and a phrase of its message, and that
nothing changed (no new version folder, an empty staging folder, the same installed bundles,
the same active versions, no file written or changed anywhere in the home but state.db's own
bookkeeping). Hostile archives are built around a validly signed manifest (re-signed with the
real private key where the manifest itself is the attack), so each test proves that the archive
or parse check refuses the bundle, not the signature check.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.bundles import archive, reader, trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.keys import load_private_key
from appliance.bundles.manifest import digest
from appliance.bundles.records import InstalledBundle
from appliance.errors import (
    BundleError,
    ExpiredBundleError,
    FileTooLargeError,
    HashMismatchError,
    IncompatibleBundleError,
    MalformedBundleError,
    ManifestError,
    RevokedError,
    RollbackError,
    ThresholdError,
    TruncatedBundleError,
    TrustError,
    UnknownKeyError,
    UnsafeArchiveError,
)
from appliance.home import Home
from appliance.settings import BundleLimits, BundleSettings, Settings
from tests.helpers import (
    MINIMAL_POLICY,
    Key,
    canonical,
    make_bundle,
    read_members,
    write_raw_bundle,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = MINIMAL_POLICY  # what write_source puts in payload/policy.toml by default
_STATE_FILES = {"state.db", "state.db-wal", "state.db-shm", "state.db-journal"}


# -- "nothing changed" ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    bundles: list[InstalledBundle]
    active: dict[str, str]
    tree: dict[str, str]  # path relative to the home -> "dir" or the file's SHA-256


def _tree(home: Home) -> dict[str, str]:
    """Every folder and file in the home, but state.db's own files and the install lock."""
    listing: dict[str, str] = {}
    for folder, dirs, files in os.walk(home.root):
        for name in dirs:
            listing[Path(folder, name).relative_to(home.root).as_posix()] = "dir"
        for name in files:
            path = Path(folder, name)
            rel = path.relative_to(home.root).as_posix()
            if rel in _STATE_FILES or rel == "bundles/.lock":
                continue
            listing[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def snapshot(manager: BundleManager) -> Snapshot:
    bundles = manager.list()
    active = {b.name: b.version for b in bundles if b.active}
    return Snapshot(bundles, active, _tree(manager.home))


def _version_dirs(tree: dict[str, str]) -> set[str]:
    """bundles/NAME/VERSION folders (and staging entries, which must not be there either)."""
    return {p for p in tree if p.startswith("bundles/") and p.count("/") == 2}


def assert_unchanged(manager: BundleManager, before: Snapshot) -> None:
    """Nothing installed, activated, staged or written since `before` was taken."""
    home = manager.home
    after = snapshot(manager)
    assert list(home.staging_dir.iterdir()) == [], "staging is not empty"
    assert _version_dirs(after.tree) == _version_dirs(before.tree), "a version folder appeared"
    assert after.bundles == before.bundles, "manager.list() changed"
    assert after.active == before.active, "the active version changed"
    assert after.tree == before.tree, "something was written in the home"


def events(manager: BundleManager) -> list[tuple[str, str | None]]:
    """(outcome, reason) of every bundle event state.db logged, oldest first."""
    return manager.db.execute("SELECT outcome, reason FROM bundle_events ORDER BY id").fetchall()


def assert_refused(
    manager: BundleManager,
    bundle: Path,
    error: type[Exception],
    phrase: str,
    *,
    exact: bool = True,
) -> pytest.ExceptionInfo[Any]:
    """Install `bundle`, expect `error` (exactly, unless not `exact`) naming `phrase`, and that
    nothing changed."""
    before, logged = snapshot(manager), events(manager)
    with pytest.raises(error, match=phrase) as caught:
        manager.install(bundle)
    name = type(caught.value).__name__
    assert not exact or type(caught.value) is error, f"{name} is not {error.__name__}"
    assert_unchanged(manager, before)
    # The one thing that may change: state.db logs the refusal, naming its cause.
    assert events(manager) == [*logged, ("refused", f"{name}: {caught.value}"[:500])]
    return caught


# -- building hostile bundles ---------------------------------------------------------------------


def resign(manifest_raw: bytes, *keys: Key) -> bytes:
    """A valid signatures.json over exactly these (possibly hostile) manifest bytes."""
    signatures = []
    for key in keys:
        private = load_private_key(key.private)
        signatures.append({"keyid": key.keyid, "sig": private.sign(manifest_raw).hex()})
    return canonical({"signatures": sorted(signatures, key=lambda s: s["keyid"])})


@dataclass(frozen=True)
class Parts:
    """The members of a real, validly signed one-file bundle."""

    manifest: bytes
    signatures: bytes
    payload: bytes  # payload/policy.toml

    def members(self, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
        return [
            (archive.MANIFEST, self.manifest),
            ("payload/policy.toml", self.payload),
            *extra,
            (archive.SIGNATURES, self.signatures),
        ]


@pytest.fixture
def parts(workdir: Path, key: Key) -> Parts:
    members = dict(read_members(make_bundle(workdir, [key])))
    assert set(members) == {archive.MANIFEST, "payload/policy.toml", archive.SIGNATURES}
    return Parts(
        members[archive.MANIFEST], members[archive.SIGNATURES], members["payload/policy.toml"]
    )


def with_checksum(block: bytearray | bytes) -> bytes:
    """Recompute a ustar header's checksum after editing it."""
    header = bytearray(block)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def tar_bundle(
    path: Path,
    parts: Parts,
    hostile: tarfile.TarInfo | None,
    fmt: int = tarfile.USTAR_FORMAT,
    **tar_options: Any,
) -> Path:
    """A bundle written by Python's tarfile: the signed members plus one `hostile` entry."""
    with tarfile.open(path, "w", format=fmt, **tar_options) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(archive.MANIFEST, parts.manifest)
        add("payload/policy.toml", parts.payload)
        if hostile is not None:
            data = b"x" * hostile.size if hostile.isreg() else None
            tar.addfile(hostile, io.BytesIO(data) if data is not None else None)
        add(archive.SIGNATURES, parts.signatures)
    return path


def special(name: str, kind: bytes, **attributes: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for attribute, value in attributes.items():
        setattr(info, attribute, value)
    return info


def _active(manager: BundleManager, name: str) -> str | None:
    found = [b.version for b in manager.list() if b.name == name and b.active]
    return found[0] if found else None


def _manifest_digest(bundle: Path) -> str:
    return digest(dict(read_members(bundle))[archive.MANIFEST])


# -- control: the hostile-archive scaffolding itself installs when it holds nothing hostile -------


def test_rebuilt_signed_members_install_as_the_control_case(
    manager: BundleManager, workdir: Path, parts: Parts
):
    raw = write_raw_bundle(workdir / "raw.bundle", parts.members())
    assert manager.verify_file(raw).action == "verified"
    via_tarfile = tar_bundle(workdir / "tarfile.bundle", parts, None)
    assert manager.verify_file(via_tarfile).action == "verified"
    assert manager.install(via_tarfile).action == "installed"


# -- rollback -------------------------------------------------------------------------------------


def test_rollback_to_lower_sequence_is_refused(manager: BundleManager, workdir: Path, key: Key):
    manager.install(make_bundle(workdir, [key], version="2.0.0", sequence=2))
    older = make_bundle(workdir, [key], version="1.0.0", sequence=1)

    assert_refused(manager, older, RollbackError, r"sequence 1, not above 2 .*rollback refused")
    assert _active(manager, "demo") == "2.0.0"


def test_rollback_to_equal_sequence_with_other_version_is_refused(
    manager: BundleManager, workdir: Path, key: Key
):
    manager.install(make_bundle(workdir, [key], version="2.0.0", sequence=2))
    same_sequence = make_bundle(workdir, [key], version="2.0.1", sequence=2)

    assert_refused(manager, same_sequence, RollbackError, r"sequence 2, not above 2")


def test_same_version_with_other_content_is_refused(
    manager: BundleManager, workdir: Path, key: Key
):
    manager.install(make_bundle(workdir / "a", [key], version="1.0.0", sequence=1))
    replacement = make_bundle(
        workdir / "b", [key], version="1.0.0", sequence=2, files={"policy.toml": b"evil = 1\n"}
    )

    assert_refused(manager, replacement, RollbackError, "already installed with other content")


def test_reinstalling_the_very_same_bundle_changes_nothing(
    manager: BundleManager, workdir: Path, key: Key
):
    bundle = make_bundle(workdir, [key])
    first = manager.install(bundle)
    before = snapshot(manager)

    again = manager.install(bundle)

    assert (again.action, again.digest, again.version) == (
        "already-installed",
        first.digest,
        "1.0.0",
    )
    assert_unchanged(manager, before)


# -- freeze ---------------------------------------------------------------------------------------


def test_freeze_with_expired_bundle_is_refused(manager: BundleManager, workdir: Path, key: Key):
    stale = make_bundle(
        workdir, [key], created="2019-01-01T00:00:00Z", expires="2020-01-01T00:00:00Z"
    )

    assert_refused(manager, stale, ExpiredBundleError, "expired at 2020-01-01T00:00:00Z")


def test_freeze_with_clock_set_back_is_refused_by_the_clock_floor(
    trusted: Home, workdir: Path, key: Key
):
    fake_now = datetime(2020, 1, 1, tzinfo=UTC).timestamp()  # the box's clock was set back
    manager = BundleManager(trusted, clock=lambda: fake_now)
    try:
        # Valid at the fake clock, expired by the time the next bundle below was created.
        late = make_bundle(
            workdir,
            [key],
            name="late",
            created="2019-12-01T00:00:00Z",
            expires="2020-01-01T00:01:00Z",
        )
        assert manager.verify_file(late).action == "verified"  # the control: the clock alone
        newer = make_bundle(workdir, [key], name="anchor", created="2020-01-01T00:03:00Z")
        manager.install(newer)
        assert manager.effective_now() == datetime(2020, 1, 1, 0, 3, tzinfo=UTC)

        assert_refused(manager, late, ExpiredBundleError, "expired at 2020-01-01T00:01:00Z")
    finally:
        manager.close()


# -- mix-and-match, arbitrary install, thresholds -------------------------------------------------


def test_mix_and_match_payload_from_other_signed_bundle_is_refused(
    manager: BundleManager, workdir: Path, key: Key
):
    one = make_bundle(workdir, [key], version="1.0.0", files={"weights.bin": b"A" * 64})
    two = make_bundle(workdir, [key], version="2.0.0", sequence=2, files={"weights.bin": b"B" * 64})
    members_one, members_two = dict(read_members(one)), dict(read_members(two))
    mixed = write_raw_bundle(
        workdir / "mixed.bundle",
        [
            (archive.MANIFEST, members_one[archive.MANIFEST]),
            ("payload/weights.bin", members_two["payload/weights.bin"]),  # same size, other bytes
            (archive.SIGNATURES, members_one[archive.SIGNATURES]),
        ],
    )

    assert_refused(manager, mixed, HashMismatchError, r"payload/weights.bin does not match")


def test_arbitrary_install_signed_by_unknown_key_is_refused(
    manager: BundleManager, workdir: Path, key_b: Key
):
    bundle = make_bundle(workdir, [key_b])

    assert_refused(manager, bundle, UnknownKeyError, "signed only by keys not in the trust store")


def test_arbitrary_install_of_unsigned_bundle_is_refused(manager: BundleManager, workdir: Path):
    bundle = make_bundle(workdir, [])

    assert_refused(manager, bundle, UnknownKeyError, "bundle is not signed")


@pytest.fixture
def two_of_two(manager: BundleManager, key_b: Key) -> BundleManager:
    """Two trusted keys (key, key_b) and a threshold of 2."""
    trust.add_key(manager.home, key_b.public)
    trust.write_policy(manager.home, 2)
    return manager


def test_below_threshold_with_one_of_two_signatures_is_refused(
    two_of_two: BundleManager, workdir: Path, key: Key
):
    bundle = make_bundle(workdir, [key])

    assert_refused(two_of_two, bundle, ThresholdError, r"1 valid signature\(s\).*2 required")


def test_below_threshold_with_same_key_signing_twice_is_refused(
    two_of_two: BundleManager, workdir: Path, key: Key
):
    members = dict(read_members(make_bundle(workdir, [key])))
    manifest = members[archive.MANIFEST]
    one = json.loads(resign(manifest, key))["signatures"][0]
    twice = canonical({"signatures": [one, dict(one)]})
    bundle = write_raw_bundle(
        workdir / "twice.bundle",
        [
            (archive.MANIFEST, manifest),
            ("payload/policy.toml", members["payload/policy.toml"]),
            (archive.SIGNATURES, twice),
        ],
    )

    assert_refused(two_of_two, bundle, ThresholdError, r"1 valid signature\(s\).*2 required")


def test_threshold_met_by_two_distinct_keys_installs(
    two_of_two: BundleManager, workdir: Path, key: Key, key_b: Key
):
    outcome = two_of_two.install(make_bundle(workdir, [key, key_b]))

    assert outcome.action == "installed"
    assert outcome.signers == tuple(sorted([key.keyid, key_b.keyid]))


def test_invalid_signature_over_modified_manifest_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    obj = json.loads(parts.manifest)
    obj["description"] = "modified after signing"
    # Canonical again, so only the signature check can catch it. The signature's key id names a
    # trusted key, so this is ThresholdError (a trusted signer whose signature does not verify
    # counts as 0 valid signatures), not UnknownKeyError (reserved for signers nobody trusts).
    tampered = write_raw_bundle(
        workdir / "tampered.bundle",
        [
            (archive.MANIFEST, canonical(obj)),
            ("payload/policy.toml", parts.payload),
            (archive.SIGNATURES, parts.signatures),
        ],
    )

    assert_refused(manager, tampered, ThresholdError, r"0 valid signature\(s\).*1 required")


# -- revocation -----------------------------------------------------------------------------------


def test_bundle_signed_only_by_revoked_key_is_refused(
    manager: BundleManager, workdir: Path, key: Key, key_b: Key
):
    trust.add_key(manager.home, key_b.public)  # two trusted keys, threshold 1
    revocation = make_bundle(
        workdir,
        [key_b],
        name="revocations",
        kind="revocation",
        files={},
        revocation={"keys": [key.keyid]},
    )
    assert manager.install(revocation).action == "installed"
    assert manager.trust_snapshot().revoked_keys == {key.keyid}

    bundle = make_bundle(workdir, [key])

    assert_refused(manager, bundle, ThresholdError, r"0 valid .*1 signer key\(s\) revoked")


def test_revoked_key_cannot_be_trusted_again(
    manager: BundleManager, workdir: Path, key: Key, key_b: Key
):
    trust.add_key(manager.home, key_b.public)
    revocation = make_bundle(
        workdir,
        [key_b],
        name="revocations",
        kind="revocation",
        files={},
        revocation={"keys": [key.keyid]},
    )
    manager.install(revocation)
    trust.remove_key(manager.home, key.keyid)
    before = snapshot(manager)

    with pytest.raises(TrustError, match="has been revoked and cannot be trusted again"):
        trust.add_key(manager.home, key.public, manager.trust_snapshot().revoked_keys)

    assert_unchanged(manager, before)
    assert key.keyid not in trust.load_store(manager.home).keys


def test_revocation_leaving_fewer_keys_than_threshold_is_refused(
    two_of_two: BundleManager, workdir: Path, key: Key, key_b: Key
):
    revocation = make_bundle(
        workdir,
        [key, key_b],
        name="revocations",
        kind="revocation",
        files={},
        revocation={"keys": [key.keyid]},
    )

    assert_refused(
        two_of_two, revocation, RevokedError, r"leave 1 trusted key\(s\), below the threshold of 2"
    )
    assert two_of_two.trust_snapshot().revoked_keys == frozenset()


def test_revoked_bundle_digest_deactivates_and_refuses_it(
    manager: BundleManager, workdir: Path, key: Key
):
    installed = make_bundle(workdir, [key], version="1.0.0", sequence=1)
    never_installed = make_bundle(workdir, [key], version="2.0.0", sequence=2)
    manager.install(installed)
    assert _active(manager, "demo") == "1.0.0"
    revocation = make_bundle(
        workdir,
        [key],
        name="revocations",
        kind="revocation",
        files={},
        revocation={"bundles": [_manifest_digest(installed), _manifest_digest(never_installed)]},
    )

    manager.install(revocation)

    demo = [b for b in manager.list() if b.name == "demo"]
    assert [(b.version, b.active, b.revoked) for b in demo] == [("1.0.0", False, True)]
    before = snapshot(manager)
    with pytest.raises(RevokedError, match=r"demo 1\.0\.0 has been revoked"):
        manager.activate("demo", "1.0.0")
    assert_unchanged(manager, before)

    assert_refused(manager, never_installed, RevokedError, "demo 2.0.0 has been revoked")
    assert_refused(manager, installed, RevokedError, "demo 1.0.0 has been revoked")


# -- incompatible, endless data -------------------------------------------------------------------


def test_incompatible_requires_is_refused(manager: BundleManager, workdir: Path, key: Key):
    bundle = make_bundle(workdir, [key], requires=">=99")

    assert_refused(manager, bundle, IncompatibleBundleError, "requires runtime '>=99'")


def test_endless_data_payload_larger_than_declared_is_refused_before_hashing(
    manager: BundleManager,
    workdir: Path,
    parts: Parts,
    monkeypatch: pytest.MonkeyPatch,
):
    hashed: list[str] = []
    real_hash_member: Callable[..., None] = reader.hash_member

    def spy(source: Any, member: archive.Member, *args: Any, **kwargs: Any) -> None:
        hashed.append(member.name)
        real_hash_member(source, member, *args, **kwargs)

    monkeypatch.setattr(reader, "hash_member", spy)
    endless = write_raw_bundle(
        workdir / "endless.bundle",
        [
            (archive.MANIFEST, parts.manifest),  # validly signed, declares len(PAYLOAD) bytes
            ("payload/policy.toml", PAYLOAD + b"\x00" * 100_000),
            (archive.SIGNATURES, parts.signatures),
        ],
    )

    assert_refused(
        manager,
        endless,
        FileTooLargeError,
        rf"{len(PAYLOAD) + 100_000} bytes, more than the {len(PAYLOAD)} declared.*before",
    )
    assert hashed == []  # refused from the tar header, not a byte of payload hashed


def test_endless_data_in_oversized_manifest_is_refused(trusted: Home, workdir: Path, key: Key):
    small = Settings(bundles=BundleSettings(limits=BundleLimits(manifest_max_bytes=1024)))
    manager = BundleManager(trusted, settings=small)
    try:
        bundle = make_bundle(workdir, [key], description="x" * 1000)  # validly signed

        assert_refused(
            manager, bundle, ManifestError, r"manifest.json is \d+ bytes, over its limit of 1024"
        )
    finally:
        manager.close()


def test_endless_data_in_oversized_signatures_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    limit = manager.limits.signatures_max_bytes
    padded = parts.signatures + b" " * (limit + 1 - len(parts.signatures))  # still valid JSON
    bundle = write_raw_bundle(
        workdir / "padded.bundle",
        [
            (archive.MANIFEST, parts.manifest),
            ("payload/policy.toml", parts.payload),
            (archive.SIGNATURES, padded),
        ],
    )

    assert_refused(
        manager, bundle, ManifestError, f"signatures.json is {limit + 1} bytes, over its limit"
    )


# -- hostile tar ----------------------------------------------------------------------------------


def test_absolute_path_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(("/etc/passwd", b"root::0:0")))

    assert_refused(manager, bundle, UnsafeArchiveError, "'/etc/passwd' has an absolute path")


def test_dot_dot_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(("payload/../../evil", b"x")))

    assert_refused(manager, bundle, UnsafeArchiveError, "climbs out of the bundle with '..'")
    assert not (manager.home.bundles_dir / "evil").exists()
    assert not (manager.home.root / "evil").exists()


def test_symlink_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    link = special("payload/link", tarfile.SYMTYPE, linkname="/etc/passwd")
    bundle = tar_bundle(workdir / "h.bundle", parts, link)

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/link' is a symbolic link")


def test_hard_link_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    link = special("payload/link", tarfile.LNKTYPE, linkname="payload/policy.toml")
    bundle = tar_bundle(workdir / "h.bundle", parts, link)

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/link' is a hard link")


def test_character_device_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    device = special("payload/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    bundle = tar_bundle(workdir / "h.bundle", parts, device)

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/null' is a character device")


def test_block_device_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    device = special("payload/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
    bundle = tar_bundle(workdir / "h.bundle", parts, device)

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/sda' is a block device")


def test_fifo_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = tar_bundle(workdir / "h.bundle", parts, special("payload/pipe", tarfile.FIFOTYPE))

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/pipe' is a FIFO")


def test_directory_entry_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = tar_bundle(workdir / "h.bundle", parts, special("payload/sub", tarfile.DIRTYPE))

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/sub/' is a directory entry")


def test_pax_extended_header_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    extended = tarfile.TarInfo("payload/extra.bin")
    extended.size = 4
    extended.pax_headers = {"path": "payload/" + "a" * 120, "comment": "hidden"}
    bundle = tar_bundle(workdir / "h.bundle", parts, extended, fmt=tarfile.PAX_FORMAT)

    assert_refused(manager, bundle, UnsafeArchiveError, "is a pax extended header")


def test_pax_global_header_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = tar_bundle(
        workdir / "h.bundle", parts, None, fmt=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}
    )

    assert_refused(manager, bundle, UnsafeArchiveError, "is a pax global header")


def test_gnu_long_name_header_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    long_name = tarfile.TarInfo("payload/" + "a" * 120)
    long_name.size = 4
    bundle = tar_bundle(workdir / "h.bundle", parts, long_name, fmt=tarfile.GNU_FORMAT)

    assert_refused(manager, bundle, UnsafeArchiveError, "is a GNU long-name header")


def test_duplicate_member_names_are_refused(manager: BundleManager, workdir: Path, parts: Parts):
    second = ("payload/policy.toml", b"evil = 1\n")
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(second))

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/policy.toml' appears twice")


def test_case_insensitive_duplicate_member_names_are_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    bundle = write_raw_bundle(
        workdir / "h.bundle", parts.members(("payload/A", b"upper"), ("payload/a", b"lower"))
    )

    assert_refused(manager, bundle, UnsafeArchiveError, "'payload/a' appears twice")


def test_duplicate_manifest_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members((archive.MANIFEST, b"{}")))

    assert_refused(manager, bundle, UnsafeArchiveError, "'manifest.json' appears twice")


def test_payload_file_not_in_manifest_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(("payload/extra.sh", b"rm")))

    assert_refused(
        manager, bundle, MalformedBundleError, "payload/extra.sh is not listed in the manifest"
    )


def test_listed_payload_file_missing_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    bundle = write_raw_bundle(
        workdir / "h.bundle",
        [(archive.MANIFEST, parts.manifest), (archive.SIGNATURES, parts.signatures)],
    )

    assert_refused(
        manager, bundle, MalformedBundleError, "payload/policy.toml is listed in the manifest but"
    )


def _with_manifest(workdir: Path, parts: Parts, manifest: bytes, key: Key) -> Path:
    """The bundle with a hostile manifest.json, validly signed by `key` over those very bytes."""
    return write_raw_bundle(
        workdir / "m.bundle",
        [
            (archive.MANIFEST, manifest),
            ("payload/policy.toml", parts.payload),
            (archive.SIGNATURES, resign(manifest, key)),
        ],
    )


def test_duplicate_json_keys_in_manifest_are_refused(
    manager: BundleManager, workdir: Path, parts: Parts, key: Key
):
    assert parts.manifest.startswith(b'{"created"')
    duplicated = b'{"name":"evil",' + parts.manifest[1:]  # JSON parsers disagree on which wins
    bundle = _with_manifest(workdir, parts, duplicated, key)

    assert_refused(manager, bundle, ManifestError, "duplicate JSON key 'name'")


def test_non_canonical_manifest_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts, key: Key
):
    pretty = json.dumps(json.loads(parts.manifest), indent=2, sort_keys=True).encode()
    bundle = _with_manifest(workdir, parts, pretty, key)

    assert_refused(manager, bundle, ManifestError, "not in canonical form")


def test_nan_in_manifest_is_refused(manager: BundleManager, workdir: Path, parts: Parts, key: Key):
    assert b'"sequence":1,' in parts.manifest
    with_nan = parts.manifest.replace(b'"sequence":1,', b'"sequence":NaN,')
    bundle = _with_manifest(workdir, parts, with_nan, key)

    assert_refused(manager, bundle, ManifestError, "JSON constant NaN is not allowed")


def test_bundle_truncated_inside_payload_is_refused(
    manager: BundleManager, workdir: Path, key: Key
):
    bundle = make_bundle(workdir, [key], files={"weights.bin": b"w" * 3000})
    data = bundle.read_bytes()
    start = data.index(b"w" * 3000)
    bundle.write_bytes(data[: start + 1500])

    assert_refused(
        manager, bundle, TruncatedBundleError, "'payload/weights.bin' needs 3000 bytes, 1500 are"
    )


def test_bundle_truncated_inside_header_is_refused(manager: BundleManager, workdir: Path, key: Key):
    bundle = make_bundle(workdir, [key], files={"weights.bin": b"w" * 3000})
    data = bundle.read_bytes()
    payload_header = data.index(b"payload/weights.bin")
    assert payload_header % archive.BLOCK == 0
    bundle.write_bytes(data[: payload_header + 200])

    assert_refused(manager, bundle, TruncatedBundleError, "ends without an end-of-archive marker")


def test_data_after_end_of_archive_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members())
    with bundle.open("ab") as f:
        f.write(b"#!/bin/sh\nrm -rf /\n")

    assert_refused(manager, bundle, UnsafeArchiveError, "data follows the end-of-archive marker")


def test_long_trailer_after_end_of_archive_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts
):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members())
    with bundle.open("ab") as f:
        f.write(b"\x00" * (archive.MAX_TRAILER_BYTES + archive.BLOCK))

    assert_refused(manager, bundle, UnsafeArchiveError, "bytes follow the end-of-archive marker")


def test_corrupt_header_checksum_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members())
    data = bytearray(bundle.read_bytes())
    second_header = archive.BLOCK + len(parts.manifest) + len(archive.padding(len(parts.manifest)))
    assert data[second_header : second_header + 19] == b"payload/policy.toml"
    data[second_header + 136] ^= 0x01  # one bit of mtime; the checksum no longer adds up
    bundle.write_bytes(bytes(data))

    assert_refused(
        manager, bundle, UnsafeArchiveError, f"corrupt tar header at byte {second_header}"
    )


def test_member_outside_payload_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(("evil.sh", b"rm -rf /")))

    assert_refused(manager, bundle, UnsafeArchiveError, "unexpected member 'evil.sh'")


def test_non_ascii_member_name_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    name = "payload/é".encode()  # ten bytes, like the placeholder it replaces
    header = bytearray(archive.header("payload/xx", 1))
    header[0:10] = name
    path = workdir / "h.bundle"
    write_raw_bundle(path, parts.members())
    data = path.read_bytes()
    end = len(data) - len(archive.END_OF_ARCHIVE)
    path.write_bytes(data[:end] + with_checksum(header) + b"x" + archive.padding(1) + data[end:])

    assert_refused(manager, path, UnsafeArchiveError, r"member name b'payload/\\xc3\\xa9' is not")


def test_payload_path_that_is_both_file_and_folder_is_refused(
    manager: BundleManager, workdir: Path, parts: Parts, key: Key
):
    obj = json.loads(parts.manifest)
    obj["files"] = [
        {"path": "a", "size": 1, "sha256": hashlib.sha256(b"1").hexdigest()},
        {"path": "a/b", "size": 1, "sha256": hashlib.sha256(b"2").hexdigest()},
    ]
    manifest = canonical(obj)  # validly signed: only a structural check may refuse it
    bundle = write_raw_bundle(
        workdir / "h.bundle",
        [
            (archive.MANIFEST, manifest),
            ("payload/a", b"1"),
            ("payload/a/b", b"2"),
            (archive.SIGNATURES, resign(manifest, key)),
        ],
    )

    # Any MalformedBundleError naming the clash will do; a raw OSError breaks the contract.
    assert_refused(manager, bundle, MalformedBundleError, r"'?(payload/)?a(/b)?'? ", exact=False)


def test_member_name_with_control_characters_is_refused_in_one_line(
    manager: BundleManager, workdir: Path, parts: Parts
):
    forged = "payload/x\nok: demo 9.9.9 installed\x1b[2K"
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members((forged, b"x")))

    caught = assert_refused(manager, bundle, UnsafeArchiveError, "member")
    message = str(caught.value)
    assert not [c for c in message if ord(c) < 0x20 or ord(c) == 0x7F], repr(message)


def test_bundle_created_beyond_clock_skew_cannot_poison_the_clock_floor(
    trusted: Home, workdir: Path, key: Key
):
    fake_now = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    manager = BundleManager(trusted, clock=lambda: fake_now)
    try:
        assert manager.limits.clock_skew_s == 300
        # Installed, this would move the clock floor a day ahead for good: every bundle
        # expiring before then would be refused and every installed one stop activating.
        poison = make_bundle(workdir, [key], name="poison", created="2020-01-02T00:00:00Z")

        assert_refused(manager, poison, BundleError, r"created|future", exact=False)
        assert manager.effective_now() == datetime(2020, 1, 1, tzinfo=UTC)
    finally:
        manager.close()


# -- the CLI: one line naming the cause, exit 1, no traceback -------------------------------------


def run_cli(home: Home, bundle: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "bundle", "install", str(bundle)],
        env={**os.environ, "APPLIANCE_HOME": str(home.root)},
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def assert_cli_refuses(manager: BundleManager, bundle: Path, phrase: str) -> None:
    before = snapshot(manager)
    result = run_cli(manager.home, bundle)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("error: ") and re.search(phrase, lines[0]), stderr
    assert b"Traceback" not in result.stdout + result.stderr
    assert "\x1b" not in stderr, repr(stderr)  # no terminal escape reaches the operator
    assert_unchanged(manager, before)


def test_cli_rollback_to_lower_sequence_is_refused(manager: BundleManager, workdir: Path, key: Key):
    manager.install(make_bundle(workdir, [key], version="2.0.0", sequence=2))
    older = make_bundle(workdir, [key], version="1.0.0", sequence=1)

    assert_cli_refuses(manager, older, r"not above 2 already installed \(rollback refused\)")


def test_cli_arbitrary_install_signed_by_unknown_key_is_refused(
    manager: BundleManager, workdir: Path, key_b: Key
):
    assert_cli_refuses(
        manager, make_bundle(workdir, [key_b]), "signed only by keys not in the trust store"
    )


def test_cli_absolute_path_member_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members(("/etc/passwd", b"root::0:0")))

    assert_cli_refuses(manager, bundle, "member '/etc/passwd' has an absolute path")


def test_cli_endless_data_payload_is_refused(manager: BundleManager, workdir: Path, parts: Parts):
    bundle = write_raw_bundle(
        workdir / "endless.bundle",
        [
            (archive.MANIFEST, parts.manifest),
            ("payload/policy.toml", PAYLOAD * 1000),
            (archive.SIGNATURES, parts.signatures),
        ],
    )

    assert_cli_refuses(manager, bundle, f"more than the {len(PAYLOAD)} declared in the manifest")


def test_cli_hostile_member_name_cannot_forge_output_lines(
    manager: BundleManager, workdir: Path, parts: Parts
):
    forged = "/x\nok: demo 9.9.9 installed\x1b[2K"
    bundle = write_raw_bundle(workdir / "h.bundle", parts.members((forged, b"x")))

    assert_cli_refuses(manager, bundle, r"member .*(absolute path|control char)")


def test_cli_unsigned_manifest_cannot_forge_output_lines(
    manager: BundleManager, workdir: Path, parts: Parts
):
    obj = json.loads(parts.manifest)
    obj["requires"] = ">=0\nok: demo 9.9.9 installed"
    manifest = canonical(obj)  # not signed at all: refused while parsing, before signatures
    bundle = write_raw_bundle(
        workdir / "h.bundle",
        [
            (archive.MANIFEST, manifest),
            ("payload/policy.toml", parts.payload),
            (archive.SIGNATURES, canonical({"signatures": []})),
        ],
    )

    assert_cli_refuses(manager, bundle, "is not a version range")
