"""The placeholder map of an item, sealed at rest with AES-256-GCM.

The map turns an upstream's answer back into the device's terms, so it holds the very PII
that redaction kept from leaving (placeholder -> original value). state.db, its WAL and any
copy of them (a backup, a disk pulled from a box) must not reveal it, so each map is sealed
with a key that lives beside state.db in ``APPLIANCE_HOME/outbox.key`` (32 random bytes,
mode 0600). Keeping the key in a separate file means an exported or copied database alone
discloses nothing, and wiping the key crypto-shreds every queued map at once.

Each seal uses a fresh 12-byte random nonce and the item id as associated data; the stored
blob is ``nonce || ciphertext+tag``. Binding the id means a blob copied onto another row does
not open: a map can only ever restore the answer of the request it was made for.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.fsutil import fsync_dir
from appliance.home import Home
from appliance.outbox.errors import OutboxError

KEY_FILE = "outbox.key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM standard nonce; random per seal (2**-32 collision risk at 2**32 seals)
TAG_BYTES = 16

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


class MapCipher:
    """Seals and opens placeholder maps with the home's outbox key (created on first use)."""

    def __init__(self, home: Home) -> None:
        self.key_path: Path = home.root / KEY_FILE
        self._aead: AESGCM | None = None
        self._lock = threading.Lock()

    def seal(self, item_id: str, mapping: Mapping[str, str]) -> bytes:
        """``nonce || ciphertext`` of `mapping`, bound to `item_id`."""
        plain = _ENCODER.encode(dict(mapping)).encode("utf-8")
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._cipher().encrypt(nonce, plain, item_id.encode("utf-8"))

    def open(self, item_id: str, blob: bytes) -> dict[str, str]:
        """The map sealed for `item_id`; a tampered blob, or one of another item, is refused."""
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise OutboxError(f"the sealed map of {item_id} is truncated")
        nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        try:
            plain = self._cipher().decrypt(nonce, sealed, item_id.encode("utf-8"))
        except InvalidTag:
            raise OutboxError(
                f"the sealed map of {item_id} does not authenticate "
                f"(tampered, sealed for another item, or {self.key_path} was replaced)"
            ) from None
        mapping = json.loads(plain)
        return {str(k): str(v) for k, v in mapping.items()}

    def _cipher(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                self._aead = AESGCM(self._load_or_create())
            return self._aead

    def _load_or_create(self) -> bytes:
        try:
            return _read_key(self.key_path)
        except FileNotFoundError:
            pass
        _create_key(self.key_path)
        return _read_key(self.key_path)


def _read_key(path: Path) -> bytes:
    """The key bytes; refuse a link, a key others can read, or one of the wrong size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise OutboxError(f"cannot read {path}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutboxError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise OutboxError(
                f"{path} is accessible to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        if info.st_size != KEY_BYTES:
            raise OutboxError(
                f"{path} holds {info.st_size} bytes, not a {KEY_BYTES}-byte outbox key"
            )
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise OutboxError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte outbox key")
    return key


def _create_key(path: Path) -> None:
    """Write a new key atomically, never replacing one another process created first.

    The temp file is created 0600 (never briefly readable), synced, then *linked* into place:
    unlike a rename, a link fails if the key already exists, so two processes starting at
    once cannot end up sealing with two different keys. The loser just reads the winner's.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise OutboxError(f"cannot create {path}: {e.strerror}") from e
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process won the race: use its key
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise OutboxError(f"cannot create {path}: {e.strerror}") from e
            # A filesystem without hard links: a plain rename, after a last look.
            if path.exists():
                return
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
