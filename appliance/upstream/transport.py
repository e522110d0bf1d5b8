"""The wire under every upstream dialect: TLS, the API key, deadlines, errors.

Design points, each for a reason:

* The API key is read once, at construction, so a missing key file is a ``ConfigError`` at
  start-up rather than a surprise in the middle of a drain; it lives in a private attribute,
  never in ``repr``, never in an error message (every message is scrubbed of it as a last
  guard, because some APIs echo part of a wrong key back in their 401 body).
* ``ca_file`` pins the uplink: only that CA is trusted, not the system store, so a site
  proxy with a corporate CA cannot read the egress text. ``client_cert`` adds mTLS.
* Proxy variables from the environment are ignored (``trust_env=False``): where the egress
  text goes is decided by config.toml, not by whatever a shell exported.
* Each call has an overall deadline (``timeout_s``), not only httpx's per-read timeout: an
  upstream that trickles its answer one byte at a time must not hold a sender forever.
* Every failure becomes an ``UpstreamError`` whose ``retryable`` bit drives the outbox, and
  whose ``reached`` bit says whether the request may have been billed.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx

from appliance.errors import ConfigError
from appliance.settings import UpstreamSettings
from appliance.upstream.dialect import Dialect
from appliance.upstream.errors import UpstreamError, parse_retry_after, status_is_retryable

MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # an answer larger than this is treated as garbage
_USER_AGENT = "appliance-upstream/1"
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # what an upstream error `type` may look like
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: a valid header value


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


def tls_cause(error: BaseException) -> ssl.SSLError | None:
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


class Transport:
    """One upstream's connection pool, key and error wording (no dialect in here)."""

    def __init__(self, settings: UpstreamSettings, timeout_s: float) -> None:
        self.name = settings.name
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

    @property
    def has_key(self) -> bool:
        return self.__key is not None

    def auth_headers(self, dialect: Dialect) -> dict[str, str]:
        """The dialect's authentication headers with this upstream's key."""
        return dialect.auth_headers(self.__key)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
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
            raise self.error(
                f"no answer to {method} {path} within {timeout_s:g} s", True, reached=reached
            ) from None
        except httpx.TransportError as e:
            tls = tls_cause(e)
            if tls is not None:
                detail = getattr(tls, "verify_message", None) or tls.reason or tls
                raise self.error(
                    f"TLS handshake with {method} {path} failed: {detail}", True
                ) from None
            raise self.error(
                f"{method} {path} failed: {type(e).__name__}: {str(e)[:200] or 'no detail'}",
                True,
                reached=not isinstance(e, httpx.ConnectError),
            ) from None
        except httpx.InvalidURL as e:
            raise self.error(f"base_url is not a usable URL: {e}", False) from None

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise self.error(
                    f"answer larger than {MAX_RESPONSE_BYTES} bytes", True, reached=True
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def error(self, what: str, retryable: bool, **kwargs: Any) -> UpstreamError:
        message = f"upstream {self.name}: {what}"
        if self.__key:  # last guard: whatever a cause said, the key never leaves in a message
            message = message.replace(self.__key, "[key]")
        return UpstreamError(message, retryable=retryable, **kwargs)

    def status_error(
        self, method: str, path: str, status: int, headers: httpx.Headers, raw: bytes
    ) -> UpstreamError:
        etype = _error_type(raw)
        detail = f"HTTP {status}" + (f" ({etype})" if etype else "")
        if status in (401, 403):
            return self.error(
                f"{method} {path}: {detail}: credentials refused; check the API key",
                False,
                status=status,
            )
        retry_after = parse_retry_after(headers.get("retry-after"))
        what = f"{method} {path}: {detail}"
        if retry_after is not None:
            what += f", retry after {retry_after:g} s"
        return self.error(
            what, status_is_retryable(status), status=status, retry_after_s=retry_after
        )

    def document(self, raw: bytes, path: str) -> dict[str, Any]:
        """The answer as a JSON object; garbage is retryable (a proxy page, a cut answer)."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise self.error(f"malformed answer to {path}: not JSON", True) from None
        if not isinstance(data, dict):
            raise self.error(f"malformed answer to {path}: not a JSON object", True)
        return data
