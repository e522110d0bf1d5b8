"""PII detection and reversible redaction.

``default_analyzer().analyze(text)`` finds the PII in a text (`findings` names the types),
``analyze_all(messages)`` in the messages of one request (each alone, and all joined: a value
may be split across them); ``pseudonymize`` swaps it for placeholders and ``rehydrate`` puts
it back. The recognizers read a normalised view of the text (`normalize`: fullwidth digits,
Unicode spaces and dashes, zero-width characters), and their spans are spans of the original.
An installed NER model adds PERSON and ORGANIZATION: ``Analyzer([*default_recognizers(), ner])``.
"""

from __future__ import annotations

from appliance.pii.address import StreetAddressRecognizer
from appliance.pii.analyzer import Analyzer, default_analyzer, default_recognizers, resolve_overlaps
from appliance.pii.contact import EmailRecognizer, PhoneRecognizer
from appliance.pii.credentials import SecretRecognizer
from appliance.pii.financial import CreditCardRecognizer, IbanRecognizer
from appliance.pii.findings import (
    CONTEXTUAL_TYPES,
    CREDIT_CARD,
    DATE_OF_BIRTH,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    MAC_ADDRESS,
    NATIONAL_ID,
    NER_TYPES,
    ORGANIZATION,
    PASSPORT,
    PERSON,
    PHONE,
    PII_TYPES,
    SECRET,
    STREET_ADDRESS,
    STRUCTURED_TYPES,
    US_SSN,
    Finding,
    Recognizer,
)
from appliance.pii.identity import DateOfBirthRecognizer, DocumentNumberRecognizer, UsSsnRecognizer
from appliance.pii.ner import OnnxEntityRecognizer
from appliance.pii.network import IpAddressRecognizer, MacAddressRecognizer
from appliance.pii.normalize import MESSAGE_BREAK, TextView, normalize
from appliance.pii.redact import Redaction, pseudonymize, rehydrate

__all__ = [
    "CONTEXTUAL_TYPES",
    "CREDIT_CARD",
    "DATE_OF_BIRTH",
    "EMAIL",
    "IBAN",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "MESSAGE_BREAK",
    "NATIONAL_ID",
    "NER_TYPES",
    "ORGANIZATION",
    "PASSPORT",
    "PERSON",
    "PHONE",
    "PII_TYPES",
    "SECRET",
    "STREET_ADDRESS",
    "STRUCTURED_TYPES",
    "US_SSN",
    "Analyzer",
    "CreditCardRecognizer",
    "DateOfBirthRecognizer",
    "DocumentNumberRecognizer",
    "EmailRecognizer",
    "Finding",
    "IbanRecognizer",
    "IpAddressRecognizer",
    "MacAddressRecognizer",
    "OnnxEntityRecognizer",
    "PhoneRecognizer",
    "Recognizer",
    "Redaction",
    "SecretRecognizer",
    "StreetAddressRecognizer",
    "TextView",
    "UsSsnRecognizer",
    "default_analyzer",
    "default_recognizers",
    "normalize",
    "pseudonymize",
    "rehydrate",
    "resolve_overlaps",
]
