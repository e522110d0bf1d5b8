"""The trust store: publisher keys in APPLIANCE_HOME/trust and the k-of-n threshold.

``trust/NAME.pub`` holds one PEM public key; ``trust/trust.toml`` holds ``threshold = k``
(1 when absent). Anything unreadable in the store fails closed: nothing installs until an
operator fixes it. A keyring bundle replaces the whole store (``prepare_store``, then
``swap_in`` once the bundle is committed), and ``recover`` makes that atomic across crashes.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.bundles.keys import PublicKey, load_public_key
from appliance.errors import TrustError
from appliance.fsutil import fsync_dir
from appliance.home import Home

_NEW_PREFIX = "trust.new-"
_OLD_PREFIX = "trust.old-"
_COMPLETE_MARK = ".complete"


class TrustPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: int = Field(default=1, ge=1, le=64)


@dataclass(frozen=True)
class TrustStore:
    keys: dict[str, PublicKey]  # key id -> key
    threshold: int


def _read_policy(path: Path) -> TrustPolicy:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return TrustPolicy()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TrustError(f"{path} is unreadable: {e}") from e
    try:
        return TrustPolicy.model_validate(data)
    except ValidationError as e:
        item = e.errors()[0]
        key = ".".join(str(p) for p in item["loc"])
        raise TrustError(f"{path}: '{key}': {item['msg']}") from e


def load_store(home: Home) -> TrustStore:
    folder = store_dir(home)
    keys: dict[str, PublicKey] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.pub")):
            try:
                key = load_public_key(path)
            except Exception as e:
                raise TrustError(f"trust store file {path} is unusable: {e}") from e
            keys.setdefault(key.keyid, key)
    policy = _read_policy(folder / home.trust_policy_file.name)
    return TrustStore(keys, policy.threshold)


def _policy_text(threshold: int) -> str:
    return (
        "# Signatures from this many distinct trusted keys are needed to install a bundle.\n"
        f"threshold = {threshold}\n"
    )


def write_policy(home: Home, threshold: int) -> None:
    home.trust_dir.mkdir(parents=True, exist_ok=True)
    tmp = home.trust_policy_file.with_suffix(".tmp")
    tmp.write_text(_policy_text(threshold))
    os.replace(tmp, home.trust_policy_file)


def set_threshold(home: Home, threshold: int, revoked: frozenset[str] = frozenset()) -> int:
    """Require `threshold` signatures from now on; returns the previous threshold.

    Refused when fewer usable (unrevoked) keys are trusted: nothing could install then.
    """
    store = load_store(home)
    usable = len(set(store.keys) - revoked)
    if threshold < 1:
        raise TrustError("the threshold must be at least 1")
    if threshold > usable:
        raise TrustError(
            f"threshold {threshold} needs {threshold} usable trusted keys, and {usable} are "
            "trusted; add keys first (appliance trust add FILE)"
        )
    write_policy(home, threshold)
    return store.threshold


def add_key(home: Home, pubfile: Path, revoked: frozenset[str] = frozenset()) -> PublicKey:
    """Copy a publisher's public key into the store; refuse revoked or conflicting keys."""
    key = load_public_key(pubfile)
    if key.keyid in revoked:
        raise TrustError(f"key {key.keyid[:16]} has been revoked and cannot be trusted again")
    store = load_store(home)
    if key.keyid in store.keys:
        return store.keys[key.keyid]
    target = home.trust_dir / f"{key.name}.pub"
    if target.exists():
        raise TrustError(
            f"a different key named '{key.name}' is already trusted; rename {pubfile.name}"
        )
    home.trust_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".pub.tmp")
    tmp.write_bytes(key.pem())
    os.replace(tmp, target)
    if not home.trust_policy_file.exists():
        write_policy(home, 1)
    return key


def resolve_keyid(store: TrustStore, prefix: str) -> PublicKey:
    prefix = prefix.lower()
    if len(prefix) < 8:
        raise TrustError("give at least 8 hex characters of the key id")
    matches = [k for keyid, k in store.keys.items() if keyid.startswith(prefix)]
    if not matches:
        raise TrustError(f"no trusted key has an id starting with {prefix}")
    if len(matches) > 1:
        raise TrustError(f"key id prefix {prefix} is ambiguous; give more characters")
    return matches[0]


