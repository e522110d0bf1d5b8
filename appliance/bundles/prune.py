"""Removing installed bundle versions: one by name (``bundle remove``), or the old ones
(``bundle prune``), to reclaim disk.

Never removed: the active version; a version an installed adapter was trained on (its
``model.base_digest``); keyring and revocation bundles (they are the record of the trust
store and of what is revoked). A removed version's anti-rollback floor stays, so that
version cannot be installed again.

Atomic, under the installer lock: the record goes first, in one transaction (with an event);
then the folder is renamed into the staging area (one rename: ``bundles/NAME/VERSION`` is
whole or gone) and deleted there. A crash after the commit leaves a folder with no record,
which the next bundle operation's recovery removes; a crash before it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.bundles import records
from appliance.bundles.installer import BundleManager
from appliance.bundles.kinds import ACTIVATABLE_KINDS
from appliance.errors import BundleError, BundleNotFoundError
from appliance.fsutil import fsync_dir, remove_tree
from appliance.state import write_transaction


@dataclass(frozen=True)
class Removed:
    name: str
    version: str
    sequence: int
    size: int  # bytes of payload freed

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "size": self.size,
        }


def _dependants(manager: BundleManager, bundle: records.InstalledBundle) -> list[str]:
    """Installed adapters trained on exactly this bundle."""
    return [
        f"{a.name} {a.version}"
        for a in records.query(manager.db, "WHERE b.kind = 'adapter'")
        if (a.manifest.get("model") or {}).get("base_digest") == bundle.digest
    ]


def why_kept(manager: BundleManager, bundle: records.InstalledBundle) -> str | None:
    """Why `bundle` must stay, or None when it may be removed."""
    if bundle.active:
        return "it is the active version (activate another one first)"
    if bundle.kind not in ACTIVATABLE_KINDS:
        return f"{bundle.kind} bundles are the record of the trust store and stay installed"
    users = _dependants(manager, bundle)
    if users:
        return f"installed adapter {', '.join(users)} was trained on it (remove that first)"
    return None


def _remove_locked(manager: BundleManager, bundle: records.InstalledBundle) -> Removed:
    reason = why_kept(manager, bundle)
    if reason is not None:
        raise BundleError(f"{bundle.name} {bundle.version} is not removed: {reason}")
    with write_transaction(manager.db) as conn:
        records.delete(conn, bundle.name, bundle.version)
        records.record_event(
            conn,
            "remove",
            "accepted",
            name=bundle.name,
            version=bundle.version,
            digest=bundle.digest,
        )
    folder = manager.home.bundle_dir(bundle.name, bundle.version)
    if folder.exists():
        trash = Path(tempfile.mkdtemp(prefix="remove-", dir=manager.home.staging_dir))
        os.chmod(folder, 0o700)  # a read-only folder cannot be moved to a new parent
        os.rename(folder, trash / "version")
        fsync_dir(folder.parent)
        remove_tree(trash)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # the name's folder, once its last version is gone
    return Removed(bundle.name, bundle.version, bundle.sequence, bundle.total_size)


def remove(manager: BundleManager, name: str, version: str) -> Removed:
    """Remove one installed version; refused (nothing changed) when it must stay."""
    with manager.locked():
        bundle = records.get(manager.db, name, version)
        if bundle is None:
            raise BundleNotFoundError(f"{name} {version} is not installed")
        return _remove_locked(manager, bundle)


def candidates(
    manager: BundleManager, name: str | None, keep: int
) -> list[records.InstalledBundle]:
    """The versions `prune` removes: of each name, those below the active version's sequence,
    all but the newest `keep` of them (left for rollback), and none that must stay."""
    chosen = []
    bundles = records.query(manager.db, "WHERE b.name = ?", (name,)) if name else manager.list()
    if name is not None and not bundles:
        raise BundleNotFoundError(f"no version of {name} is installed")
    for each in sorted({b.name for b in bundles}):
        versions = [b for b in bundles if b.name == each]
        active = next((b for b in versions if b.active), None)
        if active is None:
            continue  # nothing active: no version is "old"
        older = sorted(
            (b for b in versions if b.sequence < active.sequence),
            key=lambda b: b.sequence,
            reverse=True,
        )
        chosen += [b for b in older[keep:] if why_kept(manager, b) is None]
    return chosen


def prune(manager: BundleManager, name: str | None, keep: int) -> list[Removed]:
    """Remove the old versions (see ``candidates``), each atomically."""
    with manager.locked():
        return [_remove_locked(manager, b) for b in candidates(manager, name, keep)]
