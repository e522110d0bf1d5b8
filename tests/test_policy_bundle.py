"""Policies as signed bundles: verified like any bundle, and refused unless the policy is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundles.installer import BundleManager
from appliance.errors import ManifestError, PayloadError
from appliance.governance.active import ActivePolicy, find_source
from appliance.home import Home
from appliance.settings import Settings
from tests.helpers import MINIMAL_POLICY, Key, make_bundle

SITE_POLICY = MINIMAL_POLICY.replace(b'name = "minimal"', b'name = "site"')


def _installed(home: Home) -> list[str]:
    """Bundle folders and anything left in staging (the lock file is the installer's own)."""
    names = [p.name for p in home.bundles_dir.iterdir() if not p.name.startswith(".")]
    return sorted(names + [p.name for p in home.staging_dir.iterdir()])


def test_an_installed_policy_bundle_is_the_policy_in_force(
    manager: BundleManager, workdir: Path, key: Key, trusted: Home
):
    before = find_source(trusted, Settings())
    assert before.origin == "default"
    active = ActivePolicy(trusted, Settings())
    assert active.policy.name == "default"

    manager.install(
        make_bundle(
            workdir, [key], name="site-policy", files={"policy.toml": SITE_POLICY}, kind="policy"
        )
    )
    source = find_source(trusted, Settings())
    assert source.origin == "bundle site-policy 1.0.0"
    assert active.refresh() is True
    assert active.policy.name == "site"

    newer = SITE_POLICY.replace(b'name = "site"', b'name = "site-v2"')
    manager.install(
        make_bundle(
            workdir / "v2",
            [key],
            name="site-policy",
            version="2.0.0",
            sequence=2,
            files={"policy.toml": newer},
            kind="policy",
        )
    )
    assert active.refresh() and active.policy.name == "site-v2"
    manager.rollback("site-policy")
    assert active.refresh() and active.policy.name == "site"


def test_a_policy_bundle_with_an_invalid_policy_installs_nothing(
    manager: BundleManager, workdir: Path, key: Key, trusted: Home
):
    broken = b'schema = 1\nname = "x"\ndefault_class = "public"\n[classes.public]\negress = "out"\n'
    bundle = make_bundle(
        workdir, [key], name="bad-policy", files={"policy.toml": broken}, kind="policy"
    )
    with pytest.raises(PayloadError, match=r"invalid policy.*classes\.public\.egress"):
        manager.install(bundle)
    assert manager.list() == []
    assert _installed(trusted) == []
    assert find_source(trusted, Settings()).origin == "default"


def test_a_policy_bundle_must_carry_policy_toml(manager: BundleManager, workdir: Path, key: Key):
    with pytest.raises(ManifestError, match=r"policy\.toml"):
        make_bundle(workdir, [key], files={"rules.toml": SITE_POLICY}, kind="policy")
