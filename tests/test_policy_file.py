"""The policy file: schema, the loader's line-numbered errors, the shipped policies."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from appliance.errors import PolicyError
from appliance.pii.findings import PII_TYPES, Finding
from appliance.policy import (
    MAX_POLICY_BYTES,
    PhraseMatcher,
    Policy,
    default_policy,
    default_policy_path,
    egress_rank,
    load_policy,
    most_restrictive,
    parse_policy,
    policy_digest,
)
from appliance.policy.locate import KeyLines

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "policies").rglob("*.toml"))

MINIMAL = """\
schema = 1
name = "site"
default_class = "public"

[classes.secret]
pii = ["SECRET"]
keywords = ["confidential", "internal only", "c++"]
egress = "never"

[classes.personal]
pii = ["EMAIL", "PHONE"]
min_score = 0.6
egress = "redacted"

[classes.public]
egress = "allowed"
"""


def problems(text: str, source: str = "p.toml") -> list[str]:
    """The problem lines of the PolicyError that `text` raises."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source)
    return str(caught.value).splitlines()


def finding(type_: str, score: float = 0.9) -> Finding:
    return Finding(type=type_, start=0, end=1, score=score, recognizer="test")


# --- the shipped policies ----------------------------------------------------------------


def test_three_policies_are_shipped():
    assert [p.relative_to(REPO / "policies").as_posix() for p in SHIPPED] == [
        "default.toml",
        "examples/field-logistics.toml",
        "examples/regulated-finance.toml",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policy_loads(path: Path):
    policy = load_policy(path)
    assert policy.name == path.stem
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_policy_is_found_through_the_package():
    assert default_policy_path().read_bytes() == (REPO / "policies/default.toml").read_bytes()
    assert default_policy().name == "default"


def test_default_policy_lets_no_pii_leave_unredacted():
    policy = default_policy()
    for name, klass in policy.classes.items():
        if klass.pii or klass.keywords:
            assert klass.egress in ("never", "redacted"), name
    for pii_type in PII_TYPES:
        classes = policy.classes_for([finding(pii_type)])
        assert policy.egress_for(classes) in ("never", "redacted"), pii_type
    assert policy.egress_for(policy.classes_for([finding("SECRET")])) == "never"
    assert policy.classes_for([], "What is the capital of France?") == ("public",)
    assert policy.cascade.enabled and policy.cascade.confidence_measure == "clause"


def test_regulated_finance_never_lets_anything_out():
    policy = load_policy(REPO / "policies/examples/regulated-finance.toml")
    assert {klass.egress for klass in policy.classes.values()} == {"never"}
    assert policy.cascade.when_blocked == "local"


def test_field_logistics_queues_redacted_escalations():
    policy = load_policy(REPO / "policies/examples/field-logistics.toml")
    assert policy.classes["personal"].egress == "redacted"
    assert policy.cascade.escalation == "queue"
    assert policy.cascade.confidence_threshold < 0.5
    assert policy.budgets.daily_usd == 3.0
    assert policy.precheck.hard_reason("Plan the best route for 12 stops") is not None


def test_every_package_is_listed_for_the_wheel():
    """packages is an explicit list (for the policies/ mapping): a new package must join it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(folder.relative_to(REPO).parts)
        for folder in [REPO / "appliance", *(REPO / "appliance").rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }
    listed = set(setuptools["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"] == {"appliance.policies": "policies"}
    assert {"appliance.policies", "appliance.policies.examples"} <= listed


# --- errors, each with its exact line ----------------------------------------------------


def test_bad_toml_names_file_and_line():
    text = MINIMAL.replace('egress = "redacted"', "egress = redacted")
    (line,) = problems(text)
    assert line.startswith("p.toml:13: not valid TOML:")


def test_unknown_top_level_key_is_named_with_a_suggestion():
    text = MINIMAL.replace('name = "site"', 'name = "site"\ndefault_clas = "public"')
    assert problems(text) == ["p.toml:3: default_clas: unknown key (did you mean 'default_class'?)"]


def test_unknown_key_in_a_class():
    text = MINIMAL.replace("min_score = 0.6", "min_scor = 0.6")
    assert problems(text) == [
        "p.toml:12: classes.personal.min_scor: unknown key (did you mean 'min_score'?)"
    ]


def test_unknown_key_in_cascade():
    text = MINIMAL + "\n[cascade]\nenabled = true\nconfidence_treshold = 0.4\n"
    assert problems(text) == [
        "p.toml:20: cascade.confidence_treshold: unknown key (did you mean 'confidence_threshold'?)"
    ]


def test_wrong_egress_lists_the_choices():
    text = MINIMAL.replace('egress = "redacted"', 'egress = "sometimes"')
    assert problems(text, "policies/x.toml") == [
        "policies/x.toml:13: classes.personal.egress: must be one of never, internal, redacted, "
        "allowed (got 'sometimes')"
    ]


def test_unknown_pii_type_is_found_on_its_own_line_of_the_array():
    text = MINIMAL.replace('pii = ["EMAIL", "PHONE"]', 'pii = [\n  "EMAIL",\n  "PHONNE",\n]')
    (line,) = problems(text)
    assert line.startswith("p.toml:13: classes.personal.pii[1]: unknown PII type 'PHONNE'")
    assert "did you mean 'PHONE'?" in line


def test_threshold_out_of_range():
    text = MINIMAL + "\n[cascade]\n# the answer stands at or above\nconfidence_threshold = 1.5\n"
    assert problems(text) == [
        "p.toml:20: cascade.confidence_threshold: must be less than or equal to 1 (got 1.5)"
    ]


def test_tail_percentile_above_fifty_is_refused():
    text = MINIMAL + "\n[cascade]\nconfidence_measure = 'tail'\ntail_percentile = 90\n"
    assert problems(text) == [
        "p.toml:20: cascade.tail_percentile: must be less than or equal to 50 (got 90)"
    ]


def test_default_class_must_name_a_class():
    text = MINIMAL.replace('default_class = "public"', 'default_class = "publik"')
    assert problems(text) == [
        "p.toml:3: default_class: names no class: 'publik' is not one of: secret, personal, "
        "public; did you mean 'public'?"
    ]


def test_a_policy_over_one_mib_is_refused(tmp_path: Path):
    text = MINIMAL + "# " + "x" * (2 * MAX_POLICY_BYTES) + "\n"
    with pytest.raises(PolicyError, match="too large"):
        parse_policy(text, "big.toml")
    path = tmp_path / "big.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=r"big\.toml: larger than 1048576 bytes"):
        load_policy(path)


def test_every_problem_is_reported_at_once_in_line_order():
    text = (
        MINIMAL.replace('name = "site"', 'name = "Site!"')
        .replace('default_class = "public"', 'default_class = "nowhere"')
        .replace('pii = ["SECRET"]', 'pii = ["SECRET", "SECRETS"]')
        .replace('egress = "redacted"', 'egress = "maybe"')
        .replace('[classes.public]\negress = "allowed"', '[classes.public]\ncolour = "red"')
    )
    lines = problems(text)
    assert [line.split(": ")[0:2] for line in lines] == [
        ["p.toml:2", "name"],
        ["p.toml:3", "default_class"],
        ["p.toml:6", "classes.secret.pii[1]"],
        ["p.toml:13", "classes.personal.egress"],
        ["p.toml:16", "classes.public.colour"],
    ]


def test_missing_keys_point_at_their_table_or_the_top():
    text = MINIMAL.replace('name = "site"\n', "").replace(
        "[classes.personal]\n", "[classes.personal]\nkeywords = [' ']\n"
    )
    assert problems(text) == [
        "p.toml:1: name: missing, and has no default",
        "p.toml:10: classes.personal.keywords[0]: must not be empty or only white space",
    ]


def test_a_bad_class_name_and_wrong_types():
    text = MINIMAL.replace("[classes.public]", '[classes."Public Data"]').replace(
        'default_class = "public"', 'default_class = "secret"\nupstreams = "openai-main"'
    )
    assert problems(text) == [
        "p.toml:4: upstreams: must be an array (got 'openai-main')",
        "p.toml:16: classes.\"Public Data\": 'Public Data' is not a valid name: "
        "use a-z 0-9 _ -, a letter or digit first, at most 64",
    ]


def test_schema_must_be_one_and_not_a_boolean():
    assert problems(MINIMAL.replace("schema = 1", "schema = 2"))[0].startswith(
        "p.toml:1: schema: must be 1"
    )
    assert problems(MINIMAL.replace("schema = 1", "schema = true")) == [
        "p.toml:1: schema: must be an integer (got True)"
    ]


def test_nan_and_negative_prices_are_refused():
    text = MINIMAL + "\n[prices.openai-main]\ninput_per_mtok = nan\noutput_per_mtok = -1\n"
    assert problems(text) == [
        "p.toml:19: prices.openai-main.input_per_mtok: must be a finite number (got nan)",
        "p.toml:20: prices.openai-main.output_per_mtok: must be greater than or equal to 0 "
        "(got -1)",
    ]


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


# --- the key locator ---------------------------------------------------------------------


def test_locator_finds_headers_dotted_quoted_inline_and_array_keys():
    text = """\
title = '''
[cascade]
fake = 1
'''
a.b."c d" = 1
[x . "y z"]
arr = [
  1, [2,
  3],
  { k = "v", m = 2 },
]
t = { inner = 1 }
"""
    lines = KeyLines(text)
    assert lines.line_of(("title",)) == 1
    assert lines.line_of(("cascade",)) == 1  # inside the string: not a table, so line 1
    assert lines.line_of(("a", "b", "c d")) == 5
    assert lines.line_of(("x", "y z")) == 6
    assert lines.line_of(("x", "y z", "arr", 1)) == 8
    assert lines.line_of(("x", "y z", "arr", 1, 1)) == 9
    assert lines.line_of(("x", "y z", "arr", 2, "m")) == 10
    assert lines.line_of(("x", "y z", "t", "inner")) == 12
    assert lines.line_of(("x", "y z", "missing")) == 6


# --- matching and ordering ----------------------------------------------------------------


def test_keywords_match_whole_words_case_insensitively():
    secret = parse_policy(MINIMAL).classes["secret"]
    assert secret.keyword_pattern is not None
    assert secret.matches_keywords("This memo is CONFIDENTIAL.")
    assert secret.matches_keywords("(Confidential) draft")
    assert secret.matches_keywords("for internal\n   only use")
    assert secret.matches_keywords("written in C++ for speed")
    assert not secret.matches_keywords("we value confidentiality")
    assert not secret.matches_keywords("nonconfidential notes")
    assert not secret.matches_keywords("internally only")
    assert not secret.matches_keywords("c++x")
    assert secret.keywords_in("Confidential and INTERNAL ONLY; confidential") == [
        "confidential",
        "internal only",
    ]


def test_keyword_prefilter_misses_nothing_outside_ascii():
    """ASCII text takes a substring prefilter; other text and phrases go to the regex."""
    matcher = PhraseMatcher.build(["café crème", "secret"])
    assert matcher is not None and matcher.required_words is None
    assert matcher.search("Un CAFÉ\tCRÈME, s'il vous plaît")
    ascii_only = PhraseMatcher.build(["private key"])
    assert ascii_only is not None and ascii_only.required_words == (("private", "key"),)
    assert ascii_only.search("— PRIVATE   KEY —")  # not ASCII: the regex alone decides
    assert ascii_only.search("the Private Key:")
    assert not ascii_only.search("private keys and a key that is private")


def test_egress_rank_orders_never_internal_redacted_allowed():
    ranks = [egress_rank(e) for e in ("never", "internal", "redacted", "allowed")]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == 4
    assert Policy.egress_rank("never") > Policy.egress_rank("allowed")
    assert most_restrictive(["allowed", "redacted", "internal"]) == "internal"
    assert most_restrictive([]) == "never"


def test_classes_for_uses_scores_keywords_and_the_default():
    policy = parse_policy(MINIMAL)
    assert policy.classes_for([], "hello") == ("public",)
    assert policy.classes_for([finding("EMAIL", 0.5)]) == ("public",)  # below min_score 0.6
    assert policy.classes_for([finding("EMAIL", 0.6)]) == ("personal",)
    both = policy.classes_for([finding("PHONE")], "confidential")
    assert both == ("secret", "personal")
    assert policy.egress_for(both) == "never"
    assert policy.keyword_hits("confidential!") == {"secret": ["confidential"]}


def test_upstream_order_and_prices():
    text = MINIMAL.replace(
        'default_class = "public"', 'default_class = "public"\nupstreams = ["b", "a", "gone"]'
    )
    policy = parse_policy(text + "\n[prices.a]\ninput_per_mtok = 1.5\n")
    assert policy.upstream_order(["a", "b", "c"]) == ("b", "a")
    assert parse_policy(MINIMAL).upstream_order(["a", "c"]) == ("a", "c")
    assert policy.price_for("a", 9.0, 9.0) == (1.5, 9.0)
    assert policy.price_for("b", 2.0, 3.0) == (2.0, 3.0)


def test_defaults_are_safe():
    policy = parse_policy(MINIMAL.replace('egress = "allowed"', ""))
    assert policy.classes["public"].egress == "never"
    assert policy.budgets.daily_usd is None
    assert policy.precheck.on_hard == "cascade" and policy.precheck.classifier == ""


def test_policy_digest_is_the_sha256_of_the_bytes():
    assert policy_digest(MINIMAL) == hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert parse_policy(MINIMAL).digest == policy_digest(MINIMAL.encode())


def test_a_long_prompt_is_classified_by_what_it_holds_wherever_it_is():
    """A 2 KB prompt: its findings and a keyword or task marker near its end decide, as in a
    short one. (How fast: scripts/bench_policy.py times the whole decision, these calls
    included, at 200 characters, 2 KB and 32 KB; its target is a 2 KB p99 under 2 ms.)"""
    policy = default_policy()
    prose = ("Please summarise the delivery notes for the north depot, thanks. " * 32)[:2000]
    assert policy.classes_for([], prose) == ("public",)
    assert policy.precheck.hard_reason(prose) is None
    assert policy.classes_for([finding("EMAIL")], prose) == ("personal",)
    assert policy.classes_for([finding("IBAN"), finding("EMAIL")], prose) == (
        "regulated",
        "personal",
    )
    assert policy.classes_for([finding("EMAIL")], prose + " Internal only.") == (
        "secret",
        "personal",
    )
    assert policy.precheck.hard_reason(prose + " Go step by step.") == "task marker 'step by step'"
    assert policy.precheck.hard_reason("x" * 8001) == "prompt longer than 8000 characters"
