"""One ``[[upstreams]]`` entry as an async client: OpenAI chat completions or Anthropic messages.

Design points, each for a reason:

* The API key is read once, at construction, so a missing key file is a ``ConfigError`` at
  start-up rather than a surprise in the middle of a drain; it lives in a private attribute,
  never in ``repr``, never in an error message (every message is scrubbed of it as a last
  guard, because some APIs echo part of a wrong key back in their 401 body).
* ``ca_file`` pins the uplink: only that CA is trusted, not the system store, so a site
  proxy with a corporate CA cannot read the egress text. ``client_cert`` adds mTLS.
* Proxy variables from the environment are ignored (``trust_env=False``): where the egress
  text goes is decided by config.toml, not by whatever a shell exported.
* Every request carries ``Idempotency-Key: <escalation id>`` so that a retry after a lost
  answer is not billed or answered twice.
* Each call has an overall deadline (``timeout_s``), not only httpx's per-read timeout: an
  upstream that trickles its answer one byte at a time must not hold a sender forever.
* Every failure becomes an ``UpstreamError`` whose ``retryable`` bit drives the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from appliance.errors import ConfigError
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.settings import UpstreamSettings
from appliance.upstream.errors import UpstreamError, parse_retry_after, status_is_retryable

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # an answer larger than this is treated as garbage
_USER_AGENT = "appliance-upstream/1"
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # what an upstream error `type` may look like
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: a valid header value
# Anthropic's stop reasons in OpenAI's vocabulary, so that the rest of the box sees one set.
_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _read_key(settings: UpstreamSettings) -> str | None:
    """The API key from ``api_key_file``; None when none is configured.

    Errors name the file and the cause, never a byte of its content.
    """
    if not settings.api_key_file:
        return None
    path = Path(settings.api_key_file)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"upstream {settings.name}: cannot read api_key_file {path}: {e.strerror or e}"
        ) from None
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"upstream {settings.name}: api_key_file {path} is not ASCII text"
        ) from None
    if not key:
        raise ConfigError(f"upstream {settings.name}: api_key_file {path} is empty")
    if not _KEY_CHARS.match(key):
        raise ConfigError(
            f"upstream {settings.name}: api_key_file {path} must hold one key on one line"
        )
    return key


def _ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | bool:
    """The TLS context: pinned to ``ca_file`` when set, with the mTLS certificate when set."""
    if not settings.ca_file and not settings.client_cert:
        return True  # httpx's default verification
    if settings.ca_file:
        # A bare client context: no system CAs are loaded, so only the pinned CA is trusted.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"upstream {settings.name}: cannot use ca_file {settings.ca_file}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
    else:
        context = httpx.create_ssl_context()
    if settings.client_cert:
        try:
            context.load_cert_chain(certfile=settings.client_cert)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"upstream {settings.name}: cannot use client_cert {settings.client_cert} "
                f"(a PEM holding the certificate and its key): "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
    return context


def anthropic_messages(
    messages: Iterable[Mapping[str, str]],
) -> tuple[str, list[dict[str, str]]]:
    """OpenAI-style messages as Anthropic wants them: ``(system, messages)``.

    Anthropic takes the system prompt as a top-level string, knows only the roles ``user``
    and ``assistant``, and refuses two consecutive messages of the same role. So system (and
    OpenAI's newer ``developer``) messages are joined into ``system``, any other role is
    sent as ``user``, and consecutive same-role messages are merged with a blank line.
    """
    system: list[str] = []
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.get("role", "user")
        content = message.get("content", "")
        if role in ("system", "developer"):
            system.append(content)
            continue
        role = "assistant" if role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"] = out[-1]["content"] + "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system), out


def _count(value: Any) -> int:
    """A token count from an answer; anything odd counts as 0 rather than failing the answer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _tls_cause(error: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` under an httpx error, if the failure was TLS."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _error_type(body: bytes) -> str | None:
    """The upstream's short error type (``invalid_request_error``…), never its message.

    Messages are left out on purpose: some echo part of the key or of the request.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        for field in ("type", "code"):
            value = error.get(field)
            if isinstance(value, str) and _TOKEN.match(value):
                return value
    return None


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
        self._base = settings.base_url.rstrip("/")
        if not self._base.startswith(("https://", "http://")):
            raise ConfigError(
                f"upstream {settings.name}: base_url must start with https:// or http://"
            )
        self.__key = _read_key(settings)
        self._http = httpx.AsyncClient(
            verify=_ssl_context(settings),
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            follow_redirects=False,  # a redirect would re-send the key somewhere else
            headers={"user-agent": _USER_AGENT, "accept": "application/json"},
        )

    def __repr__(self) -> str:
        auth = "key" if self.__key else "no key"
        return f"UpstreamClient(name={self.name!r}, kind={self.kind!r}, {auth})"

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- public calls -------------------------------------------------------------------

    async def complete(self, item: Escalation) -> UpstreamAnswer:
        """Ask the upstream for ``item``'s answer; raise ``UpstreamError`` on any failure."""
        if self.kind == "anthropic":
            path, body = "/messages", self._anthropic_body(item)
        else:
            path, body = "/chat/completions", self._openai_body(item)
        headers = self._auth_headers()
        headers["idempotency-key"] = item.id
        status, response_headers, raw = await self._send(
            "POST", path, body, headers, self.timeout_s
        )
        if not 200 <= status < 300:
            raise self._status_error("POST", path, status, response_headers, raw)
        try:
            data = self._json(raw, path)
            if self.kind == "anthropic":
                return self._anthropic_answer(data)
            return self._openai_answer(data)
        except UpstreamError as e:  # a 2xx answer was given: billed, whatever it held
            e.reached = True
            raise

    async def probe(self) -> None:
        """Check that the upstream answers and accepts the key: ``GET {base_url}/models``."""
        path = "/models"
        status, headers, raw = await self._send(
            "GET", path, None, self._auth_headers(), self.probe_timeout_s
        )
        if not 200 <= status < 300:
            raise self._status_error("GET", path, status, headers, raw)

    # -- requests -----------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self.kind == "anthropic":
            headers = {"anthropic-version": ANTHROPIC_VERSION}
            if self.__key:
                headers["x-api-key"] = self.__key
            return headers
        return {"authorization": f"Bearer {self.__key}"} if self.__key else {}

    def _openai_body(self, item: Escalation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [dict(m) for m in item.messages],
            "max_tokens": item.max_tokens,
            "temperature": item.temperature,
            "top_p": item.top_p,
        }
        if item.stop:
            body["stop"] = list(item.stop)
        return body

    def _anthropic_body(self, item: Escalation) -> dict[str, Any]:
        system, messages = anthropic_messages(item.messages)
        if not messages:
            raise self._error("nothing to send: the escalation has no user message", False)
        body: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": item.max_tokens,
            "messages": messages,
            "temperature": item.temperature,
        }
        # Recent Claude models refuse temperature and top_p together; 1.0 is the neutral
        # value, so it is only sent when it changes something.
        if item.top_p < 1.0:
            body["top_p"] = item.top_p
        if system:
            body["system"] = system
        if item.stop:
            body["stop_sequences"] = list(item.stop)
        return body

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> tuple[int, httpx.Headers, bytes]:
        """One HTTP exchange under an overall deadline; transport failures are retryable."""
        url = self._base + path
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http.stream(
                    method, url, json=body, headers=headers, timeout=timeout_s
                ) as response:
                    raw = await self._read(response)
                    return response.status_code, response.headers, raw
        except (TimeoutError, httpx.TimeoutException) as e:
            # past connecting, the request may have been read and answered (and billed)
            reached = not isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout)
            raise self._error(
                f"no answer to {method} {path} within {timeout_s:g} s", True, reached=reached
            ) from None
        except httpx.TransportError as e:
            tls = _tls_cause(e)
            if tls is not None:
                detail = getattr(tls, "verify_message", None) or tls.reason or tls
                raise self._error(
                    f"TLS handshake with {method} {path} failed: {detail}", True
                ) from None
            raise self._error(
                f"{method} {path} failed: {type(e).__name__}: {str(e)[:200] or 'no detail'}",
                True,
                reached=not isinstance(e, httpx.ConnectError),
            ) from None
        except httpx.InvalidURL as e:
            raise self._error(f"base_url is not a usable URL: {e}", False) from None

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise self._error(
                    f"answer larger than {MAX_RESPONSE_BYTES} bytes", True, reached=True
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- answers and errors -------------------------------------------------------------

    def _error(self, what: str, retryable: bool, **kwargs: Any) -> UpstreamError:
        message = f"upstream {self.name}: {what}"
        if self.__key:  # last guard: whatever a cause said, the key never leaves in a message
            message = message.replace(self.__key, "[key]")
        return UpstreamError(message, retryable=retryable, **kwargs)

    def _status_error(
        self, method: str, path: str, status: int, headers: httpx.Headers, raw: bytes
    ) -> UpstreamError:
        etype = _error_type(raw)
        detail = f"HTTP {status}" + (f" ({etype})" if etype else "")
        if status in (401, 403):
            return self._error(
                f"{method} {path}: {detail}: credentials refused; check the API key",
                False,
                status=status,
            )
        retry_after = parse_retry_after(headers.get("retry-after"))
        what = f"{method} {path}: {detail}"
        if retry_after is not None:
            what += f", retry after {retry_after:g} s"
        return self._error(
            what, status_is_retryable(status), status=status, retry_after_s=retry_after
        )

    def _json(self, raw: bytes, path: str) -> dict[str, Any]:
        """The answer as a JSON object; garbage is retryable (a proxy page, a cut answer)."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise self._error(f"malformed answer to {path}: not JSON", True) from None
        if not isinstance(data, dict):
            raise self._error(f"malformed answer to {path}: not a JSON object", True)
        return data

    def _model(self, data: Mapping[str, Any]) -> str:
        model = data.get("model")
        return model if isinstance(model, str) and model else self.settings.model

    def _openai_answer(self, data: Mapping[str, Any]) -> UpstreamAnswer:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._error("malformed answer: no choices", True)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._error("malformed answer: no message", True)
        content = message.get("content")
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) and finish else "stop"
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if content is not None and not isinstance(content, str):
            raise self._error("malformed answer: content is not text", True)
        if not content:
            why = "a refusal" if message.get("refusal") else f"finish_reason {finish}"
            raise self._error(f"the answer has no text ({why})", False)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return UpstreamAnswer(
            text=content,
            upstream=self.name,
            model=self._model(data),
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            finish_reason=finish,
        )

    def _anthropic_answer(self, data: Mapping[str, Any]) -> UpstreamAnswer:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._error("malformed answer: no content", True)
        text = "".join(
            block["text"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        reason = data.get("stop_reason")
        reason = reason if isinstance(reason, str) and reason else "end_turn"
        if not text:
            raise self._error(f"the answer has no text (stop_reason {reason})", False)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return UpstreamAnswer(
            text=text,
            upstream=self.name,
            model=self._model(data),
            prompt_tokens=_count(usage.get("input_tokens")),
            completion_tokens=_count(usage.get("output_tokens")),
            finish_reason=_ANTHROPIC_FINISH.get(reason, reason),
        )
