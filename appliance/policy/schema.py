"""The policy file's schema: sensitivity classes, the cascade, the precheck, prices, budgets.

A policy decides, for every inference request, where it may be answered: on the box, or
escalated to an upstream API. These models only describe and check the file; the router
applies them. Everything here is pure (no I/O) and cheap, because it runs on every request:
the phrase patterns and the PII-type index are built once, when the policy is loaded.

How a request's class is chosen: every class with a PII finding of one of its types (scored
at or above the class's ``min_score``) or with one of its keywords in the prompt; none found
means ``default_class``. A PII type or keyword may appear in several classes: the request is
then in all of them, and the most restrictive egress wins (``never`` > ``internal`` >
``redacted`` > ``allowed``). ``internal`` ranks above ``redacted`` because keeping the data
inside the site's perimeter does not depend on the recognizers' recall, and redaction does.

Every default is the safe one: a class that names no egress never leaves the box.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from difflib import get_close_matches
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.bundles.manifest import NAME_PATTERN as BUNDLE_NAME_PATTERN
from appliance.pii.findings import PII_TYPES
from appliance.policy.phrases import PhraseMatcher, phrase_key

SCHEMA_VERSION = 1

Egress = Literal["never", "internal", "redacted", "allowed"]
# Least to most restrictive: an egress's rank is its index here.
EGRESS_LEVELS: tuple[Egress, ...] = ("allowed", "redacted", "internal", "never")
ConfidenceMeasure = Literal["mean", "min", "tail", "first", "clause"]
EscalationMode = Literal["sync-if-online", "queue"]
WhenBlocked = Literal["local", "refuse"]
OnHard = Literal["cascade", "skip-local"]

MAX_NAME_CHARS = 64  # characters in a policy, class or upstream name
MAX_PHRASE_CHARS = 200  # characters in one keyword or task marker
MAX_PHRASES = 1000  # keywords per class, task markers per policy (keeps matching within budget)

_POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_CLASS_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # as config.toml's [[upstreams]] name
_BUNDLE_NAME = re.compile(BUNDLE_NAME_PATTERN)
_log = logging.getLogger("appliance.policy")
_WARNED: set[tuple[str, str]] = set()  # (policy name, key) already warned about


def egress_rank(egress: str) -> int:
    """How restrictive an egress is: never 3 > internal 2 > redacted 1 > allowed 0."""
    return EGRESS_LEVELS.index(egress)


def most_restrictive(egresses: Iterable[Egress]) -> Egress:
    """The most restrictive of `egresses`; ``never`` when there are none (the safe side)."""
    return max(egresses, key=egress_rank, default="never")


class ScoredFinding(Protocol):
    """What classification needs of a PII finding (``appliance.pii.findings.Finding`` fits)."""

    @property
    def type(self) -> str: ...

    @property
    def score(self) -> float: ...


def _checked_name(pattern: re.Pattern[str], allowed: str) -> Any:
    def check(value: str) -> str:
        if len(value) > MAX_NAME_CHARS or not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name: use {allowed}, at most 64")
        return value

    return AfterValidator(check)


PolicyName = Annotated[str, _checked_name(_POLICY_NAME, "a-z 0-9 . _ -, a letter or digit first")]
ClassName = Annotated[str, _checked_name(_CLASS_NAME, "a-z 0-9 _ -, a letter or digit first")]
UpstreamName = Annotated[
    str, _checked_name(_UPSTREAM_NAME, "A-Z a-z 0-9 . _ -, a letter or digit first")
]


def _known_pii_type(value: str) -> str:
    if value in PII_TYPES:
        return value
    close = get_close_matches(value.upper(), PII_TYPES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown PII type {value!r}{hint} (known: {', '.join(PII_TYPES)})")


def _phrase(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only white space")
    if len(value) > MAX_PHRASE_CHARS:
        raise ValueError(f"longer than {MAX_PHRASE_CHARS} characters")
    return value.strip()


PiiType = Annotated[str, AfterValidator(_known_pii_type)]
Phrase = Annotated[str, AfterValidator(_phrase)]


def _no_repeats(values: tuple[str, ...], key: Any = None) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        k = key(value) if key else value
        if k in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(k)
    return values


class _Strict(BaseModel):
    # TOML allows nan and inf; neither is a meaningful threshold or price.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SensitivityClass(_Strict):
    """One sensitivity class: what puts a request in it, and whether it may leave the box."""

    description: str = ""
    pii: tuple[PiiType, ...] = ()
    keywords: tuple[Phrase, ...] = Field(default=(), max_length=MAX_PHRASES)
    min_score: float = Field(default=0.5, ge=0, le=1)  # findings scored below are ignored here
    egress: Egress = "never"

    _keywords: PhraseMatcher | None = PrivateAttr(default=None)

    @field_validator("pii")
    @classmethod
    def _pii_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(value)

    @field_validator("keywords")
    @classmethod
    def _keywords_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(value, phrase_key)

    def model_post_init(self, context: Any, /) -> None:
        # Compiled once here, not per request: the decision budget is 2 ms per prompt.
        self._keywords = PhraseMatcher.build(self.keywords)

    @property
    def keyword_pattern(self) -> re.Pattern[str] | None:
        """All keywords as one case-insensitive whole-word pattern; None if the class has none."""
        return None if self._keywords is None else self._keywords.pattern

    def matches_keywords(self, text: str) -> bool:
        """True when one of the class's keywords appears in `text` as a whole word or phrase."""
        return self._keywords is not None and self._keywords.search(text) is not None

    def keywords_in(self, text: str) -> list[str]:
        """The class's keywords found in `text`, as the policy spells them (for explanations)."""
        return [] if self._keywords is None else self._keywords.find_all(text)

    def counts(self, finding: ScoredFinding) -> bool:
        """True when `finding` puts a request in this class."""
        return finding.type in self.pii and finding.score >= self.min_score


