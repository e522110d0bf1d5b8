"""`appliance calibrate`: the escalation threshold that reaches a target agreement, from pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.calibrate import draft, pairs
from appliance.calibrate.errors import CalibrationError
from appliance.calibrate.estimate import Calibration, Criterion, Point, calibrate
from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.clock import utc_now
from appliance.governance.active import find_source
from appliance.outbox import Outbox
from appliance.outbox.model import fmt_time, parse_time
from appliance.policy.load import load_policy
from appliance.settings import load_settings
from appliance.tco import csvfile
from appliance.tco.report import parse_since

CSV_COLUMNS = (
    "low",
    "high",
    "pairs",
    "audit_pairs",
    "share",
    "agreement",
    "agreement_low",
    "agreement_high",
    "threshold",
    "kept_pairs",
    "kept_effective",
    "kept_agreement",
    "kept_agreement_low",
    "kept_agreement_high",
    "escalation_rate",
    "cost_per_1000_usd",
)


def calibrate_command(
    target: float = typer.Option(
        0.95, "--target", min=0.0, max=1.0, help="Agreement the answers kept local must reach."
    ),
    measure: str = typer.Option(
        "exact", "--measure", help="Agreement: exact (normalised), f1 (token F1) or embedding."
    ),
    embedding: str | None = typer.Option(
        None, "--embedding", help="The active embedding bundle for --measure embedding."
    ),
    min_similarity: float = typer.Option(
        0.9, "--min-similarity", min=-1.0, max=1.0, help="Cosine that counts as agreeing."
    ),
    criterion: str = typer.Option(
        "lower", "--criterion", help="lower: the 95% interval's lower end meets the target; point."
    ),
    model: str | None = typer.Option(None, "--model", help="Only pairs of this local model."),
    since: str | None = typer.Option(
        None, "--since", help="Only pairs from this UTC date or ISO time on (e.g. a new adapter)."
    ),
    min_pairs: int = typer.Option(
        30, "--min-pairs", min=1, help="Effective pairs kept local before a threshold counts."
    ),
    min_audit: int = typer.Option(10, "--min-audit", min=0, help="Audit samples needed."),
    bucket_count: int = typer.Option(10, "--buckets", min=1, max=100, help="Confidence buckets."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write the bucket table as CSV."),
    write_policy: Path | None = typer.Option(
        None, "--write-policy", help="Write a policy draft with the recommended threshold."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Recommend the escalation threshold from the box's own golden pairs (exit 1: none)."""
    if measure not in ("exact", "f1", "embedding"):
        raise typer.BadParameter("one of exact, f1, embedding", param_hint="--measure")
    if criterion not in ("lower", "point"):
        raise typer.BadParameter("one of lower, point", param_hint="--criterion")
    h = home().ensure()
    settings = load_settings(h.config_file)
    source = find_source(h, settings)
    policy = load_policy(source.path)
    floor = fmt_time(parse_time(parse_since(since))) if since is not None else None
    outbox = Outbox(h, settings.outbox)
    try:
        found = pairs.collect(outbox.golden(), model, floor)
    finally:
        outbox.close()
    scorer = _scorer(measure, embedding, min_similarity)
    cascade = policy.cascade
    result = calibrate(
        found.pairs,
        scorer.score(found.pairs),
        measure=scorer.name,
        target=target,
        criterion="lower" if criterion == "lower" else "point",
        current_threshold=cascade.confidence_threshold if cascade.enabled else None,
        audit_rate=cascade.audit_rate,
        min_pairs=min_pairs,
        min_audit=min_audit,
        bucket_count=bucket_count,
    )
    if csv_out is not None and result.buckets:
        csvfile.write([_csv_row(b.to_json()) for b in result.buckets], CSV_COLUMNS, csv_out)
    document = {
        **result.to_json(),
        "policy": {
            "name": policy.name,
            "origin": source.origin,
            "confidence_measure": cascade.confidence_measure,
            "confidence_threshold": cascade.confidence_threshold,
            "audit_rate": cascade.audit_rate,
        },
        "model": model,
        "since": floor,
        "skipped": dict(found.skipped),
        "policy_draft": None,
    }
    if result.recommended is not None and write_policy is not None:
        note = (
            f"appliance calibrate {utc_now()}: target {target:g} by {_criterion(result.criterion)}"
            f" of {result.measure}, {result.pairs} pairs ({result.audit_pairs} audit samples)"
        )
        draft.write_draft(source.path, write_policy, result.recommended.threshold, note)
        document["policy_draft"] = str(write_policy)
    if as_json:
        print_json(document)
    else:
        _print(result, document)
    if result.refusal is not None:
        raise CalibrationError(f"no threshold recommended: {result.refusal}")


