"""One spelling for prices in config.toml and the policy; the old policy spelling still loads.

config.toml's ``[[upstreams]]`` say ``price_input_per_mtok`` (the external contract); the
policy's ``[prices.NAME]`` said ``input_per_mtok``. Both now say ``price_…``; a policy with the
old keys loads as before, with a warning (issue 19).
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest

from appliance.errors import PolicyError
from appliance.policy import load_policy, parse_policy
from appliance.policy.schema import DEPRECATED_PRICE_KEYS, UpstreamPrice
from appliance.settings import Settings, UpstreamSettings, load_settings

REPO = Path(__file__).resolve().parent.parent
BASE = """schema = 1
name = "{name}"
default_class = "public"

[classes.public]
egress = "allowed"

"""


def test_config_and_policy_spell_the_price_keys_alike():
    policy_keys = {f.alias for f in UpstreamPrice.model_fields.values()}
    assert policy_keys == {"price_input_per_mtok", "price_output_per_mtok"}
    assert policy_keys <= set(UpstreamSettings.model_fields)
    assert set(DEPRECATED_PRICE_KEYS.values()) == policy_keys


def test_the_shipped_policies_use_the_one_spelling():
    for path in sorted((REPO / "policies").rglob("*.toml")):
        policy = load_policy(path)
        assert policy.deprecated_keys == (), path
    logistics = load_policy(REPO / "policies" / "examples" / "field-logistics.toml")
    assert logistics.price_for("openai-main", 9.0, 9.0) == (2.0, 8.0)


def test_the_old_spelling_loads_the_same_prices_with_one_warning(caplog: pytest.LogCaptureFixture):
    old = BASE.format(name="old-prices") + (
        "[prices.cloud]\ninput_per_mtok = 2.5\noutput_per_mtok = 10.0\n"
    )
    new = BASE.format(name="new-prices") + (
        "[prices.cloud]\nprice_input_per_mtok = 2.5\nprice_output_per_mtok = 10.0\n"
    )
    caplog.set_level(logging.WARNING, logger="appliance.policy")
    first = parse_policy(old)
    parse_policy(old)  # the daemon reads its policy again every few seconds
    assert first.price_for("cloud", 0.0, 0.0) == parse_policy(new).price_for("cloud", 0, 0)
    assert first.price_for("cloud", 0.0, 0.0) == (2.5, 10.0)
    assert first.deprecated_keys == ("prices.cloud.input_per_mtok", "prices.cloud.output_per_mtok")
    warned = [r.getMessage() for r in caplog.records if "old spelling" in r.getMessage()]
    assert warned == [
        "policy old-prices: prices.cloud.input_per_mtok is an old spelling; "
        "write price_input_per_mtok (it still loads)",
        "policy old-prices: prices.cloud.output_per_mtok is an old spelling; "
        "write price_output_per_mtok (it still loads)",
    ]


def test_a_price_given_both_ways_is_refused():
    both = "[prices.cloud]\ninput_per_mtok = 1\nprice_input_per_mtok = 2\n"
    text = BASE.format(name="both") + both
    with pytest.raises(PolicyError, match="input_per_mtok and price_input_per_mtok both given"):
        parse_policy(text, "p.toml")


def test_an_error_names_the_key_as_the_file_spells_it():
    for key in ("input_per_mtok", "price_input_per_mtok"):
        text = BASE.format(name="bad") + f"[prices.cloud]\n{key} = -1\n"
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, "p.toml")
        assert str(caught.value) == (
            f"p.toml:9: prices.cloud.{key}: must be greater than or equal to 0 (got -1)"
        )
    typo = BASE.format(name="bad") + "[prices.cloud]\nprice_inptu_per_mtok = 1\n"
    with pytest.raises(PolicyError, match="did you mean 'price_input_per_mtok'"):
        parse_policy(typo, "p.toml")


def _readme_config_example() -> str:
    """The README's config.toml example: the toml block under '## Configuration'."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match is not None, "README: no ```toml block under ## Configuration"
    return match.group(1)


def test_the_readme_documents_every_upstream_key_with_an_example(tmp_path: Path):
    example = _readme_config_example()
    data = tomllib.loads(example)
    upstreams = data.get("upstreams")
    assert upstreams, "README: the config example has no [[upstreams]] entry"
    documented = set().union(*(entry.keys() for entry in upstreams))
    assert documented == set(UpstreamSettings.model_fields), "README: every [[upstreams]] key"
    # and the example is a config.toml the appliance reads as it is
    (tmp_path / "config.toml").write_text(example)
    settings = load_settings(tmp_path / "config.toml")
    assert isinstance(settings, Settings) and settings.upstreams[0].price_input_per_mtok > 0