def remove_key(home: Home, keyid_prefix: str, revoked: frozenset[str] = frozenset()) -> PublicKey:
    """Remove a key; refuse when fewer usable (unrevoked) keys than the threshold would remain."""
    store = load_store(home)
    key = resolve_keyid(store, keyid_prefix)
    remaining = len(set(store.keys) - revoked - {key.keyid})
    if remaining < store.threshold:
        fix = (
            f"lower it first (appliance trust threshold {remaining})"
            if remaining
            else "trust its successor first (appliance trust add FILE)"
        )
        raise TrustError(
            f"removing {key.keyid[:16]} would leave {remaining} usable key(s), below the "
            f"threshold of {store.threshold}; {fix}"
        )
    for path in home.trust_dir.glob("*.pub"):
        try:
            if load_public_key(path).keyid == key.keyid:
                path.unlink()
        except Exception:
            continue
    return key


def prepare_store(home: Home, keys: list[PublicKey], threshold: int, digest: str) -> Path:
    """Write a new store beside the current one, synced and marked complete; not yet in force.

    A keyring install prepares the store, commits the keyring bundle to state.db, and only
    then calls ``swap_in``; ``recover`` finishes the swap if, and only if, the bundle is
    recorded.
    """
    new_dir = home.root / f"{_NEW_PREFIX}{digest}"
    shutil.rmtree(new_dir, ignore_errors=True)
    new_dir.mkdir()
    for key in keys:
        (new_dir / f"{key.name}.pub").write_bytes(key.pem())
    (new_dir / "trust.toml").write_text(_policy_text(threshold))
    (new_dir / _COMPLETE_MARK).write_bytes(b"")
    for path in new_dir.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    fsync_dir(new_dir)
    fsync_dir(home.root)
    return new_dir


def swap_in(home: Home, new_dir: Path) -> None:
    """Put a prepared store in force with two renames (``recover`` finishes an interrupted one)."""
    old_dir = home.root / f"{_OLD_PREFIX}{new_dir.name.removeprefix(_NEW_PREFIX)}"
    if home.trust_dir.exists():
        os.rename(home.trust_dir, old_dir)
    os.rename(new_dir, home.trust_dir)
    fsync_dir(home.root)
    (home.trust_dir / _COMPLETE_MARK).unlink(missing_ok=True)
    shutil.rmtree(old_dir, ignore_errors=True)


def discard(new_dir: Path) -> None:
    shutil.rmtree(new_dir, ignore_errors=True)


def _leftovers(home: Home, prefix: str) -> list[Path]:
    if not home.root.is_dir():
        return []
    return sorted(p for p in home.root.iterdir() if p.name.startswith(prefix) and p.is_dir())


def store_dir(home: Home) -> Path:
    """The folder whose keys are in force, without changing anything on disk.

    Between the two renames of a swap, trust/ is briefly absent; the swap only starts after
    its keyring bundle was committed, so the prepared store is the one in force then.
    """
    if home.trust_dir.is_dir():
        return home.trust_dir
    for candidate in _leftovers(home, _NEW_PREFIX):
        if (candidate / _COMPLETE_MARK).exists():
            return candidate
    return home.trust_dir


def recover(home: Home, recorded: Callable[[str], bool]) -> None:
    """Finish swaps whose keyring bundle is recorded (by digest); discard everything else.

    Call it only while holding the installer lock.
    """
    for new_dir in _leftovers(home, _NEW_PREFIX):
        digest = new_dir.name.removeprefix(_NEW_PREFIX)
        if (new_dir / _COMPLETE_MARK).exists() and recorded(digest):
            swap_in(home, new_dir)
        else:
            discard(new_dir)
    for old_dir in _leftovers(home, _OLD_PREFIX):
        if not home.trust_dir.exists():
            os.rename(old_dir, home.trust_dir)  # a swap undone before it completed
            fsync_dir(home.root)
        else:
            shutil.rmtree(old_dir, ignore_errors=True)
    (home.trust_dir / _COMPLETE_MARK).unlink(missing_ok=True)
