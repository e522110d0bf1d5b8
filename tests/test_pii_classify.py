"""Classification under the default policy: what the PII analysis gives it, and what happens
when the analysis fails (the request stays on the box)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import appliance.pii.analyzer as analyzer_module
from appliance.governance import router
from appliance.governance.classify import classify
from appliance.pii import Analyzer, Finding, default_analyzer, default_recognizers
from appliance.policy.load import default_policy
from appliance.settings import UpstreamSettings

UPSTREAMS = [UpstreamSettings(name="cloud", kind="openai", base_url="https://x/v1", model="m")]


class Broken:
    """A recognizer with a bug; its message quotes the text, as real exceptions may."""

    name = "broken"
    types = ("EMAIL",)

    def find(self, text: str) -> Iterator[Finding]:
        raise ValueError(f"cannot parse {text!r}")


def test_a_failing_recognizer_keeps_the_request_on_the_box() -> None:
    policy = default_policy()
    analyzer = Analyzer([*default_recognizers(), Broken()])
    texts = ["Card 4111 1111 1111 1111? no: just a plain question", "and another"]
    classification = classify(policy, analyzer, texts)
    assert classification.egress == "never"
    assert classification.sensitivity == "secret"  # the policy's most restrictive class
    assert classification.failure == "ValueError"
    assert classification.findings == ((), ())
    reasons = classification.reasons()
    assert reasons[0] == "PII analysis failed (ValueError): kept on the box"
    assert not any("4111" in reason for reason in reasons)  # never the text it choked on
    plan = router.plan(policy, classification, texts, UPSTREAMS)
    assert not plan.may_leave
    assert plan.egress is None


def test_a_failing_normalisation_keeps_the_request_on_the_box(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(text: str) -> None:
        raise UnicodeError("bad text")

    monkeypatch.setattr(analyzer_module, "normalize", broken)
    with pytest.raises(UnicodeError):
        default_analyzer().analyze("hello")  # the analyzer itself raises ...
    classification = classify(default_policy(), default_analyzer(), ["hello"])
    assert classification.egress == "never"  # ... and classification fails closed
    assert classification.failure == "UnicodeError"


def test_nothing_found_is_public_and_may_leave() -> None:
    policy = default_policy()
    classification = classify(policy, default_analyzer(), ["What is the torque for M8?"])
    assert (classification.sensitivity, classification.egress) == ("public", "allowed")
    assert classification.failure is None
    assert router.plan(policy, classification, ["x"], UPSTREAMS).may_leave


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("I forgot my pass\u200bword again", "password"),
        ("This memo is con\u00adfidential.", "confidential"),
        ("Where do I put the API\u00a0key?", "api key"),
        ("\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24 reset please", "password"),
    ],
)
def test_keywords_are_matched_in_the_normalised_text(text: str, keyword: str) -> None:
    classification = classify(default_policy(), default_analyzer(), [text])
    assert classification.sensitivity == "secret"
    assert classification.egress == "never"
    assert keyword in [k.lower() for k in classification.keywords["secret"]]


def test_a_card_split_across_messages_makes_the_request_regulated() -> None:
    texts = ["My card: 4111 1111", "1111 1111"]
    classification = classify(default_policy(), default_analyzer(), texts)
    assert classification.finding_types() == {"CREDIT_CARD": 2}
    assert classification.sensitivity == "regulated"
    assert classification.egress == "never"


def test_redacted_egress_replaces_the_original_spans() -> None:
    policy = default_policy()
    texts = ["Reach me at jordan\u200b@example.com", "or ｊｏ＠example.com"]  # noqa: RUF001
    classification = classify(policy, default_analyzer(), texts)
    assert classification.egress == "redacted"
    plan = router.plan(policy, classification, texts, UPSTREAMS)
    assert plan.egress is not None
    assert plan.egress.texts == ["Reach me at <EMAIL_1>", "or <EMAIL_2>"]
