"""A real daemon for the API tests: the Gemma demo bundle, installed and served on a free port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.bundles.recipes import DEMO_RECIPE, build_source
from appliance.governance.escalation import Escalator
from appliance.home import Home
from appliance.settings import Settings
from appliance.tokens import TokenStore
from tests.helpers import Key, make_key

MODEL = "gemma3-270m"


@dataclass
class GemmaSource:
    folder: Path  # a bundle source folder holding the assembled GGUF
    key: Key

    def bundle(self, out: Path, version: str = "1.0.0", sequence: int = 1) -> Path:
        """Pack and sign the demo model (another version/sequence for swap tests)."""
        toml = self.folder / "bundle.toml"
        original = (DEMO_RECIPE / "bundle.toml").read_text()
        toml.write_text(
            original.replace('version = "1.0.0"', f'version = "{version}"').replace(
                "sequence = 1", f"sequence = {sequence}"
            )
        )
        path = out / f"{MODEL}-{version}.bundle"
        pack(self.folder, path)
        sign(path, self.key.private)
        return path


def gemma_source(workdir: Path) -> GemmaSource:
    return GemmaSource(build_source(DEMO_RECIPE, workdir / "gemma-src"), make_key(workdir, "dev"))


@dataclass
class Daemon:
    home: Home
    app: FastAPI
    server: BackgroundServer
    infer_token: str = ""
    admin_token: str = ""

    @property
    def url(self) -> str:
        return self.server.url

    def install(self, bundle: Path) -> None:
        install(self.home, bundle)
        self.app.state.models.refresh()


def install(home: Home, bundle: Path) -> None:
    manager = BundleManager(home)
    try:
        manager.install(bundle)
    finally:
        manager.close()


def gemma_home(work: Path) -> Home:
    """A home in `work` with the Gemma demo bundle installed and active (its key trusted)."""
    source = gemma_source(work)
    home = Home(work / "home").ensure()
    trust.add_key(home, source.key.public)
    install(home, source.bundle(work))
    return home


def start_daemon(
    root: Path, source: GemmaSource, settings: Settings, escalator: Escalator | None = None
) -> Daemon:
    home = Home(root).ensure()
    trust.add_key(home, source.key.public)
    app = create_app(home, settings, escalator=escalator)
    daemon = Daemon(home, app, BackgroundServer(app))
    daemon.install(source.bundle(root.parent))
    tokens = TokenStore(home)
    daemon.infer_token = tokens.create("edge-device", "infer")
    daemon.admin_token = tokens.create("operator", "admin")
    daemon.server.start()
    return daemon
