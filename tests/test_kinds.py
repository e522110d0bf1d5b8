"""The bundle kinds table is the one place a kind's rules live."""

from __future__ import annotations

from typing import get_args

from appliance.bundles.kinds import ACTIVATABLE_KINDS, KINDS, RUNTIME_KINDS, Kind
from appliance.bundles.manifest import Manifest


def test_every_kind_the_manifest_accepts_has_one_row():
    assert set(get_args(Kind)) == set(KINDS)
    assert Manifest.model_fields["kind"].annotation == Kind


def test_the_table_says_what_each_kind_does():
    assert ACTIVATABLE_KINDS == ("model", "adapter", "policy")
    assert RUNTIME_KINDS == ("model", "adapter")
    assert [k for k, r in KINDS.items() if r.own_threshold] == ["keyring"]
    for name, rules in KINDS.items():
        assert rules.required_section is None or rules.required_section in rules.allowed_sections
        assert rules.activation, name