class CascadeSettings(_Strict):
    """Answer locally first; escalate when the local answer's confidence is below threshold."""

    enabled: bool = True
    confidence_measure: ConfidenceMeasure = "clause"  # see policies/README.md
    tail_percentile: float = Field(default=10.0, gt=0, le=50)  # percent, for "tail"
    first_tokens: int = Field(default=1, ge=1, le=64)  # k, for "first"
    confidence_threshold: float = Field(default=0.25, ge=0, le=1)  # local answer stands at/above
    escalation: EscalationMode = "sync-if-online"
    when_blocked: WhenBlocked = "local"  # a low-confidence answer whose query may not leave
    # the share of confident local answers to queries that may leave which are also sent
    # upstream in the background (the device keeps its local answer), so that
    # ``appliance calibrate`` sees how often confident answers agree with the upstream;
    # 0 = none. Paid and within the daily budget like any escalation.
    audit_rate: float = Field(default=0.0, ge=0, le=1)


class PrecheckSettings(_Strict):
    """A cheap look at the prompt, before any model runs, for tasks known to be hard."""

    max_prompt_chars: int = Field(default=8000, ge=0)  # characters; longer is hard; 0 = off
    task_markers: tuple[Phrase, ...] = Field(
        default=("step by step", "prove that", "write a program"), max_length=MAX_PHRASES
    )
    classifier: str = ""  # the name of an active ONNX classifier bundle; "" = none
    classifier_label: str = Field(default="hard", min_length=1)
    classifier_threshold: float = Field(default=0.8, ge=0, le=1)
    on_hard: OnHard = "cascade"

    _markers: PhraseMatcher | None = PrivateAttr(default=None)

    @field_validator("task_markers")
    @classmethod
    def _markers_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(value, phrase_key)

    @field_validator("classifier")
    @classmethod
    def _classifier_is_a_bundle_name(cls, value: str) -> str:
        if value and not _BUNDLE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a bundle name (a-z 0-9 . _ -, at most 64)")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._markers = PhraseMatcher.build(self.task_markers)

    @property
    def task_marker_pattern(self) -> re.Pattern[str] | None:
        """All task markers as one case-insensitive whole-word pattern; None if there are none."""
        return None if self._markers is None else self._markers.pattern

    def hard_reason(self, prompt: str) -> str | None:
        """Why the rules (length, task markers) call `prompt` hard; None when they do not.

        The classifier is not consulted here: running it is the router's job.
        """
        if self.max_prompt_chars and len(prompt) > self.max_prompt_chars:
            return f"prompt longer than {self.max_prompt_chars} characters"
        if self._markers is not None:
            match = self._markers.search(prompt)
            if match is not None:
                return f"task marker {' '.join(match.group().split())!r}"
        return None


