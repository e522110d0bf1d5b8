"""What a PII recognizer reports: a typed span of the text, with a score.

The type names are the contract between the recognizers, the policy file (a sensitivity
class lists the types that put a request in it), the placeholders (``<EMAIL_1>``) and the
audit table (which stores the types of what was found, never the values).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

EMAIL = "EMAIL"
PHONE = "PHONE"
CREDIT_CARD = "CREDIT_CARD"
IBAN = "IBAN"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"  # IPv4 and IPv6
MAC_ADDRESS = "MAC_ADDRESS"
DATE_OF_BIRTH = "DATE_OF_BIRTH"  # a date, in the context of birth
PASSPORT = "PASSPORT"  # a passport number, in context
NATIONAL_ID = "NATIONAL_ID"  # an identity-card / driving-licence / national id number, in context
SECRET = "SECRET"  # API keys, tokens, private keys, passwords in context
STREET_ADDRESS = "STREET_ADDRESS"
PERSON = "PERSON"  # from an NER model bundle, when one is installed
ORGANIZATION = "ORGANIZATION"  # likewise

# Validated by their own structure (checksums, ranges, formats): recall >= 99% and
# precision >= 95% on the labelled corpus (tests/data) are the targets for these.
STRUCTURED_TYPES: tuple[str, ...] = (
    EMAIL,
    PHONE,
    CREDIT_CARD,
    IBAN,
    US_SSN,
    IP_ADDRESS,
    MAC_ADDRESS,
)
# Recognized from their shape plus the words around them.
CONTEXTUAL_TYPES: tuple[str, ...] = (DATE_OF_BIRTH, PASSPORT, NATIONAL_ID, SECRET, STREET_ADDRESS)
NER_TYPES: tuple[str, ...] = (PERSON, ORGANIZATION)
PII_TYPES: tuple[str, ...] = STRUCTURED_TYPES + CONTEXTUAL_TYPES + NER_TYPES


@dataclass(frozen=True, slots=True)
class Finding:
    """`text[start:end]` is PII of `type`; `score` in (0, 1] says how sure the recognizer is."""

    type: str
    start: int
    end: int
    score: float
    recognizer: str

    def value(self, text: str) -> str:
        return text[self.start : self.end]

    def to_json(self, with_value: str | None = None) -> dict[str, object]:
        """A JSON-ready dict; the value only when given (never for logs or the audit table)."""
        document: dict[str, object] = {
            "type": self.type,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 3),
            "recognizer": self.recognizer,
        }
        if with_value is not None:
            document["value"] = with_value
        return document


class Recognizer(Protocol):
    """Finds one or more PII types in a text."""

    # Read-only members: a recognizer's class attribute `types = (EMAIL,)` satisfies them.
    @property
    def name(self) -> str: ...

    @property
    def types(self) -> tuple[str, ...]: ...

    def find(self, text: str) -> Iterable[Finding]: ...
