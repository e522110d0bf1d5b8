"""The decision whether a bundle's metadata is trusted. No I/O; raises on anything invalid.

The order is fixed and each step trusts only what the steps before it established:

1. parse manifest.json and signatures.json under hard size limits (strict, canonical);
2. count valid signatures from trusted, unrevoked keys against the threshold (a keyring
   bundle must also meet the threshold of the keys it introduces);
3. check ``expires`` against a clock that never runs backwards, ``requires`` against this
   runtime, the revocation list, and the anti-rollback sequence floor.

The installer (``installer.py``) does the I/O around this and only then reads payload bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from appliance.bundles.keys import PublicKey
from appliance.bundles.kinds import KINDS
from appliance.bundles.manifest import (
    Manifest,
    digest,
    format_timestamp,
    parse_manifest,
    parse_signatures,
)
from appliance.errors import (
    ExpiredBundleError,
    FutureBundleError,
    IncompatibleBundleError,
    ManifestError,
    RevokedError,
    RollbackError,
    ThresholdError,
    UnknownKeyError,
)
from appliance.settings import BundleLimits


@dataclass(frozen=True)
class TrustSnapshot:
    """Everything the verifier needs to know about whom to trust, read once."""

    keys: Mapping[str, PublicKey]  # key id -> key
    threshold: int
    revoked_keys: frozenset[str] = frozenset()
    revoked_bundles: frozenset[str] = frozenset()

    @property
    def usable_keys(self) -> dict[str, PublicKey]:
        return {k: v for k, v in self.keys.items() if k not in self.revoked_keys}


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signatures and metadata checks have all passed."""

    manifest: Manifest
    raw: bytes  # the exact signed bytes
    signatures_raw: bytes
    digest: str
    signers: tuple[str, ...]  # trusted key ids with a valid signature, sorted


@dataclass(frozen=True)
class VerifyContext:
    """The facts of this box that a bundle is checked against."""

    now: datetime  # effective time: never earlier than the newest bundle already installed
    runtime_version: str
    sequence_floors: Mapping[str, int] = field(default_factory=dict)  # name -> highest installed
    limits: BundleLimits = field(default_factory=BundleLimits)


def count_signers(
    raw: bytes, signatures: list[tuple[str, bytes]], trust: TrustSnapshot
) -> set[str]:
    """Key ids of trusted, unrevoked keys whose signature over `raw` is valid."""
    usable = trust.usable_keys
    valid: set[str] = set()
    for keyid, sig in signatures:
        key = usable.get(keyid)
        if key is not None and keyid not in valid and key.verifies(sig, raw):
            valid.add(keyid)
    return valid


def check_threshold(
    raw: bytes, signatures: list[tuple[str, bytes]], trust: TrustSnapshot, whose: str
) -> set[str]:
    valid = count_signers(raw, signatures, trust)
    if len(valid) >= trust.threshold:
        return valid
    offered = {keyid for keyid, _ in signatures}
    if not offered:
        raise UnknownKeyError("bundle is not signed")
    if not offered & set(trust.keys):
        short = ", ".join(sorted(k[:16] for k in offered))
        raise UnknownKeyError(
            f"bundle is signed only by keys not in {whose} ({short}); not installed"
        )
    revoked = offered & trust.revoked_keys
    detail = f"; {len(revoked)} signer key(s) revoked" if revoked else ""
    raise ThresholdError(
        f"bundle has {len(valid)} valid signature(s) from keys in {whose}, "
        f"{trust.threshold} required{detail}"
    )


def _keyring_trust(manifest: Manifest, current: TrustSnapshot) -> TrustSnapshot:
    assert manifest.keyring is not None
    keys = {}
    for entry in manifest.keyring.keys:
        key = PublicKey.from_raw(bytes.fromhex(entry.public), entry.name)
        keys[key.keyid] = key
    return TrustSnapshot(keys, manifest.keyring.threshold, current.revoked_keys)


def _check_revocation_leaves_quorum(manifest: Manifest, trust: TrustSnapshot) -> None:
    assert manifest.revocation is not None
    remaining = set(trust.usable_keys) - set(manifest.revocation.keys)
    if len(remaining) < trust.threshold:
        raise RevokedError(
            f"revocation would leave {len(remaining)} trusted key(s), below the threshold of "
            f"{trust.threshold}; install a keyring bundle that rotates the keys first"
        )


def _check_limits(manifest: Manifest, limits: BundleLimits) -> None:
    if len(manifest.files) > limits.max_files:
        raise ManifestError(f"manifest lists more than {limits.max_files} files")
    for entry in manifest.files:
        if entry.size > limits.max_file_bytes:
            raise ManifestError(
                f"payload file '{entry.path}' declares {entry.size} bytes, over the "
                f"per-file limit of {limits.max_file_bytes} bytes"
            )
    if manifest.total_size > limits.max_total_bytes:
        raise ManifestError(
            f"payload totals {manifest.total_size} bytes, over the limit of "
            f"{limits.max_total_bytes} bytes"
        )


def verify_metadata(
    manifest_raw: bytes, signatures_raw: bytes, trust: TrustSnapshot, context: VerifyContext
) -> VerifiedManifest:
    """Decide whether the bundle described by these bytes may be installed."""
    limits = context.limits
    manifest = parse_manifest(manifest_raw, limits.manifest_max_bytes)
    _check_limits(manifest, limits)
    parsed = parse_signatures(signatures_raw, limits.signatures_max_bytes, limits.max_signatures)
    signatures = [(s.keyid, bytes.fromhex(s.sig)) for s in parsed.signatures]

    signers = check_threshold(manifest_raw, signatures, trust, "the trust store")
    if KINDS[manifest.kind].own_threshold:  # a keyring: its own new keys sign it too
        check_threshold(
            manifest_raw, signatures, _keyring_trust(manifest, trust), "its own new keyring"
        )

    if manifest.created_at > context.now + timedelta(seconds=limits.clock_skew_s):
        # Installed, it would drag the clock floor forward and freeze out every bundle that
        # expires before then.
        raise FutureBundleError(
            f"bundle {manifest.name} {manifest.version} was created {manifest.created}, later "
            f"than this box's clock ({format_timestamp(context.now)}) allows; check the clock"
        )
    expires = manifest.expires_at
    if expires is not None and context.now >= expires:
        raise ExpiredBundleError(
            f"bundle {manifest.name} {manifest.version} expired at {manifest.expires}"
        )
    if not SpecifierSet(manifest.requires).contains(
        Version(context.runtime_version), prereleases=True
    ):
        raise IncompatibleBundleError(
            f"bundle {manifest.name} {manifest.version} requires runtime "
            f"'{manifest.requires}', this is {context.runtime_version}"
        )
    bundle_digest = digest(manifest_raw)
    if bundle_digest in trust.revoked_bundles:
        raise RevokedError(f"bundle {manifest.name} {manifest.version} has been revoked")
    if manifest.kind == "revocation":
        _check_revocation_leaves_quorum(manifest, trust)
    floor = context.sequence_floors.get(manifest.name, 0)
    if manifest.sequence <= floor:
        raise RollbackError(
            f"bundle {manifest.name} {manifest.version} has sequence {manifest.sequence}, "
            f"not above {floor} already installed (rollback refused)"
        )
    return VerifiedManifest(
        manifest, manifest_raw, signatures_raw, bundle_digest, tuple(sorted(signers))
    )
