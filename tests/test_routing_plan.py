"""The routing decision, branch by branch, without a model or a network (router.py)."""

from __future__ import annotations

import math

import pytest

from appliance.governance import router
from appliance.governance.classify import classify
from appliance.governance.confidence import confidence
from appliance.pii.analyzer import default_analyzer
from appliance.policy.load import parse_policy
from appliance.settings import UpstreamSettings

POLICY = """
schema = 1
name = "plan-test"
default_class = "public"

[classes.secret]
pii = ["SECRET"]
keywords = ["top secret"]
egress = "never"

[classes.inside]
pii = ["IBAN"]
egress = "internal"

[classes.personal]
pii = ["EMAIL", "PHONE"]
egress = "redacted"

[classes.public]
egress = "allowed"

[cascade]
confidence_threshold = 0.6
escalation = "{escalation}"
when_blocked = "{blocked}"

[precheck]
task_markers = ["step by step"]
on_hard = "{on_hard}"
"""

EXTERNAL = UpstreamSettings(name="cloud", kind="openai", base_url="http://127.0.0.1:9", model="m")
INTERNAL = UpstreamSettings(
    name="onprem", kind="openai", base_url="http://127.0.0.1:9", model="m", perimeter="internal"
)
EMAIL_PROMPT = "Please answer bob.smith@example.com about the late delivery."
IBAN_PROMPT = "Refund to DE89 3704 0044 0532 0130 00 today."


def _policy(escalation: str = "sync-if-online", blocked: str = "local", on_hard: str = "cascade"):
    return parse_policy(POLICY.format(escalation=escalation, blocked=blocked, on_hard=on_hard))


def _plan(text: str, upstreams=(EXTERNAL,), escalate="auto", **options):
    policy = _policy(**options)
    classification = classify(policy, default_analyzer(), [text])
    return policy, router.plan(policy, classification, [text], list(upstreams), escalate)


def test_a_redacted_class_leaves_with_placeholders_only():
    _, plan = _plan(EMAIL_PROMPT)
    assert plan.classification.sensitivity == "personal"
    assert plan.upstream == EXTERNAL
    assert plan.egress is not None
    assert "bob.smith@example.com" not in plan.egress.texts[0]
    assert "<EMAIL_1>" in plan.egress.texts[0]
    assert plan.egress.mapping == {"<EMAIL_1>": "bob.smith@example.com"}


def test_nothing_leaves_without_an_upstream():
    policy, plan = _plan(EMAIL_PROMPT, upstreams=())
    assert plan.upstream is None and plan.egress is None
    assert any("no upstream" in r for r in plan.reasons)
    verdict = router.after_local(policy, plan, 0.1, streamed=False, uplink_up=True)
    assert verdict.route == "local" and not verdict.escalate


def test_a_never_class_stays_whatever_the_device_asks():
    policy, plan = _plan("This is top secret: the launch is Monday.", escalate="prefer")
    assert plan.classification.sensitivity == "secret"
    assert plan.upstream is None and not plan.skip_local
    verdict = router.after_local(policy, plan, 0.1, streamed=False, uplink_up=True)
    assert verdict.route == "local"


def test_a_never_class_with_a_low_confidence_answer_is_refused_when_the_policy_says_so():
    policy, plan = _plan("This is top secret: the launch is Monday.", blocked="refuse")
    assert router.wants_confidence(policy, plan)
    assert router.after_local(policy, plan, 0.1, False, True).route == "refused"
    assert router.after_local(policy, plan, 0.9, False, True).route == "local"


def test_internal_class_goes_only_to_an_internal_upstream_unredacted():
    _, plan = _plan(IBAN_PROMPT, upstreams=(EXTERNAL,))
    assert plan.upstream is None
    assert any("internal upstream" in r for r in plan.reasons)
    _, plan = _plan(IBAN_PROMPT, upstreams=(EXTERNAL, INTERNAL))
    assert plan.upstream == INTERNAL
    assert plan.egress is not None and plan.egress.texts == [IBAN_PROMPT]


def test_the_most_restrictive_class_wins():
    _, plan = _plan(EMAIL_PROMPT + " It is top secret.")
    assert plan.classification.classes[0] == "secret"
    assert plan.classification.egress == "never"
    assert plan.upstream is None


@pytest.mark.parametrize(
    ("confidence_value", "uplink", "escalation", "route", "sync"),
    [
        (0.9, True, "sync-if-online", "local", False),
        (0.6, True, "sync-if-online", "local", False),  # at the threshold: it stands
        (0.3, True, "sync-if-online", "escalated", True),
        (0.3, False, "sync-if-online", "queued", False),
        (0.3, True, "queue", "queued", False),
        (None, True, "sync-if-online", "escalated", True),  # unknown is not good enough
    ],
)
def test_the_cascade(confidence_value, uplink, escalation, route, sync):
    policy, plan = _plan(EMAIL_PROMPT, escalation=escalation)
    verdict = router.after_local(policy, plan, confidence_value, streamed=False, uplink_up=uplink)
    assert (verdict.route, verdict.sync) == (route, sync)
    assert verdict.escalate == (route != "local")


def test_a_streamed_answer_is_queued_never_replaced():
    policy, plan = _plan(EMAIL_PROMPT)
    verdict = router.after_local(policy, plan, 0.1, streamed=True, uplink_up=True)
    assert (verdict.route, verdict.sync) == ("queued", False)


def test_prefer_skips_the_local_answer_only_when_it_may_leave():
    policy, plan = _plan(EMAIL_PROMPT, escalate="prefer")
    assert plan.skip_local
    assert router.before_local(policy, plan, uplink_up=True).route == "escalated"
    assert router.before_local(policy, plan, uplink_up=False) is None  # local now, then queued
    assert router.after_local(policy, plan, 0.99, False, False).route == "queued"
    _, never = _plan(EMAIL_PROMPT, escalate="never")
    assert never.upstream is None and not never.skip_local


def test_a_hard_prompt_skips_the_local_answer_when_the_policy_says_so():
    text = "Explain step by step how to reroute the convoy."
    _, cascading = _plan(text)
    assert cascading.classification.hard and not cascading.skip_local
    _, skipping = _plan(text, on_hard="skip-local")
    assert skipping.skip_local


def test_egress_text_is_shown_even_without_an_upstream():
    policy = _policy()
    classification = classify(policy, default_analyzer(), [EMAIL_PROMPT])
    egress = router.egress_text(classification, [EMAIL_PROMPT])
    assert egress is not None and egress.texts[0].startswith("Please answer <EMAIL_1>")
    secret = classify(policy, default_analyzer(), ["top secret plans"])
    assert router.egress_text(secret, ["top secret plans"]) is None


def test_confidence_measures():
    logprobs = [math.log(0.9), math.log(0.5), math.log(0.8), float("nan")]
    assert confidence(logprobs, "mean") == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert confidence(logprobs, "min") == pytest.approx(0.5)
    assert confidence(logprobs, "tail", 50) == pytest.approx(0.8)
    assert confidence([float("nan")], "mean") is None
    assert confidence([], "min") is None
