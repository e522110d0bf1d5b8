from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.home import Home
from tests.helpers import Key, make_key

pytest_plugins = ["tests.log_scan"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """A fresh APPLIANCE_HOME, also exported for CLI calls."""
    root = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(root))
    return Home(root).ensure()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where publishers build bundles (outside the home)."""
    path = tmp_path / "publisher"
    path.mkdir()
    return path


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return make_key(tmp_path / "keys", "publisher-a")


@pytest.fixture
def key_b(tmp_path: Path) -> Key:
    return make_key(tmp_path / "keys", "publisher-b")


@pytest.fixture
def key_c(tmp_path: Path) -> Key:
    return make_key(tmp_path / "keys", "publisher-c")


@pytest.fixture
def trusted(home: Home, key: Key) -> Home:
    """A home that trusts `key` with threshold 1."""
    trust.add_key(home, key.public)
    return home


@pytest.fixture
def manager(trusted: Home) -> Iterator[BundleManager]:
    m = BundleManager(trusted)
    yield m
    m.close()
