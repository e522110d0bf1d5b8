"""The trust store: publisher keys in APPLIANCE_HOME/trust and the k-of-n threshold.

``trust/NAME.pub`` holds one PEM public key; ``trust/trust.toml`` holds ``threshold = k``
(1 when absent). Anything unreadable in the store fails closed: nothing installs until an
operator fixes it. A keyring bundle replaces the whole store through ``replace_store``,
which stays recoverable at every instant.
"""

from __future__ import annotations

import os
import shutil
import tomllib
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
    recover(home)
    keys: dict[str, PublicKey] = {}
    if home.trust_dir.is_dir():
        for path in sorted(home.trust_dir.glob("*.pub")):
            try:
                key = load_public_key(path)
            except Exception as e:
                raise TrustError(f"trust store file {path} is unusable: {e}") from e
            keys.setdefault(key.keyid, key)
    policy = _read_policy(home.trust_policy_file)
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
        raise TrustError(
            f"removing {key.keyid[:16]} would leave {remaining} usable key(s), below the "
            f"threshold of {store.threshold}; lower the threshold in trust.toml first"
        )
    for path in home.trust_dir.glob("*.pub"):
        try:
            if load_public_key(path).keyid == key.keyid:
                path.unlink()
        except Exception:
            continue
    return key


def replace_store(home: Home, keys: list[PublicKey], threshold: int) -> None:
    """Swap in a whole new trust store (keyring rotation), recoverable after a crash.

    The new store is written and synced beside the old one and marked complete; then two
    renames swap them. ``recover`` finishes a swap that a crash interrupted.
    """
    new_dir = home.root / f"{_NEW_PREFIX}{os.getpid()}"
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
    old_dir = home.root / f"{_OLD_PREFIX}{os.getpid()}"
    if home.trust_dir.exists():
        os.rename(home.trust_dir, old_dir)
    os.rename(new_dir, home.trust_dir)
    fsync_dir(home.root)
    (home.trust_dir / _COMPLETE_MARK).unlink()
    shutil.rmtree(old_dir, ignore_errors=True)


def recover(home: Home) -> None:
    """Finish or undo a store swap that a crash interrupted."""
    if not home.root.is_dir():
        return
    leftovers = [p for p in home.root.iterdir() if p.name.startswith((_NEW_PREFIX, _OLD_PREFIX))]
    if not leftovers:
        (home.trust_dir / _COMPLETE_MARK).unlink(missing_ok=True)
        return
    if not home.trust_dir.exists():
        complete = [
            p for p in leftovers if p.name.startswith(_NEW_PREFIX) and (p / _COMPLETE_MARK).exists()
        ]
        previous = [p for p in leftovers if p.name.startswith(_OLD_PREFIX)]
        source = complete[0] if complete else (previous[0] if previous else None)
        if source is not None:
            os.rename(source, home.trust_dir)
            fsync_dir(home.root)
    (home.trust_dir / _COMPLETE_MARK).unlink(missing_ok=True)
    for path in leftovers:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