class UpstreamPrice(_Strict):
    """USD per million tokens for one upstream; an absent price keeps config.toml's.

    The file spells the keys as config.toml's ``[[upstreams]]`` do, ``price_input_per_mtok``
    and ``price_output_per_mtok``; the older ``input_per_mtok`` and ``output_per_mtok`` still
    load (``deprecated`` names them, and the policy logs a warning once).
    """

    # USD per million input / output tokens. The Python names are the old keys; the file's
    # are the aliases, and either loads (an error names the key as the file spells it).
    input_per_mtok: float | None = Field(
        default=None,
        ge=0,
        alias="price_input_per_mtok",
        validation_alias=AliasChoices("price_input_per_mtok", "input_per_mtok"),
    )
    output_per_mtok: float | None = Field(
        default=None,
        ge=0,
        alias="price_output_per_mtok",
        validation_alias=AliasChoices("price_output_per_mtok", "output_per_mtok"),
    )

    _deprecated: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _old_spelling(cls, data: Any, handler: Any) -> UpstreamPrice:
        old = [key for key in DEPRECATED_PRICE_KEYS if isinstance(data, dict) and key in data]
        for key in old:
            if DEPRECATED_PRICE_KEYS[key] in data:
                raise ValueError(
                    f"{key} and {DEPRECATED_PRICE_KEYS[key]} both given; "
                    f"keep only {DEPRECATED_PRICE_KEYS[key]}"
                )
        price: UpstreamPrice = handler(data)
        price._deprecated = tuple(old)
        return price

    @property
    def deprecated(self) -> tuple[str, ...]:
        """The old key spellings this entry used (``input_per_mtok``, ``output_per_mtok``)."""
        return self._deprecated


# the policy's old spelling of a price key -> the one config.toml's [[upstreams]] use too
DEPRECATED_PRICE_KEYS = {
    "input_per_mtok": "price_input_per_mtok",
    "output_per_mtok": "price_output_per_mtok",
}


class Budgets(_Strict):
    """Spend limits across all upstreams."""

    # USD per day; absent = no limit; 0 = no paid escalation at all.
    daily_usd: float | None = Field(default=None, ge=0)