def _scorer(measure: str, embedding: str | None, cut: float) -> pairs.Agreement:
    if measure == "exact":
        return pairs.ExactMatch()
    if measure == "f1":
        return pairs.TokenF1()
    backend, label = pairs.embedding_backend(home(), embedding)
    return pairs.EmbeddingSimilarity(backend, label, cut)


def _csv_row(bucket: dict[str, Any]) -> dict[str, Any]:
    edge = bucket["at_low_edge"]
    return {
        **{k: v for k, v in bucket.items() if k != "at_low_edge"},
        "threshold": edge["threshold"],
        "kept_pairs": edge["kept_pairs"],
        "kept_effective": edge["kept_effective"],
        "kept_agreement": edge["agreement"],
        "kept_agreement_low": edge["agreement_low"],
        "kept_agreement_high": edge["agreement_high"],
        "escalation_rate": edge["escalation_rate"],
        "cost_per_1000_usd": edge["cost_per_1000_usd"],
    }


def _criterion(criterion: Criterion) -> str:
    return "the lower end of the 95% interval" if criterion == "lower" else "the point estimate"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or low is None or high is None:
        return "-"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _point(label: str, p: Point) -> str:
    agreement = _interval(p.agreement, p.agreement_low, p.agreement_high)
    return (
        f"{label} {p.threshold:g}: agreement {agreement}"
        f" over {p.kept_pairs} pairs kept local ({p.kept_audit_pairs} audit, effective "
        f"{p.kept_effective:.0f}); escalation rate {_share(p.escalation_rate)} "
        f"[{_share(p.escalation_low)}, {_share(p.escalation_high)}]; upstream "
        f"${p.cost_per_1000_usd:.4f} per 1000 queries that may leave"
    )


def _print(result: Calibration, document: dict[str, Any]) -> None:
    title = (
        f"calibration by {result.measure}: {result.pairs} pairs ({result.audit_pairs} audit "
        f"samples), effective {result.effective_pairs:.0f}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("confidence", "pairs (audit)", "of queries", "agreement [95% CI]"):
        table.add_column(column, justify="right")
    table.add_column("threshold here: kept agreement [95% CI]", justify="right")
    table.add_column("escalation", justify="right")
    table.add_column("cost / 1000", justify="right")
    for b in result.buckets:
        edge = b.at_low_edge
        table.add_row(
            f"{b.low:.2f}-{b.high:.2f}",
            f"{b.pairs} ({b.audit_pairs})",
            _share(b.share),
            _interval(b.agreement, b.agreement_low, b.agreement_high),
            _interval(edge.agreement, edge.agreement_low, edge.agreement_high),
            _share(edge.escalation_rate),
            f"${edge.cost_per_1000_usd:.4f}",
        )
    if result.buckets:
        console.print(table)
    policy = document["policy"]
    console.print(
        f"policy {policy['name']} ({policy['origin']}): confidence {policy['confidence_measure']}, "
        f"audit_rate {policy['audit_rate']:g}",
        markup=False,
    )
    if result.current is not None:
        console.print(_point("threshold in force", result.current), markup=False)
    if document["skipped"]:
        left = ", ".join(f"{n} {why}" for why, n in sorted(document["skipped"].items()))
        console.print(f"left out: {left}", markup=False)
    best = result.recommended
    if best is None:
        return
    console.print(
        _point(
            f"recommended for target {result.target:g} (by {_criterion(result.criterion)}):"
            " threshold",
            best,
        ),
        markup=False,
    )
    if result.audit_cost_per_1000_usd is not None and result.audit_rate > 0:
        console.print(
            f"audit sampling at {result.audit_rate:g} adds about "
            f"${result.audit_cost_per_1000_usd:.4f} per 1000 queries that may leave",
            markup=False,
        )
    if document["policy_draft"]:
        console.print(
            f"policy draft written to {document['policy_draft']}: check it, sign it as a "
            "policy bundle and install it (the box never changes its own policy)",
            markup=False,
        )
