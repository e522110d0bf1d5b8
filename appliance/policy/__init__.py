"""Routing policy: which requests may leave the box, to where, and when to escalate.

``schema`` describes and checks a policy file (pure, cheap per request); ``load`` reads one
from text or disk and reports every problem with its line; the shipped policies live in the
repository's ``policies/`` folder, installed as the ``appliance.policies`` package.
"""

from appliance.policy.load import (
    default_policy,
    default_policy_path,
    load_policy,
    parse_policy,
    policy_digest,
)
from appliance.policy.phrases import PhraseMatcher, compile_phrases
from appliance.policy.schema import (
    EGRESS_LEVELS,
    SCHEMA_VERSION,
    Budgets,
    CascadeSettings,
    ConfidenceMeasure,
    Egress,
    EscalationMode,
    OnHard,
    Policy,
    PrecheckSettings,
    ScoredFinding,
    SensitivityClass,
    UpstreamPrice,
    WhenBlocked,
    egress_rank,
    most_restrictive,
)
from appliance.policy_source import MAX_POLICY_BYTES

__all__ = [
    "EGRESS_LEVELS",
    "MAX_POLICY_BYTES",
    "SCHEMA_VERSION",
    "Budgets",
    "CascadeSettings",
    "ConfidenceMeasure",
    "Egress",
    "EscalationMode",
    "OnHard",
    "PhraseMatcher",
    "Policy",
    "PrecheckSettings",
    "ScoredFinding",
    "SensitivityClass",
    "UpstreamPrice",
    "WhenBlocked",
    "compile_phrases",
    "default_policy",
    "default_policy_path",
    "egress_rank",
    "load_policy",
    "most_restrictive",
    "parse_policy",
    "policy_digest",
]
