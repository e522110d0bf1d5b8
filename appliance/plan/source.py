"""Which model file to size: an installed bundle, a bundle file, or a bare model file.

A bundle file's model is extracted to a temporary folder with every file's hash checked
(the bundle reader's own checks), read, and removed again; an installed bundle's file is read
where it lies. The manifest's context length and ``model.slots`` come along: the defaults
the daemon would run it with.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundles import records
from appliance.bundles.manifest import parse_manifest
from appliance.bundles.reader import BundleReader
from appliance.errors import ApplianceError, ModelError
from appliance.home import Home
from appliance.settings import BundleLimits
from appliance.state import open_state

BARE_CONTEXT = 2048  # tokens, for a bare model file (a bundle's manifest says its own)


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the model file (GGUF or ONNX)
    label: str  # what to call it in output: NAME VERSION, or the file name
    role: str
    context_length: int  # tokens, the manifest's (or BARE_CONTEXT)
    slots: int | None = None  # the manifest's model.slots, if it sets one


def _from_manifest(path: Path, model: dict[str, Any], label: str) -> ModelSource:
    slots = model.get("slots")
    return ModelSource(
        path=path,
        label=label,
        role=str(model.get("role", "chat")),
        context_length=int(model["context_length"]),
        slots=int(slots) if isinstance(slots, int) else None,
    )


@contextlib.contextmanager
def open_source(model: str, home: Home) -> Iterator[ModelSource]:
    """`model` as a GGUF/ONNX file, a bundle file, or an installed model's name (in that
    order); a bundle's extracted copy lasts as long as the block."""
    path = Path(model)
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic == b"GGUF" or path.suffix == ".onnx":
            yield ModelSource(path, path.name, "chat", BARE_CONTEXT)
            return
        with tempfile.TemporaryDirectory(prefix="appliance-plan-") as tmp:
            yield _extract(path, Path(tmp))
        return
    if path.exists() or "/" in model:
        raise ModelError(f"{model} is not a model bundle, GGUF or ONNX file")
    yield _installed(home, model)


def _extract(path: Path, into: Path) -> ModelSource:
    limits = BundleLimits()
    try:
        with BundleReader(path, limits) as reader:
            manifest = parse_manifest(reader.manifest_raw, limits.manifest_max_bytes)
            reader.check_listing(manifest)
            if manifest.kind != "model" or manifest.model is None:
                raise ModelError(f"{path.name} is a {manifest.kind} bundle, not a model bundle")
            reader.copy_payload(manifest, into)
    except ModelError:
        raise
    except ApplianceError as e:
        raise ModelError(f"cannot read {path.name}: {e}") from e
    document = manifest.to_json_obj()
    label = f"{manifest.name} {manifest.version}"
    return _from_manifest(into / manifest.model.file, document["model"], label)


def _installed(home: Home, name: str) -> ModelSource:
    if not home.state_db.exists():
        raise ModelError(f"no model bundle named {name} is installed in {home.root}")
    db = open_state(home)
    try:
        bundle = records.active(db, name)
    finally:
        db.conn.close()
    if bundle is None or bundle.manifest.get("kind") != "model":
        raise ModelError(f"no model bundle named {name} is active in {home.root}")
    model = dict(bundle.manifest.get("model") or {})
    path = home.bundle_dir(name, bundle.version) / "payload" / str(model.get("file", ""))
    return _from_manifest(path, model, f"{name} {bundle.version}")
