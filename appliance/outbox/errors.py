"""Errors of the outbox: every one is an ``ApplianceError``, so the CLI prints one line."""

from __future__ import annotations

from appliance.errors import ApplianceError


class OutboxError(ApplianceError):
    """An outbox operation is refused (unknown item, wrong state, unreadable sealed map)."""


class OutboxFullError(OutboxError):
    """The outbox is at its item or byte cap and nothing may be dropped to make room.

    The daemon answers it with 503 and ``Retry-After``: the device keeps its local answer.
    """
