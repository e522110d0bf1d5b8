"""Test helpers: publisher keys and bundles built through the real pack/sign code."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundles import archive
from appliance.bundles.keys import generate_keypair
from appliance.bundles.manifest import canonical_bytes
from appliance.bundles.pack import pack, sign

# The smallest valid routing policy: a policy bundle's payload must parse as one.
MINIMAL_POLICY = b"""schema = 1
name = "minimal"
default_class = "public"

[classes.public]
egress = "never"
"""


@dataclass(frozen=True)
class Key:
    name: str
    private: Path
    public: Path
    keyid: str


def make_key(folder: Path, name: str) -> Key:
    private, public, keyid = generate_keypair(name, folder)
    return Key(name, private, public, keyid)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_source(
    src: Path,
    *,
    name: str = "demo",
    version: str = "1.0.0",
    sequence: int = 1,
    kind: str | None = None,
    files: dict[str, bytes] | None = None,
    **fields: Any,
) -> Path:
    """A publisher's source folder: bundle.toml plus payload files.

    By default a policy bundle carrying MINIMAL_POLICY; with `files` given (and no `kind`),
    an adapter bundle carrying just those files.
    """
    src.mkdir(parents=True, exist_ok=True)
    if kind is None:
        kind = "policy" if files is None else "adapter"
    files = {"policy.toml": MINIMAL_POLICY} if files is None else files
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    header = {"name": name, "version": version, "sequence": sequence, "kind": kind, **fields}
    lines = [f"{k} = {_toml_value(v)}" for k, v in header.items()]
    (src / "bundle.toml").write_text("\n".join(lines) + "\n")
    tomllib.loads((src / "bundle.toml").read_text())  # the helper itself must write valid TOML
    return src


def make_bundle(
    workdir: Path,
    signers: list[Key],
    *,
    name: str = "demo",
    version: str = "1.0.0",
    sequence: int = 1,
    **fields: Any,
) -> Path:
    """Pack and sign a bundle with the real publisher tools; returns the bundle file."""
    src = write_source(
        workdir / f"src-{name}-{version}", name=name, version=version, sequence=sequence, **fields
    )
    out = workdir / f"{name}-{version}.bundle"
    pack(src, out)
    for key in signers:
        sign(out, key.private)
    return out


def write_raw_bundle(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A bundle file with exactly these members, in this order (for hostile-input tests)."""
    with path.open("wb") as f:
        for member_name, data in members:
            f.write(archive.header(member_name, len(data)))
            f.write(data + archive.padding(len(data)))
        f.write(archive.END_OF_ARCHIVE)
    return path


def read_members(bundle: Path) -> list[tuple[str, bytes]]:
    """Every member of a bundle as (name, bytes), in order."""
    with bundle.open("rb") as f:
        members = archive.scan(f, 10_000)
        out = []
        for member in members.values():
            f.seek(member.offset)
            out.append((member.name, f.read(member.size)))
    return out


def canonical(obj: Any) -> bytes:
    return canonical_bytes(obj)


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll `condition` every 50 ms until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
