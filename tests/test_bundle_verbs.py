"""The operator's verbs of issue 19: bundle info/remove/prune, rollback --undo, trust threshold,
keys show, and what a keyring install says is in force.

Real bundles (packed and signed with the publisher tools), a real home and state.db; the CLI
is called as an operator would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.cli import main
from appliance.home import Home
from tests.helpers import MINIMAL_POLICY, Key, make_bundle, write_raw_bundle

POLICY_SIZE = len(MINIMAL_POLICY)  # bytes: what make_bundle packs by default


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _refused(capsys: pytest.CaptureFixture[str], code: int, *args: str) -> str:
    assert main(list(args)) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: 'nothing changed' made checkable."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def _model(workdir: Path, signers: list[Key], version: str, sequence: int, **extra: object) -> Path:
    return make_bundle(
        workdir,
        signers,
        name="base",
        version=version,
        sequence=sequence,
        kind="model",
        files={"w.gguf": f"weights {version}".encode()},
        model={"format": "gguf", "role": "completion", "context_length": 128, "file": "w.gguf"},
        **extra,
    )


# -- bundle info ---------------------------------------------------------------------------


def test_info_shows_contents_and_signers_and_changes_nothing(
    trusted: Home, workdir: Path, key: Key, key_b: Key, capsys
):
    bundle = make_bundle(
        workdir, [key, key_b], files={"a.bin": b"a" * 1000, "dir/b.bin": b"b" * 24}
    )
    before = _tree(trusted.root)
    info = _json(capsys, "bundle", "info", str(bundle))
    assert isinstance(info, dict)
    assert (info["name"], info["version"], info["kind"]) == ("demo", "1.0.0", "adapter")
    assert [(f["path"], f["size"]) for f in info["files"]] == [("a.bin", 1000), ("dir/b.bin", 24)]
    assert info["total_size"] == 1024 and info["listing_problem"] is None
    states = {s["keyid"]: (s["name"], s["trusted"], s["valid"]) for s in info["signers"]}
    assert states == {
        key.keyid: ("publisher-a", True, True),
        key_b.keyid: (None, False, False),  # not in this box's trust store
    }
    assert (info["threshold"], info["valid_signatures"], info["threshold_met"]) == (1, 1, True)
    assert info["payload_checked"] is False and info["installed_as"] is None
    # On a terminal: the same, readable, and the unknown signer said plainly.
    assert main(["bundle", "info", str(bundle)]) == 0
    screen = capsys.readouterr().out
    assert "unknown key (not in the trust store)" in screen and "1 valid trusted of 1" in screen
    assert "appliance bundle verify FILE" in screen
    # Nothing was installed, trusted or created: not even a state.db.
    assert _tree(trusted.root) == before and not trusted.state_db.exists()
    assert set(trust.load_store(trusted).keys) == {key.keyid}


def test_info_says_when_the_threshold_would_not_be_met(
    trusted: Home, workdir: Path, key: Key, key_b: Key, capsys
):
    trust.add_key(trusted, key_b.public)
    trust.write_policy(trusted, 2)
    info = _json(capsys, "bundle", "info", str(make_bundle(workdir, [key])))
    assert isinstance(info, dict)
    assert (info["valid_signatures"], info["threshold"], info["threshold_met"]) == (1, 2, False)
    assert main(["bundle", "info", str(make_bundle(workdir / "x", [key]))]) == 0
    assert "NOT met" in capsys.readouterr().out


def test_info_of_a_keyring_lists_the_keys_it_would_trust(
    trusted: Home, workdir: Path, key: Key, key_b: Key, capsys
):
    public_b = trust.load_store(trusted)  # only key a is trusted
    assert key_b.keyid not in public_b.keys
    raw_b = _json(capsys, "keys", "show", str(key_b.public))
    assert isinstance(raw_b, dict)
    keyring = make_bundle(
        workdir,
        [key, key_b],
        name="keyring",
        kind="keyring",
        files={},
        keyring={"threshold": 1, "keys": [{"name": "b", "public": raw_b["public"]}]},
    )
    info = _json(capsys, "bundle", "info", str(keyring))
    assert isinstance(info, dict)
    assert info["keyring"]["keys"][0]["keyid"] == key_b.keyid
    assert info["keyring"]["own_threshold_met"] is True and info["threshold_met"] is True


def test_info_of_a_hostile_file_is_one_line(trusted: Home, tmp_path: Path, capsys):
    hostile = write_raw_bundle(tmp_path / "evil.bundle", [("../etc/passwd", b"x")])
    assert "error:" in _refused(capsys, 1, "bundle", "info", str(hostile))
    missing = _refused(capsys, 1, "bundle", "info", str(tmp_path / "nothing.bundle"))
    assert "does not exist" in missing


# -- remove, prune --------------------------------------------------------------------------


def test_remove_never_takes_the_active_version_and_a_removed_one_stays_out(
    manager: BundleManager, workdir: Path, key: Key, capsys
):
    old, new = make_bundle(workdir, [key]), make_bundle(workdir, [key], version="2.0.0", sequence=2)
    manager.install(old)
    manager.install(new)
    home = manager.home
    line = _refused(capsys, 1, "bundle", "remove", "demo", "2.0.0")
    assert "demo 2.0.0 is not removed: it is the active version" in line
    assert home.bundle_dir("demo", "2.0.0").is_dir()

    removed = _json(capsys, "bundle", "remove", "demo", "1.0.0")
    assert removed == {"name": "demo", "version": "1.0.0", "sequence": 1, "size": POLICY_SIZE}
    assert not home.bundle_dir("demo", "1.0.0").exists()
    assert list(home.staging_dir.iterdir()) == []  # nothing half-deleted left behind
    assert [(b.version, b.active) for b in manager.list()] == [("2.0.0", True)]
    # its anti-rollback floor stays: the removed version cannot come back
    assert "rollback refused" in _refused(capsys, 1, "bundle", "install", str(old))
    assert "not installed" in _refused(capsys, 1, "bundle", "remove", "demo", "1.0.0")


def test_a_crash_after_the_record_went_leaves_no_half_state(
    manager: BundleManager, workdir: Path, key: Key
):
    """The record goes first; the folder of a version with no record is removed by the next
    bundle operation's recovery (what a power cut between the two steps leaves)."""
    from appliance.bundles import records
    from appliance.state import write_transaction

    manager.install(make_bundle(workdir, [key]))
    manager.install(make_bundle(workdir, [key], version="2.0.0", sequence=2))
    with write_transaction(manager.db) as conn:  # the first step of remove, alone
        records.delete(conn, "demo", "1.0.0")
    assert manager.home.bundle_dir("demo", "1.0.0").is_dir()
    manager.recover()
    assert not manager.home.bundle_dir("demo", "1.0.0").exists()
    assert [b.version for b in manager.list()] == ["2.0.0"]


