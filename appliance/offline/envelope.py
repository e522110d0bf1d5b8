"""One sealed batch file: encrypted to its recipient, signed by its sender.

A batch file is a JSON document::

    {"header":    {"format": "appliance-sealed-batch/1", "kind": "requests" | "results",
                   "batch_id": UUID, "created": UTC time, "sender": KEYID,
                   "sender_name": NAME, "recipient": KEYID, "suite": SUITE},
     "sealed":    base64(HPKE enc || ciphertext of the payload),
     "signature": base64(Ed25519 over DOMAIN || canonical(header) || "\\n" || sealed)}

- *Confidential*: the payload is sealed with HPKE (RFC 9180, base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to the recipient card's X25519 key,
  with the canonical header as HPKE ``info``: a header moved onto another ciphertext, or
  edited, does not open.
- *Authentic*: the sender's Ed25519 key signs the header and the sealed bytes. The reader
  checks the signature (against the cards it knows) before it decrypts anything, and checks
  the batch is addressed to it. Re-signing with another key changes ``sender``, which is
  inside the HPKE ``info``, so a stolen ciphertext cannot be passed off as someone else's.
- *Fresh*: each batch has a UUID; the reader keeps the ids it took (``ledger``) and refuses
  one seen before, so a copied stick cannot be played twice.

Everything is checked before anything is used; every refusal is an ``OfflineError`` that
names the file and the reason, and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke

from appliance.errors import OfflineError
from appliance.offline.identity import Card, Identity

FORMAT = "appliance-sealed-batch/1"
SUITE_NAME = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM"
DOMAIN = FORMAT.encode("ascii") + b"\n"
SUFFIX = ".sealed"

Kind = Literal["requests", "results"]
KINDS: tuple[str, ...] = ("requests", "results")

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEADER_KEYS = {"format", "kind", "batch_id", "created", "sender", "sender_name", "recipient"}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Header:
    kind: str
    batch_id: str
    created: str
    sender: str  # key id of the signer
    sender_name: str
    recipient: str  # key id of the card it is sealed to

    def to_json(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "batch_id": self.batch_id,
            "created": self.created,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "recipient": self.recipient,
            "suite": SUITE_NAME,
        }


@dataclass(frozen=True)
class Opened:
    header: Header
    sender: Card
    payload: bytes


def seal(
    payload: bytes, *, kind: Kind, sender: Identity, recipient: Card, created: str
) -> tuple[Header, bytes]:
    """A new batch (fresh UUID) of `payload` for `recipient`: its header and file bytes."""
    header = Header(
        kind=kind,
        batch_id=str(uuid.uuid4()),
        created=created,
        sender=sender.key_id,
        sender_name=sender.name,
        recipient=recipient.key_id,
    )
    head = canonical(header.to_json())
    sealed = _SUITE.encrypt(payload, recipient.recipient(), head)
    signature = sender.sign(DOMAIN + head + b"\n" + sealed)
    document = {
        "header": header.to_json(),
        "sealed": base64.b64encode(sealed).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return header, json.dumps(document, indent=1).encode("ascii") + b"\n"


def read(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything larger than `max_bytes` before reading it all."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise OfflineError(f"{path.name}: cannot read: {e.strerror}") from e
    if len(data) > max_bytes:
        raise OfflineError(f"{path.name}: refused: larger than the {max_bytes}-byte limit")
    return data


def open_batch(
    data: bytes, *, name: str, kind: Kind, me: Identity, senders: Mapping[str, Card]
) -> Opened:
    """Verify and decrypt one batch of `kind` addressed to `me` from one of `senders`.

    `senders` maps key ids to the cards this home trusts for that kind of batch.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OfflineError(f"{name}: refused: not a sealed batch (not JSON)") from None
    if not isinstance(document, dict) or set(document) != {"header", "sealed", "signature"}:
        raise OfflineError(f"{name}: refused: not a sealed batch (wrong fields)")
    raw_header = document["header"]
    header = _header(raw_header, name)
    if header.kind != kind:
        raise OfflineError(f"{name}: refused: a batch of {header.kind}, expected {kind}")
    sealed = _b64(document["sealed"], "sealed", name)
    signature = _b64(document["signature"], "signature", name)
    card = senders.get(header.sender)
    if card is None:
        raise OfflineError(
            f"{name}: refused: signed by unknown key {header.sender[:16]}… "
            f"({header.sender_name!r}); its card is not configured on this box"
        )
    head = canonical(raw_header)
    try:
        card.verifier().verify(signature, DOMAIN + head + b"\n" + sealed)
    except InvalidSignature:
        raise OfflineError(
            f"{name}: refused: the signature of {card.name!r} does not verify (tampered)"
        ) from None
    if header.recipient != me.key_id:
        raise OfflineError(
            f"{name}: refused: sealed to key {header.recipient[:16]}…, not to this box "
            f"({me.key_id[:16]}…)"
        )
    try:
        payload = _SUITE.decrypt(sealed, me.opener(), head)
    except InvalidTag:  # also what a truncated or malformed encapsulated key gives
        raise OfflineError(f"{name}: refused: does not decrypt with this box's key") from None
    return Opened(header, card, payload)


def _header(raw: Any, name: str) -> Header:
    if not isinstance(raw, dict):
        raise OfflineError(f"{name}: refused: the header is not an object")
    if raw.get("format") != FORMAT:
        raise OfflineError(f"{name}: refused: format {raw.get('format')!r}, expected {FORMAT}")
    if raw.get("suite") != SUITE_NAME:
        raise OfflineError(f"{name}: refused: unknown cipher suite {raw.get('suite')!r}")
    if set(raw) != _HEADER_KEYS | {"suite"}:
        raise OfflineError(f"{name}: refused: unexpected header fields")
    if not all(isinstance(raw[k], str) for k in _HEADER_KEYS):
        raise OfflineError(f"{name}: refused: header fields must be text")
    if raw["kind"] not in KINDS:
        raise OfflineError(f"{name}: refused: unknown batch kind {raw['kind']!r}")
    try:
        uuid.UUID(raw["batch_id"])
    except ValueError:
        raise OfflineError(f"{name}: refused: batch_id is not a UUID") from None
    for field in ("sender", "recipient"):
        if not _HEX64.match(raw[field]):
            raise OfflineError(f"{name}: refused: {field} is not a key id")
    return Header(
        kind=raw["kind"],
        batch_id=raw["batch_id"],
        created=raw["created"],
        sender=raw["sender"],
        sender_name=raw["sender_name"][:64],
        recipient=raw["recipient"],
    )


def _b64(value: Any, field: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise OfflineError(f"{name}: refused: {field} is not text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise OfflineError(f"{name}: refused: {field} is not base64") from None
