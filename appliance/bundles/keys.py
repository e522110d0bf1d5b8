"""Ed25519 publisher keys: generation, files, key ids.

Key files are PEM (PKCS#8 for the private key, SubjectPublicKeyInfo for the public one) so
that openssl and other tools read them too. A key id is the SHA-256 of the raw 32-byte public
key, in hex.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import KeyFileError

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_KEY_FILE_BYTES = 16 * 1024  # bytes


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A trusted (or candidate) publisher key."""

    keyid: str
    key: Ed25519PublicKey
    name: str = ""

    @classmethod
    def from_raw(cls, raw: bytes, name: str = "") -> PublicKey:
        try:
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as e:
            raise KeyFileError(f"public key '{name}' is not a raw Ed25519 key") from e
        return cls(key_id(key), key, name)

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _read_small(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as e:
        raise KeyFileError(f"key file {path} does not exist") from e
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_public_key(path: Path, name: str | None = None) -> PublicKey:
    data = _read_small(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyFileError(f"{path} is not a PEM public key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return PublicKey(key_id(key), key, path.stem if name is None else name)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_small(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        # Never echo the file's content: it is a secret.
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def generate_keypair(name: str, out_dir: Path) -> tuple[Path, Path, str]:
    """Write OUT/NAME.key (mode 0600) and OUT/NAME.pub; never overwrite either."""
    if not re.match(KEY_NAME_PATTERN, name):
        raise KeyFileError(f"key name '{name}' must match {KEY_NAME_PATTERN}")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL + mode at creation: the secret is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
        f.flush()
        os.fsync(f.fileno())
    public = PublicKey(key_id(private.public_key()), private.public_key(), name)
    public_path.write_bytes(public.pem())
    return private_path, public_path, public.keyid