def test_remove_refuses_an_adapters_base_and_trust_records(
    manager: BundleManager, workdir: Path, key: Key, capsys
):
    base_1 = manager.install(_model(workdir, [key], "1.0.0", 1))
    manager.install(_model(workdir, [key], "2.0.0", 2))
    adapter = make_bundle(
        workdir,
        [key],
        name="base-tuned",
        kind="adapter",
        files={"a.gguf": b"lora"},
        model={
            "format": "gguf",
            "role": "completion",
            "context_length": 128,
            "file": "a.gguf",
            "base": "base",
            "base_digest": base_1.digest,
        },
    )
    manager.install(adapter, activate=False)
    line = _refused(capsys, 1, "bundle", "remove", "base", "1.0.0")
    assert "installed adapter base-tuned 1.0.0 was trained on it" in line
    assert manager.home.bundle_dir("base", "1.0.0").is_dir()
    assert _json(capsys, "bundle", "prune", "--keep", "0", "--yes") == []  # prune skips it too

    revocation = make_bundle(
        workdir, [key], name="revoke", kind="revocation", files={}, revocation={"keys": []}
    )
    manager.install(revocation)
    line = _refused(capsys, 1, "bundle", "remove", "revoke", "1.0.0")
    assert "revocation bundles are the record of the trust store" in line


def test_prune_keeps_the_active_and_the_newest_old_ones(
    manager: BundleManager, workdir: Path, key: Key, capsys
):
    for n in range(1, 5):
        manager.install(make_bundle(workdir, [key], version=f"{n}.0.0", sequence=n))
    manager.activate("demo", "3.0.0")  # 4.0.0 is newer than the active one: not "old"
    before = _tree(manager.home.root)
    line = _refused(capsys, 2, "bundle", "prune")  # no TTY under pytest, no --yes
    assert "remove 1 old version(s): demo 1.0.0" in line and "add --yes" in line
    assert _tree(manager.home.root) == before
    pruned = _json(capsys, "bundle", "prune", "demo", "--yes")
    assert pruned == [{"name": "demo", "version": "1.0.0", "sequence": 1, "size": POLICY_SIZE}]
    assert [b.version for b in manager.list()] == ["2.0.0", "3.0.0", "4.0.0"]
    assert _json(capsys, "bundle", "prune", "--keep", "0", "--yes") == [
        {"name": "demo", "version": "2.0.0", "sequence": 2, "size": POLICY_SIZE}
    ]
    assert "no version of nope is installed" in _refused(capsys, 1, "bundle", "prune", "nope")


