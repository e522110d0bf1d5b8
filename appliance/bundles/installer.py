"""Verify and install bundle files: the I/O around ``verify.verify_metadata``.

Install is atomic. The payload is hashed while it is copied into a private staging folder on
the same filesystem, every file and folder is fsynced, the folder is renamed into
``bundles/NAME/VERSION``, and only then one SQLite transaction records it and switches the
active version. A crash at any instant leaves the old version active and intact; what a crash
leaves behind (a staging folder, a renamed folder with no record) is removed by ``recover``,
which every operation runs first.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from appliance import __version__
from appliance.bundles import archive, records, trust
from appliance.bundles.keys import PublicKey
from appliance.bundles.kinds import ACTIVATABLE_KINDS
from appliance.bundles.manifest import digest, parse_manifest, parse_timestamp
from appliance.bundles.outcome import Outcome
from appliance.bundles.payload import Progress
from appliance.bundles.reader import BundleReader
from appliance.bundles.verify import TrustSnapshot, VerifiedManifest, VerifyContext, verify_metadata
from appliance.errors import (
    ApplianceError,
    BundleError,
    BundleNotFoundError,
    ExpiredBundleError,
    PayloadError,
    PolicyError,
    RevokedError,
    RollbackError,
)
from appliance.fsutil import fsync_dir, make_read_only, remove_tree
from appliance.home import Home
from appliance.policy_source import POLICY_FILE
from appliance.settings import Settings, load_settings
from appliance.state import open_state, write_transaction


class BundleManager:
    """Installed bundles of one APPLIANCE_HOME: verify, install, activate, roll back, list."""

    def __init__(
        self,
        home: Home,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home.ensure()
        self.settings = settings if settings is not None else load_settings(home.config_file)
        self.limits = self.settings.bundles.limits
        self._clock = clock
        self.db: sqlite_utils.Database = open_state(home)

    def close(self) -> None:
        self.db.close()

    # -- locking and recovery -------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One installer at a time per home (across processes)."""
        with open(self.home.bundles_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._recover()
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def recover(self) -> None:
        """Clear what an interrupted install left behind (the daemon calls this at start)."""
        with self._locked():
            pass

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the installer lock (after recovery) for an operation of another module."""
        with self._locked():
            yield

    def _recover(self) -> None:
        """Remove what an interrupted install left: staging folders and unrecorded versions."""
        trust.recover(self.home, lambda d: records.by_digest(self.db, d) is not None)
        for leftover in self.home.staging_dir.iterdir():
            remove_tree(leftover)
        recorded = {(b.name, b.version) for b in records.query(self.db)}
        for name_dir in self.home.bundles_dir.iterdir():
            if not name_dir.is_dir() or name_dir.name.startswith("."):
                continue
            for version_dir in name_dir.iterdir():
                if (name_dir.name, version_dir.name) not in recorded:
                    remove_tree(version_dir)

    # -- verification ----------------------------------------------------------------------

    def trust_snapshot(self) -> TrustSnapshot:
        store = trust.load_store(self.home)
        return TrustSnapshot(
            keys=store.keys,
            threshold=store.threshold,
            revoked_keys=records.revoked_keys(self.db),
            revoked_bundles=records.revoked_bundles(self.db),
        )

    def effective_now(self) -> datetime:
        """The wall clock, but never earlier than the newest bundle installed (clock floor)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        newest = records.newest_created(self.db)
        if newest is not None:
            now = max(now, parse_timestamp(newest))
        return now

    def _context(self) -> VerifyContext:
        return VerifyContext(
            now=self.effective_now(),
            runtime_version=__version__,
            sequence_floors=records.sequence_floors(self.db),
            limits=self.limits,
        )

    def _open(self, reader: BundleReader) -> VerifiedManifest | records.InstalledBundle:
        """Verify a bundle's metadata; an identical installed bundle is returned as is."""
        try:
            verified = verify_metadata(
                reader.manifest_raw, reader.signatures_raw, self.trust_snapshot(), self._context()
            )
        except RollbackError:
            # Signatures have passed by now: an identical bundle is a no-op, not an attack.
            existing = records.by_digest(self.db, digest(reader.manifest_raw))
            if existing is None:
                raise
            return existing
        reader.check_listing(verified.manifest)
        return verified

    def verify_file(self, path: Path, progress: Progress | None = None) -> Outcome:
        """Full offline verification, payload hashes included; raises unless it would install.

        The given file is always verified, every byte of it, also when a bundle with the
        same manifest is installed: a tampered copy of an installed bundle is refused, not
        reported as "already installed".
        """
        started = time.perf_counter()
        with BundleReader(path, self.limits) as reader:
            opened = self._open(reader)
            installed = opened if isinstance(opened, records.InstalledBundle) else None
            verified = self._reverify(reader) if installed is not None else opened
            assert isinstance(verified, VerifiedManifest)
            reader.copy_payload(verified.manifest, None, progress)
        if installed is not None:
            return Outcome.of_installed(
                installed, "already-installed", time.perf_counter() - started
            )
        return Outcome.of_verified(verified, "verified", False, time.perf_counter() - started)

    def _reverify(self, reader: BundleReader) -> VerifiedManifest:
        """Every check of an installed bundle's file but the rollback one (its own sequence
        is the floor), so that its payload can be hashed like any other's."""
        context = self._context()
        manifest_name = parse_manifest(reader.manifest_raw, self.limits.manifest_max_bytes).name
        floors = {k: v for k, v in context.sequence_floors.items() if k != manifest_name}
        verified = verify_metadata(
            reader.manifest_raw,
            reader.signatures_raw,
            self.trust_snapshot(),
            dataclasses.replace(context, sequence_floors=floors),
        )
        reader.check_listing(verified.manifest)
        return verified

    # -- installation ------------------------------------------------------------------------

    def install(
        self, path: Path, *, activate: bool = True, progress: Progress | None = None
    ) -> Outcome:
        """Verify and install a bundle file; on any failure nothing changes."""
        started = time.perf_counter()
        try:
            # Opened before the lock: a path that is no regular file (a FIFO) or no bundle is
            # refused here, and reading needs no lock; what is verified comes later, locked.
            reader = BundleReader(path, self.limits)
        except ApplianceError as e:
            self._log_refusal(path, e)
            raise
        with reader, self._locked():
            try:
                return self._install_locked(reader, activate, progress, started)
            except ApplianceError as e:
                self._log_refusal(path, e)
                raise

    def _install_locked(
        self, reader: BundleReader, activate: bool, progress: Progress | None, started: float
    ) -> Outcome:
        verified = self._open(reader)
        if isinstance(verified, records.InstalledBundle):
            return Outcome.of_installed(
                verified, "already-installed", time.perf_counter() - started
            )
        manifest = verified.manifest
        if records.get(self.db, manifest.name, manifest.version) is not None:
            raise RollbackError(
                f"{manifest.name} {manifest.version} is already installed with other "
                "content; a publisher must give a new version a new version string"
            )
        staging = Path(tempfile.mkdtemp(prefix="install-", dir=self.home.staging_dir))
        try:
            self._stage(reader, verified, staging, progress)
            _check_policy(verified, staging)
            final = self.home.bundle_dir(manifest.name, manifest.version)
            final.parent.mkdir(exist_ok=True)
            fsync_dir(self.home.bundles_dir)
            os.rename(staging, final)
        except BaseException:
            remove_tree(staging)
            raise
        try:
            # Moving a folder to a new parent needs write access to it (for non-root users),
            # so the top folder turns read-only only once it is in place.
            os.chmod(final, 0o555)
            fsync_dir(final)
            fsync_dir(final.parent)
            make_active = self._commit(verified, activate)
        except BaseException:
            # Never leave an unrecorded version in place; a recorded one stays whatever was
            # interrupted after the commit.
            if records.get(self.db, manifest.name, manifest.version) is None:
                remove_tree(final)
            raise
        return Outcome.of_verified(
            verified, "installed", make_active, time.perf_counter() - started
        )

    def _commit(self, verified: VerifiedManifest, activate: bool) -> bool:
        """Record the bundle and apply its effect in one transaction; True if made active.

        A keyring's new trust store is prepared before the commit and swapped in after it;
        recovery finishes the swap only for a recorded keyring, so trust never changes
        without the bundle that changed it.
        """
        manifest = verified.manifest
        prepared = None
        if manifest.kind == "keyring":
            prepared = _prepare_keyring(self.home, verified)
        make_active = activate and manifest.kind in ACTIVATABLE_KINDS
        try:
            with write_transaction(self.db) as conn:
                records.record_install(conn, verified)
                if manifest.kind == "revocation":
                    records.record_revocation(conn, verified)
                switched = records.NOT_ACTIVATED
                if make_active:
                    previous = records.set_active(conn, manifest.name, manifest.version)
                    switched = records.switched_from(previous)
                records.record_event(
                    conn,
                    "install",
                    "accepted",
                    name=manifest.name,
                    version=manifest.version,
                    digest=verified.digest,
                    reason=switched,
                )
        except BaseException:
            if prepared is not None and records.by_digest(self.db, verified.digest) is None:
                trust.discard(prepared)
            raise
        if prepared is not None:
            trust.swap_in(self.home, prepared)
        return make_active

    def _stage(
        self,
        reader: BundleReader,
        verified: VerifiedManifest,
        staging: Path,
        progress: Progress | None,
    ) -> None:
        _write_synced(staging / archive.MANIFEST, verified.raw)
        _write_synced(staging / archive.SIGNATURES, verified.signatures_raw)
        payload_root = staging / "payload"
        payload_root.mkdir()
        folders = reader.copy_payload(verified.manifest, payload_root, progress)
        make_read_only(staging)
        os.chmod(staging, 0o700)  # see _install_locked: read-only once in place
        for folder in sorted(folders | {payload_root}, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)
        fsync_dir(staging)

    def _log_refusal(self, path: Path, error: ApplianceError) -> None:
        try:
            with write_transaction(self.db) as conn:
                records.record_event(
                    conn, "install", "refused", reason=f"{type(error).__name__}: {error}"[:500]
                )
        except ApplianceError:
            pass  # the refusal itself is what the operator must see

    # -- activation --------------------------------------------------------------------------

    def list(self) -> list[records.InstalledBundle]:
        return records.query(self.db)

    def _installed(self, name: str, version: str) -> records.InstalledBundle:
        """The record of a bundle this manager just acted on (it cannot have gone)."""
        bundle = records.get(self.db, name, version)
        if bundle is None:
            raise BundleNotFoundError(f"{name} {version} is not installed")
        return bundle

    def _check_activatable(self, bundle: records.InstalledBundle) -> None:
        if bundle.kind not in ACTIVATABLE_KINDS:
            raise BundleError(f"{bundle.kind} bundles take effect on install; nothing to activate")
        if bundle.revoked:
            raise RevokedError(f"{bundle.name} {bundle.version} has been revoked")
        if bundle.expires is not None and self.effective_now() >= parse_timestamp(bundle.expires):
            raise ExpiredBundleError(f"{bundle.name} {bundle.version} expired at {bundle.expires}")
        if not self.home.bundle_dir(bundle.name, bundle.version).is_dir():
            raise PayloadError(f"{bundle.name} {bundle.version} is recorded but its files are gone")

    def activate(self, name: str, version: str) -> records.InstalledBundle:
        with self._locked():
            bundle = records.get(self.db, name, version)
            if bundle is None:
                raise BundleNotFoundError(f"{name} {version} is not installed")
            self._check_activatable(bundle)
            with write_transaction(self.db) as conn:
                previous = records.set_active(conn, name, version)
                records.record_event(
                    conn,
                    "activate",
                    "accepted",
                    name=name,
                    version=version,
                    digest=bundle.digest,
                    reason=records.switched_from(previous),
                )
            return self._installed(name, version)

    def undo(self, name: str) -> records.InstalledBundle:
        """Re-activate the version that was active before the last activation of `name`
        (by install, activate, rollback or undo), whatever its sequence; floors stay put."""
        with self._locked():
            current = records.active(self.db, name)
            if current is None:
                raise BundleNotFoundError(f"no version of {name} is active")
            last = records.last_switch(self.db, name)
            if last is None or last[0] != current.version:
                raise BundleNotFoundError(
                    f"no record of what was active before {name} {current.version}; "
                    f"pick a version: appliance bundle activate {name} VERSION"
                )
            previous = last[1]
            if previous == records.NOTHING:
                raise BundleNotFoundError(
                    f"{name} {current.version} was the first active version of {name}; "
                    "there is nothing to go back to"
                )
            bundle = records.get(self.db, name, previous)
            if bundle is None:
                raise BundleNotFoundError(
                    f"{name} {previous}, active before {current.version}, is no longer installed"
                )
            self._check_activatable(bundle)
            with write_transaction(self.db) as conn:
                records.set_active(conn, name, previous)
                records.record_event(
                    conn,
                    "rollback",
                    "accepted",
                    name=name,
                    version=previous,
                    digest=bundle.digest,
                    reason=records.switched_from(current.version),
                )
            return self._installed(name, previous)

    def rollback(self, name: str) -> records.InstalledBundle:
        """Re-activate the installed version just below the active one; floors stay put."""
        with self._locked():
            current = records.active(self.db, name)
            if current is None:
                raise BundleNotFoundError(f"no version of {name} is active")
            earlier = [
                b
                for b in records.query(self.db, "WHERE b.name = ?", (name,))
                if b.sequence < current.sequence
            ]
            for candidate in sorted(earlier, key=lambda b: b.sequence, reverse=True):
                try:
                    self._check_activatable(candidate)
                except BundleError:
                    continue
                with write_transaction(self.db) as conn:
                    previous = records.set_active(conn, name, candidate.version)
                    records.record_event(
                        conn,
                        "rollback",
                        "accepted",
                        name=name,
                        version=candidate.version,
                        digest=candidate.digest,
                        reason=records.switched_from(previous),
                    )
                return self._installed(name, candidate.version)
            raise BundleNotFoundError(
                f"no earlier usable version of {name} is installed to roll back to"
            )


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(fd)


def _prepare_keyring(home: Home, verified: VerifiedManifest) -> Path:
    keyring = verified.manifest.keyring
    assert keyring is not None
    keys = [PublicKey.from_raw(bytes.fromhex(k.public), k.name) for k in keyring.keys]
    return trust.prepare_store(home, keys, keyring.threshold, verified.digest)


def _check_policy(verified: VerifiedManifest, staging: Path) -> None:
    """A policy bundle installs only if its policy is valid: read from the verified copy."""
    if verified.manifest.kind != "policy":
        return
    from appliance.policy.load import parse_policy

    m = verified.manifest
    path = staging / "payload" / POLICY_FILE
    try:
        parse_policy(path.read_text("utf-8"), source=f"{m.name} {m.version}: {POLICY_FILE}")
    except (PolicyError, UnicodeDecodeError) as e:
        raise PayloadError(f"{m.name} {m.version} carries an invalid policy: {e}") from e
