"""The rules that say whether an upstream call's failure (``UpstreamError``) may pass later.

The store-and-forward outbox acts on one bit: ``retryable``. A retryable failure (network,
timeout, TLS, overload, a garbled answer) means "keep the item and try later"; a permanent
one (the request itself is refused, the key is wrong) means retrying the same bytes can never
succeed, so the item should be parked for an operator instead of hammering the upstream.
A TLS failure is deliberately retryable: a pinned CA that does not match is usually an
interception proxy or a certificate rotation in progress, and dropping queued work because
of it would lose data that a fixed uplink could still deliver.
"""

from __future__ import annotations

import email.utils
import math
import time

from appliance.errors import UpstreamError as UpstreamError  # the class lives with the others

# HTTP statuses after which the same request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def status_is_retryable(status: int) -> bool:
    """408/409/425/429 and every 5xx may pass later; any other 4xx never will."""
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP-date.

    Returns None when absent or unparseable (the caller's own backoff applies then); a date
    in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
