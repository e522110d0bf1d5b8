"""`appliance policy check`: what the policy would do with a prompt, before any model runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from appliance import policy_upstreams
from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.governance import router
from appliance.governance.active import LoadedPolicy, find_source, load
from appliance.governance.classify import classify
from appliance.pii.analyzer import default_analyzer
from appliance.policy.schema import DEPRECATED_PRICE_KEYS
from appliance.policy_source import PolicySource
from appliance.settings import load_settings

app = typer.Typer(help="Try the routing policy.", no_args_is_help=True)

MAX_PROMPT_BYTES = 1 << 20  # bytes read from stdin


def _outcomes(loaded: LoadedPolicy, plan: router.Plan) -> dict[str, Any]:
    """What happens to the request, as the cascade would decide after the local answer."""
    policy = loaded.policy
    cascade = policy.cascade
    upstream = plan.upstream.name if plan.upstream is not None else None
    if plan.skip_local:
        mode = cascade.escalation
        first = "upstream" if mode == "sync-if-online" else "local"
        return {
            "first": first,
            "if_uplink_up": "escalated" if mode == "sync-if-online" else "queued",
            "if_uplink_down": "queued",
            "upstream": upstream,
        }
    if not cascade.enabled:
        return {"first": "local", "if_confident": "local", "if_not_confident": "local"}
    if upstream is None:
        low = "refused" if cascade.when_blocked == "refuse" else "local"
        return {"first": "local", "if_confident": "local", "if_not_confident": low}
    low = "escalated" if cascade.escalation == "sync-if-online" else "queued"
    return {
        "first": "local",
        "if_confident": "local",
        "if_not_confident": low,
        "if_not_confident_uplink_down": "queued",
        "upstream": upstream,
        "threshold": cascade.confidence_threshold,
        "measure": cascade.confidence_measure,
    }


def _warnings(loaded: LoadedPolicy, configured: list[str]) -> list[str]:
    """What in the policy does not meet this box: upstream names config.toml lacks, prices
    for them, and keys spelled the old way."""
    policy = loaded.policy
    found = policy_upstreams.check(policy.upstreams, policy.prices, configured).warnings()
    found += [
        f"{key} is an old spelling; write {DEPRECATED_PRICE_KEYS[key.rsplit('.', 1)[1]]}"
        for key in policy.deprecated_keys
    ]
    return found


@app.command("check")
def check(
    policy_file: Path = typer.Option(
        None, "--policy", help="A policy file to try (default: the policy in force here)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Read a prompt on stdin; print its class, PII found, route and the text that would leave."""
    h = home()
    settings = load_settings(h.config_file)
    if policy_file is not None:
        source = PolicySource(policy_file, "--policy")
    else:
        h.ensure()
        source = find_source(h, settings)
    loaded = load(source)
    prompt = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
    if len(prompt) > MAX_PROMPT_BYTES:
        raise typer.BadParameter(f"the prompt is over {MAX_PROMPT_BYTES} bytes")
    text = prompt.decode("utf-8", errors="replace")
    classification = classify(loaded.policy, default_analyzer(), [text])
    plan = router.plan(loaded.policy, classification, [text], settings.upstreams)
    egress = router.egress_text(classification, [text])
    findings = classification.findings[0]
    document: dict[str, Any] = {
        "policy": loaded.label,
        "source": f"{source.origin}: {source.path}",
        "sensitivity": classification.sensitivity,
        "classes": list(classification.classes),
        "egress": classification.egress,
        "findings": [f.to_json(with_value=f.value(text)) for f in findings],
        "hard": classification.hard,
        "route": _outcomes(loaded, plan),
        "reasons": list(plan.reasons),
        "egress_text": egress.texts[0] if egress is not None else None,
        "placeholders": dict(egress.mapping) if egress is not None else {},
        "warnings": _warnings(loaded, [u.name for u in settings.upstreams]),
    }
    if as_json:
        print_json(document)
        return
    out = console
    out.print(f"policy       {document['policy']}  ({document['source']})", markup=False)
    out.print(
        f"sensitivity  {classification.sensitivity} (egress {classification.egress}; "
        f"classes: {', '.join(classification.classes)})",
        markup=False,
    )
    if findings:
        for i, f in enumerate(findings):
            label = "findings" if i == 0 else ""
            out.print(
                f"{label:<12} {f.type:<15} {f.start}-{f.end}  score {f.score:.2f}  "
                f"{f.value(text)!r}",
                markup=False,
            )
    else:
        out.print("findings     none", markup=False)
    out.print(
        f"pre-check    {'hard: ' + classification.hard if classification.hard else 'not hard'}"
    )
    route = document["route"]
    out.print(
        "route        " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in route.items()),
        markup=False,
    )
    for reason in plan.reasons:
        out.print(f"  because    {reason}", markup=False)
    for warning in document["warnings"]:
        out.print(f"warning      {warning}", markup=False)
    if egress is None:
        out.print("egress text  (none: this request never leaves the box)", markup=False)
    else:
        if plan.upstream is None:
            out.print("egress text  (would be sent if an upstream were configured):", markup=False)
        else:
            out.print(f"egress text  (sent to {plan.upstream.name} if escalated):", markup=False)
        out.print(egress.texts[0], markup=False, highlight=False, soft_wrap=True)
