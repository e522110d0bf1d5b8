"""The `appliance` command line: exit codes, one-line errors, JSON output, documentation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from appliance.cli import app, main
from appliance.home import Home
from tests.helpers import write_source

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], env=env, capture_output=True, text=True
    )


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _leaf_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    leaves: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        else:
            leaves.append(path)

    walk(root, [])
    return leaves


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]):
    assert main([*command, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_is_documented_in_the_readme(command: list[str]):
    assert f"appliance {' '.join(command)}" in (REPO / "README.md").read_text()


def test_bad_usage_exits_2(home: Home):
    result = run("bundle", "install", home=home.root)
    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_version(capsys: pytest.CaptureFixture[str]):
    from appliance import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"appliance {__version__}"


def test_unknown_command_exits_2(home: Home):
    assert run("frobnicate", home=home.root).returncode == 2


def test_operator_flow_end_to_end(home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    keys = tmp_path / "keys"
    generated = cli_json(capsys, "keys", "generate", "site-publisher", "--out", str(keys))
    assert stat.S_IMODE((keys / "site-publisher.key").stat().st_mode) == 0o600
    assert (
        cli_json(capsys, "trust", "add", str(keys / "site-publisher.pub"))["keyid"]
        == (generated["keyid"])
    )
    src = write_source(tmp_path / "src", files={"weights.bin": b"w" * 4096})
    bundle = tmp_path / "demo-1.0.0.bundle"
    packed = cli_json(capsys, "bundle", "pack", str(src), "--out", str(bundle))
    assert packed["manifest"]["files"][0]["size"] == 4096
    cli_json(capsys, "bundle", "sign", str(bundle), "--key", str(keys / "site-publisher.key"))

    verified = cli_json(capsys, "bundle", "verify", str(bundle))
    installed = cli_json(capsys, "bundle", "install", str(bundle))
    listed = cli_json(capsys, "bundle", "list")
    trusted = cli_json(capsys, "trust", "list")

    rolled = main(["bundle", "rollback", "demo"])
    assert rolled == 1 and "no earlier usable version" in capsys.readouterr().err
    activated = cli_json(capsys, "bundle", "activate", "demo", "1.0.0")
    assert activated["active"] is True
    assert verified["action"] == "verified" and installed["action"] == "installed"
    assert [(b["name"], b["version"], b["active"]) for b in listed] == [("demo", "1.0.0", True)]
    assert trusted == {
        "threshold": 1,
        "keys": [{"keyid": generated["keyid"], "name": "site-publisher", "revoked": False}],
    }


def test_refusal_is_one_line_exit_1_without_traceback(home: Home, tmp_path: Path):
    bogus = tmp_path / "bogus.bundle"
    bogus.write_bytes(b"this is not a tar file" * 100)

    result = run("bundle", "install", str(bogus), home=home.root)

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(home: Home, tmp_path: Path):
    bogus = tmp_path / "bogus.bundle"
    bogus.write_bytes(b"\0" * 10)
    result = run("--debug", "bundle", "verify", str(bogus), home=home.root)
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_keys_generate_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["keys", "generate", "k", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "k.key").read_bytes()

    assert main(["keys", "generate", "k", "--out", str(tmp_path)]) == 1

    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "k.key").read_bytes() == before


def test_private_key_never_appears_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    secret = tmp_path / "broken.key"
    secret.write_text(
        "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-MATERIAL\n-----END PRIVATE KEY-----\n"
    )
    src = write_source(tmp_path / "src")
    bundle = tmp_path / "b.bundle"
    assert main(["bundle", "pack", str(src), "--out", str(bundle)]) == 0

    assert main(["bundle", "sign", str(bundle), "--key", str(secret)]) == 1

    captured = capsys.readouterr()
    assert "TOP-SECRET" not in captured.err + captured.out
    assert "not an unencrypted PEM private key" in captured.err


def test_unknown_config_key_is_named(home: Home, capsys: pytest.CaptureFixture[str]):
    home.config_file.write_text("[server]\nhots = '0.0.0.0'\n")
    assert main(["bundle", "list"]) == 1
    assert "unknown key 'server.hots'" in capsys.readouterr().err
