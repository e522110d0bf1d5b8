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

import json
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.errors import OutboxError
from appliance.home import Home
from appliance.keyfile import load_or_create

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
        return load_or_create(self.key_path, KEY_BYTES, "outbox key", OutboxError)
