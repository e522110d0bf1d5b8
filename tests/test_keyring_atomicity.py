"""A keyring rotation changes the trust store if and only if its bundle is recorded.

Each case runs a real install in a child process that SIGKILLs itself at one step, so no
Python cleanup runs, exactly as with a power cut; then recovery runs and the store is checked.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.keys import load_public_key
from appliance.home import Home
from tests.helpers import Key, make_bundle

KILL_AT = {
    # just before the state.db transaction begins: the new store is prepared, not recorded
    "before-commit": "appliance.bundles.installer.write_transaction",
    # after COMMIT, before the first rename of the swap
    "after-commit": "appliance.bundles.trust.swap_in",
}

CHILD = """
import os, signal, sys
from pathlib import Path
import appliance.bundles.installer as installer, appliance.bundles.trust as trust
from appliance.bundles.installer import BundleManager
from appliance.home import Home

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

target = sys.argv[2]
if target.endswith("write_transaction"):
    installer.write_transaction = die
else:
    trust.swap_in = die
BundleManager(Home.from_env()).install(Path(sys.argv[1]))
"""


def _keyring_bundle(workdir: Path, signers: list[Key], new_keys: list[Key]) -> Path:
    return make_bundle(
        workdir,
        signers,
        name="keyring",
        kind="keyring",
        files={},
        keyring={
            "threshold": 1,
            "keys": [
                {"name": k.name, "public": load_public_key(k.public).raw.hex()} for k in new_keys
            ],
        },
    )


@pytest.mark.parametrize("step", sorted(KILL_AT))
def test_power_cut_during_keyring_rotation(
    step: str, trusted: Home, workdir: Path, key: Key, key_b: Key
):
    bundle = _keyring_bundle(workdir, [key, key_b], [key_b])
    env = {**os.environ, "APPLIANCE_HOME": str(trusted.root)}

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle), KILL_AT[step]], env=env, capture_output=True
    )

    assert child.returncode == -9, child.stderr.decode()
    manager = BundleManager(trusted)
    try:
        recorded = [b.name for b in manager.list()] == ["keyring"]
        assert recorded == (step == "after-commit")
        # Before recovery the store in force is still the old one either way...
        assert set(trust.load_store(trusted).keys) == {key.keyid}
        manager.recover()
        # ...and recovery rotates it exactly when the keyring bundle is recorded.
        expected = {key_b.keyid} if recorded else {key.keyid}
        assert set(trust.load_store(trusted).keys) == expected
        assert sorted(p.name for p in trusted.root.iterdir() if p.name.startswith("trust")) == [
            "trust"
        ]
        # Installing again completes the rotation in both cases.
        manager.install(bundle)
        assert set(trust.load_store(trusted).keys) == {key_b.keyid}
    finally:
        manager.close()


def test_store_mid_swap_is_read_from_the_prepared_folder(trusted: Home, key: Key, key_b: Key):
    """Between the swap's two renames trust/ is absent; readers see the committed new store."""
    new = trust.prepare_store(trusted, [load_public_key(key_b.public)], 1, "ab" * 32)
    os.rename(trusted.trust_dir, trusted.root / ("trust.old-" + "ab" * 32))

    assert set(trust.load_store(trusted).keys) == {key_b.keyid}
    assert new.exists()  # reading changed nothing


def test_version_folder_is_writable_while_it_is_moved(
    manager: BundleManager, workdir: Path, key: Key, monkeypatch: pytest.MonkeyPatch
):
    """Linux lets a non-root user move a folder to a new parent only if it can write to it."""
    modes: list[int] = []
    real_rename = os.rename

    def spy(src: str | Path, dst: str | Path) -> None:
        if Path(src).is_dir():
            modes.append(stat.S_IMODE(Path(src).stat().st_mode))
        real_rename(src, dst)

    monkeypatch.setattr("appliance.bundles.installer.os.rename", spy)
    manager.install(make_bundle(workdir, [key]))

    assert modes and all(mode & stat.S_IWUSR for mode in modes)
    final = manager.home.bundle_dir("demo", "1.0.0")
    assert stat.S_IMODE(final.stat().st_mode) == 0o555
