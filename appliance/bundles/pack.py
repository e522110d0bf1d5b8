"""The publisher's side: pack a source folder into a bundle, and add signatures to it.

A source folder holds ``bundle.toml`` (the manifest's fields but ``schema`` and ``files``)
and the payload files. ``pack`` writes ``manifest.json`` first, the payload, and an empty
``signatures.json`` last, so that ``sign`` rewrites only the tail of the file.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from appliance.bundles import archive
from appliance.bundles.keys import key_id, load_private_key
from appliance.bundles.manifest import (
    SCHEMA_VERSION,
    Manifest,
    canonical_bytes,
    check_payload_path,
    format_timestamp,
    manifest_from_fields,
    parse_manifest,
    parse_signatures,
)
from appliance.errors import BundleError, MalformedBundleError, ManifestError
from appliance.fsutil import replacing, sha256_file
from appliance.settings import BundleLimits

BUNDLE_TOML = "bundle.toml"
_RESERVED_FIELDS = ("schema", "files")
_COPY_CHUNK = 4 * 1024 * 1024  # bytes


def _payload_files(src: Path) -> list[tuple[str, Path]]:
    found = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder) / name
            rel = path.relative_to(src).as_posix()
            if rel == BUNDLE_TOML:
                continue
            if path.is_symlink() or not path.is_file():
                raise BundleError(f"{path} is not a regular file; bundles hold regular files only")
            try:
                check_payload_path(rel)
            except ValueError as e:
                raise BundleError(f"cannot pack {path}: {e}") from e
            found.append((rel, path))
    return sorted(found)


def read_bundle_toml(src: Path) -> dict[str, Any]:
    try:
        fields = tomllib.loads((src / BUNDLE_TOML).read_text("utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"{src} has no {BUNDLE_TOML}") from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BundleError(f"{src / BUNDLE_TOML} is not valid TOML: {e}") from e
    for reserved in _RESERVED_FIELDS:
        if reserved in fields:
            raise BundleError(f"{BUNDLE_TOML} must not set '{reserved}'; pack fills it in")
    return fields


def build_manifest(src: Path, now: datetime | None = None) -> tuple[Manifest, list[Path]]:
    fields = read_bundle_toml(src)
    fields.setdefault("created", format_timestamp(now or datetime.now(UTC)))
    for key in ("created", "expires"):
        if isinstance(fields.get(key), datetime):
            fields[key] = format_timestamp(fields[key])
    payload = _payload_files(src)
    fields["schema"] = SCHEMA_VERSION
    fields["files"] = [
        {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)}
        for rel, path in payload
    ]
    return manifest_from_fields(fields), [path for _, path in payload]


def _copy_exact(src: Path, expected_size: int, expected_sha256: str, out: BinaryIO) -> None:
    """Copy a payload file into the bundle, refusing it if it changed since it was hashed."""
    h = hashlib.sha256()
    written = 0
    with src.open("rb") as f:
        while block := f.read(_COPY_CHUNK):
            h.update(block)
            out.write(block)
            written += len(block)
    if written != expected_size or h.hexdigest() != expected_sha256:
        raise BundleError(f"{src} changed while it was being packed; pack again")


def pack(src: Path, out: Path, now: datetime | None = None) -> Manifest:
    """Write an unsigned bundle of `src` to `out` (atomically: a temp file, then a rename)."""
    manifest, paths = build_manifest(src, now)
    manifest_raw = canonical_bytes(manifest.to_json_obj())
    with replacing(out) as f:
        f.write(archive.header(archive.MANIFEST, len(manifest_raw)))
        f.write(manifest_raw + archive.padding(len(manifest_raw)))
        for entry, path in zip(manifest.files, paths, strict=True):
            f.write(archive.header(archive.PAYLOAD_PREFIX + entry.path, entry.size))
            _copy_exact(path, entry.size, entry.sha256, f)
            f.write(archive.padding(entry.size))
        _write_signatures(f, {"signatures": []})
    return manifest


def _write_signatures(f: BinaryIO, document: dict[str, Any]) -> None:
    raw = canonical_bytes(document)
    f.write(archive.header(archive.SIGNATURES, len(raw)))
    f.write(raw + archive.padding(len(raw)))
    f.write(archive.END_OF_ARCHIVE)


def sign(bundle: Path, key_file: Path, limits: BundleLimits | None = None) -> str:
    """Add (or replace) the signature of `key_file` over the bundle's manifest. Returns key id."""
    limits = limits or BundleLimits()
    private = load_private_key(key_file)
    keyid = key_id(private.public_key())
    try:
        f = bundle.open("rb")
    except OSError as e:
        raise BundleError(f"cannot read bundle file {bundle}: {e.strerror}") from e
    with f:
        members = archive.scan(f, limits.max_files + 2)
        if archive.MANIFEST not in members or archive.SIGNATURES not in members:
            raise MalformedBundleError(f"{bundle} has no manifest.json or signatures.json")
        manifest_raw = archive.read_member(
            f, members[archive.MANIFEST], limits.manifest_max_bytes, "manifest.json"
        )
        parse_manifest(manifest_raw, limits.manifest_max_bytes)
        sig_member = members[archive.SIGNATURES]
        if sig_member is not list(members.values())[-1]:
            raise MalformedBundleError("signatures.json is not the last member; repack the bundle")
        signatures_raw = archive.read_member(
            f, sig_member, limits.signatures_max_bytes, "signatures.json"
        )
        existing = parse_signatures(signatures_raw, limits.signatures_max_bytes, 10**6)
        kept = [s.model_dump() for s in existing.signatures if s.keyid != keyid]
        if len(kept) >= limits.max_signatures:
            raise ManifestError(f"bundle already holds {len(kept)} signatures")
        kept.append({"keyid": keyid, "sig": private.sign(manifest_raw).hex()})
        kept.sort(key=lambda s: s["keyid"])
        tail_start = sig_member.offset - archive.BLOCK
        with replacing(bundle) as out:
            f.seek(0)
            _copy_prefix(f, out, tail_start)
            _write_signatures(out, {"signatures": kept})
    return keyid


def _copy_prefix(src: BinaryIO, dst: BinaryIO, length: int) -> None:
    remaining = length
    while remaining:
        block = src.read(min(_COPY_CHUNK, remaining))
        if not block:
            raise MalformedBundleError("bundle is truncated")
        dst.write(block)
        remaining -= len(block)