# -- rollback --undo ------------------------------------------------------------------------


def test_rollback_undo_goes_back_to_what_was_active_before(
    manager: BundleManager, workdir: Path, key: Key, capsys
):
    manager.install(make_bundle(workdir, [key]))
    line = _refused(capsys, 1, "bundle", "rollback", "demo", "--undo")
    assert "demo 1.0.0 was the first active version of demo; there is nothing to go back to" in line
    manager.install(make_bundle(workdir, [key], version="2.0.0", sequence=2))
    manager.activate("demo", "1.0.0")
    # by sequence there is nothing below 1.0.0; by history, 2.0.0 was active before
    assert "no earlier usable version" in _refused(capsys, 1, "bundle", "rollback", "demo")
    undone = _json(capsys, "bundle", "rollback", "demo", "--undo")
    assert isinstance(undone, dict)
    assert (undone["version"], undone["active"]) == ("2.0.0", True)
    again = _json(capsys, "bundle", "rollback", "demo", "--undo")  # an undo is undone too
    assert isinstance(again, dict) and again["version"] == "1.0.0"


# -- trust threshold, keys show ---------------------------------------------------------------


def test_trust_threshold(trusted: Home, key_b: Key, capsys):
    line = _refused(capsys, 1, "trust", "threshold", "2")
    assert "threshold 2 needs 2 usable trusted keys, and 1 are trusted; add keys first" in line
    assert main(["trust", "threshold", "0"]) == 2  # usage
    capsys.readouterr()
    trust.add_key(trusted, key_b.public)
    assert _json(capsys, "trust", "threshold", "2") == {"threshold": 2, "previous": 1, "keys": 2}
    assert trust.load_store(trusted).threshold == 2
    assert main(["trust", "threshold", "1"]) == 0
    assert "threshold now 1 of 2 trusted key(s) (was 2)" in capsys.readouterr().out


def test_trust_remove_below_the_threshold_names_the_command_that_fixes_it(
    trusted: Home, key: Key, key_b: Key, capsys
):
    line = _refused(capsys, 1, "trust", "remove", key.keyid[:8])
    assert "would leave 0 usable key(s), below the threshold of 1" in line
    assert "trust its successor first (appliance trust add FILE)" in line
    trust.add_key(trusted, key_b.public)
    assert main(["trust", "threshold", "2"]) == 0
    capsys.readouterr()
    line = _refused(capsys, 1, "trust", "remove", key.keyid[:8])
    assert "lower it first (appliance trust threshold 1)" in line
    assert set(trust.load_store(trusted).keys) == {key.keyid, key_b.keyid}  # nothing removed


def test_keys_show_prints_the_id_and_hex_public_key_never_the_secret(
    trusted: Home, key: Key, capsys
):
    from appliance.bundles.keys import load_public_key

    raw = load_public_key(key.public).raw.hex()
    for source in (str(key.public), str(key.private), key.keyid[:10]):
        shown = _json(capsys, "keys", "show", source)
        assert isinstance(shown, dict)
        assert (shown["keyid"], shown["public"]) == (key.keyid, raw)
    assert main(["keys", "show", str(key.private)]) == 0
    out = capsys.readouterr().out
    assert key.keyid in out and raw in out
    secret = key.private.read_text()
    assert "PRIVATE" not in out and secret.splitlines()[1] not in out
    assert "no trusted key" in _refused(capsys, 1, "keys", "show", "00000000ff")


# -- a keyring install says what is in force -------------------------------------------------


def test_keyring_install_says_which_keys_are_in_force(
    trusted: Home, workdir: Path, key: Key, key_b: Key, capsys
):
    shown = _json(capsys, "keys", "show", str(key_b.public))
    assert isinstance(shown, dict)
    keyring = make_bundle(
        workdir,
        [key, key_b],
        name="keyring",
        kind="keyring",
        files={},
        keyring={"threshold": 1, "keys": [{"name": "b", "public": shown["public"]}]},
    )
    assert main(["bundle", "install", str(keyring)]) == 0
    out = capsys.readouterr().out
    assert "the trust store is replaced; in force now: 1 key(s), threshold 1" in out
    assert f"b {key_b.keyid[:16]}" in out and "active" not in out.replace("inactive", "")
