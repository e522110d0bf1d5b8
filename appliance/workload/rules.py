"""What to do with each cell of the workload, and the policy change that does it.

The rules, in order; the first that applies decides (thresholds in ``Rules``; the first four
are options of ``appliance audit``):

1. **gather more**: fewer than ``min_requests`` requests: too few to judge.
2. **keep local**: at least ``min_pairs`` golden pairs and the local answers agree with the
   upstream's (mean token F1 >= ``agree``): the escalations buy nothing. Change: the class
   stays on the box (``egress = "never"``), unless it escalates ``low_escalation`` or less
   already.
3. **distill**: the local answers disagree, and at least ``distill_pairs`` golden pairs came
   from upstreams whose terms allow training (``trainable``): enough to fine-tune the box's
   model on them. Change: ``appliance distill export``, ``train``, ``eval``, ``pack``, then
   install the adapter; the policy stays until the adapter's agreement shows.
4. **escalate**: at least ``min_pairs`` golden pairs and the local answers disagree: the
   escalations are needed. Change, for a complex cell whose local attempt always runs first
   (``on_hard = "cascade"``): ``on_hard = "skip-local"`` (the upstream answers at once; the
   local attempt is wasted time); otherwise none.
5. Without golden pairs enough, the local confidence speaks (its share below the policy's
   threshold, which the cascade would escalate):

   - a cell whose class may not leave to any configured upstream (``never``, or ``internal``
     with no internal upstream) and whose confidence is not measured (the cascade measures it
     only where an escalation could follow, or with ``when_blocked = "refuse"``): **keep
     local**, no change (nothing says otherwise);
   - such a cell with more than ``low_confidence`` of its answers below the threshold (those
     refused for it included): **escalate inside the perimeter**. Change: ``egress =
     "internal"`` for the class, and where no upstream has ``perimeter = "internal"`` in
     config.toml, one to add (an on-prem model server);
   - at most ``low_confidence`` below the threshold and an escalation rate of at most
     ``low_escalation``: **keep local**, no change;
   - otherwise **escalate**: the cascade is escalating it; its upstream answers have not come
     back yet to compare (no change).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.policy.schema import Policy
from appliance.settings import Settings
from appliance.workload.cells import Cell
from appliance.workload.governed import COMPLEX

GATHER, KEEP_LOCAL, DISTILL = "gather-more", "keep-local", "distill"
ESCALATE, ESCALATE_INTERNAL = "escalate", "escalate-internal"
ACTIONS = (KEEP_LOCAL, ESCALATE, ESCALATE_INTERNAL, DISTILL, GATHER)


@dataclass(frozen=True)
class Rules:
    min_requests: int = 5  # requests (refused ones too) before a cell is judged
    min_pairs: int = 3  # golden pairs before agreement is trusted
    agree: float = 0.8  # mean token F1 at or above which the local answers agree
    distill_pairs: int = 50  # trainable golden pairs that make a fine-tuning set
    low_escalation: float = 0.2  # an escalation rate at or below which a cell is local already
    low_confidence: float = 0.5  # the share below the threshold above which help is needed


@dataclass(frozen=True)
class Context:
    """What the rules need of the policy in force and config.toml."""

    threshold: float  # the cascade's confidence threshold
    on_hard: str  # the pre-check's on_hard
    egress: dict[str, str]  # class -> its egress
    internal: tuple[str, ...]  # upstreams inside the perimeter (config.toml)
    external: tuple[str, ...]  # the others

    @classmethod
    def of(cls, policy: Policy, settings: Settings) -> Context:
        order = policy.upstream_order([u.name for u in settings.upstreams])
        perimeter = {u.name: u.perimeter for u in settings.upstreams}
        return cls(
            threshold=policy.cascade.confidence_threshold,
            on_hard=policy.precheck.on_hard,
            egress={name: c.egress for name, c in policy.classes.items()},
            internal=tuple(n for n in order if perimeter[n] == "internal"),
            external=tuple(n for n in order if perimeter[n] == "external"),
        )

    def may_leave(self, sensitivity: str) -> bool:
        """Whether a request of this class could be escalated to a configured upstream."""
        egress = self.egress.get(sensitivity, "never")  # a class no longer in the policy
        if egress == "never":
            return False
        return bool(self.internal) if egress == "internal" else bool(self.internal or self.external)


@dataclass(frozen=True)
class Recommendation:
    action: str  # one of ACTIONS
    why: str
    change: str | None  # TOML (or commands) that implement it; None: nothing to change


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _class_change(sensitivity: str, egress: str, note: str) -> str:
    return f'# policy.toml: {note}\n[classes.{sensitivity}]\negress = "{egress}"'


DISTILL_COMMANDS = """# on the box, then on a workstation with the [train] extra
appliance distill export --out golden.jsonl
appliance distill train golden.jsonl --base MODEL.bundle --out run/
appliance distill eval run/
appliance distill pack run/ --out tuned.bundle
appliance bundle sign tuned.bundle --key PUBLISHER.key
# back on the box; then appliance report adapters shows whether it paid
appliance bundle install tuned.bundle"""

ONPREM_UPSTREAM = """# config.toml: an upstream inside the site's perimeter (on-prem model server)
[[upstreams]]
name = "onprem"
kind = "openai"
base_url = "https://llm.internal.example/v1"
model = "MODEL"
perimeter = "internal"
""".rstrip()


def recommend(cell: Cell, context: Context, rules: Rules) -> Recommendation:
    """The first of the module's rules that applies to `cell`."""
    rate = cell.escalation_rate
    if cell.requests < rules.min_requests:
        return Recommendation(
            GATHER, f"{cell.requests} requests: fewer than {rules.min_requests} to judge", None
        )
    agreement = cell.agreement
    measured = cell.pairs >= rules.min_pairs and agreement is not None
    if measured and agreement is not None and agreement >= rules.agree:
        why = (
            f"the upstream agreed with the local answer (token F1 {agreement:.2f} over "
            f"{cell.pairs} golden pairs): its escalations buy nothing"
        )
        if rate is not None and rate <= rules.low_escalation:
            return Recommendation(KEEP_LOCAL, f"{why}; it escalates {_pct(rate)} already", None)
        note = f"keep class {cell.sensitivity} on the box (it escalates {_pct(rate)} now)"
        return Recommendation(KEEP_LOCAL, why, _class_change(cell.sensitivity, "never", note))
    if measured and cell.trainable_pairs >= rules.distill_pairs:
        return Recommendation(
            DISTILL,
            f"{cell.trainable_pairs} trainable golden pairs and a local agreement of token F1 "
            f"{agreement:.2f}: fine-tune the box's model on them",
            DISTILL_COMMANDS,
        )
    if measured:
        why = (
            f"the local answer disagreed with the upstream (token F1 {agreement:.2f} over "
            f"{cell.pairs} golden pairs): the escalations are needed"
        )
        if cell.complexity == COMPLEX and context.on_hard == "cascade":
            change = (
                "# policy.toml: hard prompts go to the upstream without a local attempt "
                '(every class that may leave)\n[precheck]\non_hard = "skip-local"'
            )
            return Recommendation(ESCALATE, why, change)
        return Recommendation(ESCALATE, why, None)
    below = cell.below(context.threshold)
    low = below is not None and below > rules.low_confidence
    if below is None and not context.may_leave(cell.sensitivity):
        return Recommendation(
            KEEP_LOCAL,
            f"class {cell.sensitivity} may not leave, and its local answers' confidence is "
            "not measured (the cascade measures it where an escalation could follow, or "
            'with when_blocked = "refuse")',
            None,
        )
    if low and not context.may_leave(cell.sensitivity):
        why = (
            f"{_pct(below)} of the local answers are below the threshold "
            f"{context.threshold} and class {cell.sensitivity} may not leave to any upstream"
        )
        change = _class_change(
            cell.sensitivity, "internal", "escalate inside the site's perimeter only"
        )
        if not context.internal:
            change = f"{ONPREM_UPSTREAM}\n\n{change}"
            why += "; no upstream inside the perimeter is configured yet"
        return Recommendation(ESCALATE_INTERNAL, why, change)
    if not low and (rate is None or rate <= rules.low_escalation):
        return Recommendation(
            KEEP_LOCAL,
            f"{_pct(below)} of the local answers below the threshold {context.threshold}, "
            f"{_pct(rate)} escalated",
            None,
        )
    return Recommendation(
        ESCALATE,
        f"{_pct(rate)} escalated ({_pct(below)} below the threshold {context.threshold}); "
        f"{cell.pairs} golden pairs to compare so far, fewer than {rules.min_pairs}",
        None,
    )
