"""One ``[[upstreams]]`` entry as an async client: a dialect over a transport.

The dialect (``openai_dialect``, ``anthropic_dialect``) says what a request and an answer
look like; the transport (``transport``) carries them: TLS pinning, the key, deadlines,
the wording of every error. This module joins the two and adds what holds for every
dialect: each request carries ``Idempotency-Key: <escalation id>``, and any failure after a
2xx answer is marked as billed (``reached``).
"""

from __future__ import annotations

from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.settings import UpstreamSettings
from appliance.upstream.anthropic_dialect import AnthropicDialect, anthropic_messages
from appliance.upstream.dialect import AnswerError, Dialect
from appliance.upstream.errors import UpstreamError
from appliance.upstream.openai_dialect import OpenAIDialect
from appliance.upstream.transport import Transport

DIALECTS: dict[str, Dialect] = {"openai": OpenAIDialect(), "anthropic": AnthropicDialect()}

__all__ = ["DIALECTS", "UpstreamClient", "anthropic_messages"]


class UpstreamClient:
    """Sends escalations to one upstream and probes it; see the module docstring."""

    def __init__(
        self, settings: UpstreamSettings, *, timeout_s: float, probe_timeout_s: float
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.kind = settings.kind
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        self._dialect = DIALECTS[settings.kind]
        self._transport = Transport(settings, timeout_s)

    def __repr__(self) -> str:
        auth = "key" if self._transport.has_key else "no key"
        return f"UpstreamClient(name={self.name!r}, kind={self.kind!r}, {auth})"

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    async def complete(self, item: Escalation) -> UpstreamAnswer:
        """Ask the upstream for ``item``'s answer; raise ``UpstreamError`` on any failure."""
        wire, dialect = self._transport, self._dialect
        try:
            body = dialect.body(item, self.settings.model)
        except AnswerError as e:
            raise wire.error(str(e), e.retryable) from None
        headers = wire.auth_headers(dialect)
        headers["idempotency-key"] = item.id
        status, response_headers, raw = await wire.send(
            "POST", dialect.path, body, headers, self.timeout_s
        )
        if not 200 <= status < 300:
            raise wire.status_error("POST", dialect.path, status, response_headers, raw)
        try:  # a 2xx answer was given: billed, whatever it held
            return dialect.answer(wire.document(raw, dialect.path), self.name, self.settings.model)
        except AnswerError as e:
            raise wire.error(str(e), e.retryable, reached=True) from None
        except UpstreamError as e:
            e.reached = True
            raise

    async def probe(self) -> None:
        """Check that the upstream answers and accepts the key: ``GET {base_url}/models``."""
        path = "/models"
        wire = self._transport
        status, headers, raw = await wire.send(
            "GET", path, None, wire.auth_headers(self._dialect), self.probe_timeout_s
        )
        if not 200 <= status < 300:
            raise wire.status_error("GET", path, status, headers, raw)
