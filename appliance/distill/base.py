"""The base model an adapter is trained for: the exact GGUF bytes the box serves.

``--base`` names it three ways: a model bundle file (what was carried to the box), an
installed model's name (training on the box itself, or on a workstation with a copy of
its home), or a bare GGUF file (trying things out; such an adapter cannot be packed, since
nothing says which bundle it fits). A bundle's payload is hash-checked against its
manifest as it is extracted, and the bundle's digest is recorded: the adapter bundle names
it, so an adapter is never mistaken for one that fits other weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.bundles import records
from appliance.bundles.manifest import parse_manifest
from appliance.bundles.reader import BundleReader
from appliance.errors import ApplianceError, DistillError
from appliance.fsutil import sha256_file
from appliance.home import Home
from appliance.runtime.adapters import GGUF_MAGIC, read_header
from appliance.settings import BundleLimits
from appliance.state import open_state

DEFAULT_CONTEXT = 2048  # tokens, for a bare GGUF (a bundle's manifest says its own)


@dataclass(frozen=True)
class BaseModel:
    gguf: Path  # the weights, as the box loads them
    sha256: str  # of the GGUF file
    architecture: str  # general.architecture
    context_length: int  # tokens
    chat_template: str | None = None  # the manifest's, when it has one (else the GGUF's)
    role: str = "chat"
    name: str | None = None  # the model bundle's name: what the adapter bundle names as base
    version: str | None = None
    bundle_digest: str | None = None  # SHA-256 of the model bundle's manifest.json

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gguf": str(self.gguf)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> BaseModel:
        return cls(**{**document, "gguf": Path(document["gguf"])})


def _from_manifest(
    gguf: Path, manifest: dict[str, Any], digest: str, name: str, version: str
) -> BaseModel:
    model = manifest.get("model") or {}
    if manifest.get("kind") != "model" or model.get("format") != "gguf":
        raise DistillError(f"{name} {version} is not a GGUF model bundle")
    if model.get("role") not in ("chat", "completion"):
        raise DistillError(f"{name} is a {model.get('role')} model; adapters are for generation")
    file_hash = next(f["sha256"] for f in manifest["files"] if f["path"] == model["file"])
    return BaseModel(
        gguf=gguf,
        sha256=file_hash,
        architecture=_architecture(gguf),
        context_length=int(model["context_length"]),
        chat_template=model.get("chat_template"),
        role=model["role"],
        name=name,
        version=version,
        bundle_digest=digest,
    )


def _architecture(gguf: Path) -> str:
    try:
        header = read_header(gguf)
    except (OSError, ValueError) as e:
        raise DistillError(f"{gguf} is not a readable GGUF: {e}") from e
    if header.strings.get("general.type", "model") != "model":
        raise DistillError(f"{gguf} is a GGUF {header.strings['general.type']}, not a model")
    return header.strings.get("general.architecture", "")


def from_bundle_file(path: Path, into: Path) -> BaseModel:
    """Extract the model bundle `path` into `into` (checking every file's hash)."""
    limits = BundleLimits()
    try:
        with BundleReader(path, limits) as reader:
            manifest = parse_manifest(reader.manifest_raw, limits.manifest_max_bytes)
            reader.check_listing(manifest)
            digest = hashlib.sha256(reader.manifest_raw).hexdigest()
            if manifest.kind != "model" or manifest.model is None:
                raise DistillError(f"{path} is a {manifest.kind} bundle, not a model bundle")
            target = into / manifest.model.file
            expected = {f.path: f.sha256 for f in manifest.files}[manifest.model.file]
            if not (target.exists() and sha256_file(target) == expected):
                into.mkdir(parents=True, exist_ok=True)
                for entry in manifest.files:
                    (into / entry.path).unlink(missing_ok=True)
                reader.copy_payload(manifest, into)
    except DistillError:
        raise
    except ApplianceError as e:
        raise DistillError(f"cannot use {path} as the base: {e}") from e
    document = manifest.to_json_obj()
    return _from_manifest(target, document, digest, manifest.name, manifest.version)


def from_installed(home: Home, name: str) -> BaseModel:
    """The active version of the installed model bundle `name` in `home`."""
    db = open_state(home)
    try:
        bundle = records.active(db, name)
    finally:
        db.conn.close()
    if bundle is None:
        raise DistillError(f"no model bundle named {name} is active in {home.root}")
    model = bundle.manifest.get("model") or {}
    gguf = home.bundle_dir(name, bundle.version) / "payload" / str(model.get("file", ""))
    return _from_manifest(gguf, bundle.manifest, bundle.digest, name, bundle.version)


def from_gguf(path: Path) -> BaseModel:
    return BaseModel(
        gguf=path.resolve(),
        sha256=sha256_file(path),
        architecture=_architecture(path),
        context_length=DEFAULT_CONTEXT,
    )


def resolve(model: str, into: Path, home: Home) -> BaseModel:
    """`model` as a bundle file, a GGUF file, or an installed model's name (in that order)."""
    path = Path(model)
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic == GGUF_MAGIC:
            return from_gguf(path)
        return from_bundle_file(path, into)
    if path.exists() or "/" in model:
        raise DistillError(f"{model} is not a model bundle file or a GGUF file")
    return from_installed(home, model)
