"""The outbox's tables live in ``appliance.schema`` with every other table of state.db."""

from __future__ import annotations

from appliance.schema import OUTBOX as STATEMENTS

__all__ = ["STATEMENTS"]
