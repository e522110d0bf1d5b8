"""What an upstream dialect is: how one API wants a request, and how its answer reads.

A dialect is pure: it builds a JSON body from an ``Escalation`` and reads an answer document
into an ``UpstreamAnswer``; it never sees the network or the API key (``transport`` does).
A dialect that cannot use what it got raises ``AnswerError``, which the client turns into
an ``UpstreamError`` (scrubbed of the key, marked as billed: a 2xx answer was given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from appliance.governance.escalation import Escalation, UpstreamAnswer


class AnswerError(Exception):
    """A request or answer the dialect cannot use; ``retryable``: may the same pass later."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Dialect(Protocol):
    """One API's shape (``openai``, ``anthropic``)."""

    path: str  # the inference route under base_url

    def auth_headers(self, key: str | None) -> dict[str, str]: ...

    def body(self, item: Escalation, model: str) -> dict[str, Any]: ...

    def answer(self, data: Mapping[str, Any], upstream: str, model: str) -> UpstreamAnswer: ...


def count(value: Any) -> int:
    """A token count from an answer; anything odd counts as 0 rather than failing the answer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def model_of(data: Mapping[str, Any], configured: str) -> str:
    """The model the answer names, else the one config.toml asked for."""
    model = data.get("model")
    return model if isinstance(model, str) and model else configured
