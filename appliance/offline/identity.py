"""The box's own keys for the offline exchange, and the public *card* it gives its peers.

Every APPLIANCE_HOME has an identity, made on first use in ``identity/``:

- ``sign.key``: an Ed25519 private key (32 raw bytes, mode 0600) that signs the batches
  this home writes;
- ``box.key``: an X25519 private key (32 raw bytes, mode 0600) that opens the batches
  sealed to this home.

Two keys rather than one converted key: each is used for one purpose only. The public
halves travel as a *card* (``appliance identity --out FILE``), a small JSON file that an
operator carries to the peer: the relay lists the cards of the boxes it serves, a box names
its relay's card. A card holds no secret. Its key id is the SHA-256 of the raw Ed25519
public key, hex, as for bundle signing keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from appliance.errors import OfflineError
from appliance.home import Home
from appliance.keyfile import load_or_create

CARD_FORMAT = "appliance-card/1"
CARD_MAX_BYTES = 16 * 1024
KEY_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def key_id(sign_public: bytes) -> str:
    """SHA-256 of the raw Ed25519 public key, hex."""
    return hashlib.sha256(sign_public).hexdigest()


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Card:
    """A peer's public identity: who signs (Ed25519) and whom to seal to (X25519)."""

    name: str
    sign_key: bytes  # raw Ed25519 public key
    box_key: bytes  # raw X25519 public key

    @property
    def key_id(self) -> str:
        return key_id(self.sign_key)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.sign_key)

    def recipient(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.box_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "name": self.name,
            "key_id": self.key_id,
            "sign_key": base64.b64encode(self.sign_key).decode("ascii"),
            "box_key": base64.b64encode(self.box_key).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> Card:
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise OfflineError(f"{source}: not an appliance card (format {CARD_FORMAT})")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise OfflineError(f"{source}: 'name' must be 1-64 letters, digits, '.', '_', '-'")
        keys = {}
        for field in ("sign_key", "box_key"):
            try:
                raw = base64.b64decode(str(data.get(field, "")), validate=True)
            except (binascii.Error, ValueError):
                raise OfflineError(f"{source}: '{field}' is not base64") from None
            if len(raw) != KEY_BYTES:
                raise OfflineError(f"{source}: '{field}' is not a {KEY_BYTES}-byte public key")
            keys[field] = raw
        card = cls(name, keys["sign_key"], keys["box_key"])
        if data.get("key_id") not in (None, card.key_id):
            raise OfflineError(f"{source}: 'key_id' does not match its sign_key")
        return card

    @classmethod
    def load(cls, path: Path) -> Card:
        """Read a card file; anything malformed is an OfflineError naming the file."""
        try:
            with path.open("rb") as f:
                raw = f.read(CARD_MAX_BYTES + 1)
        except OSError as e:
            raise OfflineError(f"cannot read card {path}: {e.strerror}") from e
        if len(raw) > CARD_MAX_BYTES:
            raise OfflineError(f"{path}: larger than {CARD_MAX_BYTES} bytes; not a card")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise OfflineError(f"{path}: not JSON: {e}") from None
        return cls.from_json(data, str(path))


class Identity:
    """This home's private keys (made on first use); they never leave ``identity/``."""

    def __init__(self, home: Home, name: str = "") -> None:
        folder = home.root / "identity"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise OfflineError(f"cannot create {folder}: {e.strerror}") from e
        sign = load_or_create(
            folder / "sign.key",
            KEY_BYTES,
            "Ed25519 private key",
            OfflineError,
            lambda: _raw_private(Ed25519PrivateKey.generate()),
        )
        box = load_or_create(
            folder / "box.key",
            KEY_BYTES,
            "X25519 private key",
            OfflineError,
            lambda: _raw_private(X25519PrivateKey.generate()),
        )
        self._signer = Ed25519PrivateKey.from_private_bytes(sign)
        self._opener = X25519PrivateKey.from_private_bytes(box)
        self.name = name or _default_name(home)

    def card(self) -> Card:
        return Card(
            self.name,
            _raw_public(self._signer.public_key()),
            _raw_public(self._opener.public_key()),
        )

    @property
    def key_id(self) -> str:
        return self.card().key_id

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)

    def opener(self) -> X25519PrivateKey:
        return self._opener


def _default_name(home: Home) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48].strip("-._")
    return host or home.root.name or "appliance"