class Policy(_Strict):
    """A whole policy file. Build it with ``appliance.policy.parse_policy`` for line numbers."""

    schema_version: StrictInt = Field(alias="schema")
    name: PolicyName
    description: str = ""
    # Before default_class: its check reads the validated classes.
    classes: dict[ClassName, SensitivityClass]
    default_class: str
    upstreams: tuple[UpstreamName, ...] = ()  # in order of preference; () = all, config order
    cascade: CascadeSettings = Field(default_factory=CascadeSettings)
    precheck: PrecheckSettings = Field(default_factory=PrecheckSettings)
    prices: dict[UpstreamName, UpstreamPrice] = Field(default_factory=dict)
    budgets: Budgets = Field(default_factory=Budgets)

    # Built once at load: PII type -> ((class, min_score), ...), classes most restrictive first.
    _by_pii_type: dict[str, tuple[tuple[str, float], ...]] = PrivateAttr(default_factory=dict)
    _by_restriction: tuple[str, ...] = PrivateAttr(default=())
    _source: str | None = PrivateAttr(default=None)
    _digest: str | None = PrivateAttr(default=None)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"must be {SCHEMA_VERSION}: this runtime reads schema 1 policies only")
        return value

    @field_validator("classes")
    @classmethod
    def _at_least_one_class(
        cls, value: dict[str, SensitivityClass]
    ) -> dict[str, SensitivityClass]:
        if not value:
            raise ValueError("define at least one class, e.g. [classes.public]")
        return value

    @field_validator("default_class")
    @classmethod
    def _default_class_exists(cls, value: str, info: ValidationInfo) -> str:
        # When a class itself is invalid, the loader passes the file's class names in the
        # context, so that a wrong default_class is reported in the same round.
        classes = info.data.get("classes") or (info.context or {}).get("class_names")
        if classes is not None and value not in classes:
            close = get_close_matches(value, list(classes), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"names no class: {value!r} is not one of: {', '.join(classes) or '(none)'}{hint}"
            )
        return value

    @field_validator("upstreams")
    @classmethod
    def _upstreams_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(value)

    @model_validator(mode="after")
    def _warn_old_spellings(self) -> Policy:
        # Once per process and key: the daemon reads the policy again every few seconds.
        for key in self.deprecated_keys:
            if (self.name, key) not in _WARNED:
                _WARNED.add((self.name, key))
                old = key.rsplit(".", 1)[1]
                _log.warning(
                    "policy %s: %s is an old spelling; write %s (it still loads)",
                    self.name,
                    key,
                    DEPRECATED_PRICE_KEYS[old],
                )
        return self

    @property
    def deprecated_keys(self) -> tuple[str, ...]:
        """Keys spelled the old way, e.g. ``prices.NAME.input_per_mtok``: they load, but
        ``appliance policy check`` says to write them as config.toml does."""
        return tuple(
            f"prices.{name}.{key}"
            for name, price in self.prices.items()
            for key in price.deprecated
        )

    @model_validator(mode="after")
    def _build_indexes(self) -> Policy:
        position = {name: i for i, name in enumerate(self.classes)}
        self._by_restriction = tuple(
            sorted(position, key=lambda n: (-egress_rank(self.classes[n].egress), position[n]))
        )
        index: dict[str, list[tuple[str, float]]] = {}
        for name in self._by_restriction:
            klass = self.classes[name]
            for pii_type in klass.pii:
                index.setdefault(pii_type, []).append((name, klass.min_score))
        self._by_pii_type = {t: tuple(entries) for t, entries in index.items()}
        return self

    # --- what the router asks -----------------------------------------------------------

    egress_rank = staticmethod(egress_rank)
    most_restrictive = staticmethod(most_restrictive)

    @property
    def source(self) -> str | None:
        """Where the policy was read from (the `source` given to parse_policy, or the path)."""
        return self._source

    @property
    def digest(self) -> str | None:
        """SHA-256 (hex) of the policy file's bytes, when parsed from text."""
        return self._digest

    def classes_for(
        self, findings: Iterable[ScoredFinding] = (), text: str = ""
    ) -> tuple[str, ...]:
        """The classes a request falls in, most restrictive first; (default_class,) when none.

        `findings` are the PII findings of the prompt; `text` is the prompt, for keywords.
        """
        hit: set[str] = set()
        for finding in findings:
            for name, min_score in self._by_pii_type.get(finding.type, ()):
                if finding.score >= min_score:
                    hit.add(name)
        if text:
            for name in self._by_restriction:
                if name not in hit and self.classes[name].matches_keywords(text):
                    hit.add(name)
        if not hit:
            return (self.default_class,)
        return tuple(name for name in self._by_restriction if name in hit)

    def egress_for(self, class_names: Iterable[str]) -> Egress:
        """The egress of a request in `class_names`: the most restrictive of theirs."""
        return most_restrictive(self.classes[name].egress for name in class_names)

    def keyword_hits(self, text: str) -> dict[str, list[str]]:
        """For each class with a keyword in `text`, the keywords found (for explanations)."""
        hits = {name: klass.keywords_in(text) for name, klass in self.classes.items()}
        return {name: found for name, found in hits.items() if found}

    def upstream_order(self, configured: Sequence[str]) -> tuple[str, ...]:
        """The configured upstreams escalations may go to, in order of preference.

        `configured` are config.toml's upstream names, in file order. A name the policy lists
        but config.toml lacks is skipped: the policy may be shared by boxes with other uplinks.
        """
        if not self.upstreams:
            return tuple(configured)
        available = set(configured)
        return tuple(name for name in self.upstreams if name in available)

    def price_for(
        self, upstream: str, input_per_mtok: float, output_per_mtok: float
    ) -> tuple[float, float]:
        """(input, output) USD per million tokens: the policy's price, else config.toml's."""
        price = self.prices.get(upstream)
        if price is None:
            return input_per_mtok, output_per_mtok
        return (
            input_per_mtok if price.input_per_mtok is None else price.input_per_mtok,
            output_per_mtok if price.output_per_mtok is None else price.output_per_mtok,
        )
