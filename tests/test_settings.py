"""APPLIANCE_HOME resolution and config.toml validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError, HomeError
from appliance.home import SYSTEM_HOME, Home, resolve_home
from appliance.settings import Settings, load_settings


def test_home_comes_from_the_environment(tmp_path: Path):
    assert resolve_home({"APPLIANCE_HOME": str(tmp_path)}) == tmp_path


def test_home_defaults_by_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert resolve_home({}) == SYSTEM_HOME
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home({}) == tmp_path / ".local/share/appliance"


def test_home_layout_is_created(tmp_path: Path):
    home = Home(tmp_path / "h").ensure()
    for folder in (home.trust_dir, home.bundles_dir, home.inbox_dir, home.staging_dir):
        assert folder.is_dir()


def test_home_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "h").write_text("")
    with pytest.raises(HomeError, match="cannot use"):
        Home(tmp_path / "h").ensure()


def test_absent_config_means_defaults(tmp_path: Path):
    settings = load_settings(tmp_path / "config.toml")
    assert settings == Settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8750)


def test_spec_example_config_loads(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        """
[server]
host = "127.0.0.1"
port = 8750
auth = "tokens"

[[upstreams]]
name = "openai-main"
kind = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o"
api_key_file = "/etc/appliance/openai.key"
price_input_per_mtok = 2.50
price_output_per_mtok = 10.00
ca_file = ""
client_cert = ""
trainable = true
perimeter = "external"
"""
    )
    settings = load_settings(path)
    assert settings.upstreams[0].price_output_per_mtok == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "unknown key 'server.prot'"),
        ("[server]\nport = 70000\n", "'server.port'"),
        (
            "[[upstreams]]\nname = 'x'\nkind = 'openai'\nmodel = 'm'\n",
            "'upstreams.0.base_url' is missing",
        ),
        ("[bundles.limits]\nmanifest_max_bytes = 10\n", "'bundles.limits.manifest_max_bytes'"),
        ("this is = not toml =", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert message in str(caught.value)
