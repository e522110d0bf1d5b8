"""``appliance audit``'s document: one entry per cell with its figures and recommendation.

The same figures as a JSON document (``build``) and as flat CSV rows for a spreadsheet
(``csv_rows``, one per cell, the columns in ``CSV_COLUMNS``; ``appliance.tco.csvfile``
writes them). Reads state.db only (read-only); writes nothing.
"""

from __future__ import annotations

from typing import Any

from appliance.home import Home
from appliance.policy.schema import Policy
from appliance.settings import Settings
from appliance.workload import governed
from appliance.workload.cells import ROUTES, Cell, cells
from appliance.workload.rules import Context, Rules, recommend

CSV_COLUMNS = (
    "sensitivity",
    "complexity",
    "split",
    "egress",
    "requests",
    "local",
    "escalated",
    "queued",
    "refused",
    "escalation_rate",
    "local_tokens",
    "upstream_tokens",
    "confidence_p10",
    "confidence_median",
    "confidence_p90",
    "below_threshold",
    "golden_pairs",
    "trainable_pairs",
    "exact_match",
    "token_f1",
    "local_cost_usd",
    "upstream_cost_usd",
    "cost_usd",
    "api_value_of_local_usd",
    "action",
    "why",
    "change",
)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _cell(cell: Cell, context: Context, rules: Rules, split: str | None) -> dict[str, Any]:
    advice = recommend(cell, context, rules)
    document: dict[str, Any] = {
        "sensitivity": cell.sensitivity,
        "complexity": cell.complexity,
        "egress": context.egress.get(cell.sensitivity),
        "requests": cell.requests,
        "routes": {route: cell.routes[route] for route in ROUTES},
        "escalation_rate": _round(cell.escalation_rate),
        "tokens": {"local": cell.local_tokens, "upstream": cell.upstream_tokens},
        "confidence": {
            "answers": len(cell.confidences),
            "p10": _round(cell.quantile(0.1)),
            "median": _round(cell.quantile(0.5)),
            "p90": _round(cell.quantile(0.9)),
            "below_threshold": _round(cell.below(context.threshold)),
        },
        "agreement": {
            "golden_pairs": cell.pairs,
            "trainable_pairs": cell.trainable_pairs,
            "exact_match": _round(cell.exact_match),
            "token_f1": _round(cell.agreement),
        },
        "cost_usd": {
            "local": round(cell.local_cost_usd, 6),
            "upstream": round(cell.upstream_cost_usd, 6),
            "total": round(cell.local_cost_usd + cell.upstream_cost_usd, 6),
            "api_value_of_local": round(cell.api_value_usd, 6),
        },
        "upstreams": dict(sorted(cell.upstreams.items())),
        "recommendation": {"action": advice.action, "why": advice.why, "change": advice.change},
    }
    if split is not None:
        document[split] = cell.split
    return document


def _note_class_wide(entries: list[dict[str, Any]], split: str | None) -> None:
    """A change to a class covers all of its cells: say so where the others advise otherwise."""
    for entry in entries:
        advice = entry["recommendation"]
        if not advice["change"] or f"[classes.{entry['sensitivity']}]" not in advice["change"]:
            continue
        others = [
            f"{o['complexity']}{f' / {o[split]}' if split else ''}: {o['recommendation']['action']}"
            for o in entries
            if o is not entry
            and o["sensitivity"] == entry["sensitivity"]
            and o["recommendation"]["action"] != advice["action"]
        ]
        if others:
            advice["why"] += (
                f"; the change covers all of class {entry['sensitivity']}, whose other cells "
                f"advise otherwise ({', '.join(others)})"
            )


def build(
    home: Home,
    settings: Settings,
    policy: Policy,
    *,
    since: str | None = None,
    split: str | None = None,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """The audit document over the decisions at or after `since`, by cell."""
    rules = rules or Rules()
    context = Context.of(policy, settings)
    trainable = frozenset(settings.trainable_upstreams())
    found = cells(governed.read(home.state_db, since), trainable, split)
    entries = [_cell(c, context, rules, split) for c in found]
    _note_class_wide(entries, split)
    return {
        "since": since,
        "by": split,
        "policy": {
            "name": policy.name,
            "confidence_threshold": context.threshold,
            "on_hard": context.on_hard,
        },
        "rules": {
            "min_requests": rules.min_requests,
            "min_pairs": rules.min_pairs,
            "agree": rules.agree,
            "distill_pairs": rules.distill_pairs,
            "low_escalation": rules.low_escalation,
            "low_confidence": rules.low_confidence,
        },
        "requests": sum(c.requests for c in found),
        "cells": entries,
    }


def csv_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per cell (CSV_COLUMNS), for a spreadsheet."""
    split = document["by"]
    rows = []
    for c in document["cells"]:
        rows.append(
            {
                "sensitivity": c["sensitivity"],
                "complexity": c["complexity"],
                "split": c.get(split) if split else None,
                "egress": c["egress"],
                "requests": c["requests"],
                **c["routes"],
                "escalation_rate": c["escalation_rate"],
                "local_tokens": c["tokens"]["local"],
                "upstream_tokens": c["tokens"]["upstream"],
                "confidence_p10": c["confidence"]["p10"],
                "confidence_median": c["confidence"]["median"],
                "confidence_p90": c["confidence"]["p90"],
                "below_threshold": c["confidence"]["below_threshold"],
                "golden_pairs": c["agreement"]["golden_pairs"],
                "trainable_pairs": c["agreement"]["trainable_pairs"],
                "exact_match": c["agreement"]["exact_match"],
                "token_f1": c["agreement"]["token_f1"],
                "local_cost_usd": c["cost_usd"]["local"],
                "upstream_cost_usd": c["cost_usd"]["upstream"],
                "cost_usd": c["cost_usd"]["total"],
                "api_value_of_local_usd": c["cost_usd"]["api_value_of_local"],
                "action": c["recommendation"]["action"],
                "why": c["recommendation"]["why"],
                "change": c["recommendation"]["change"],
            }
        )
    return rows
