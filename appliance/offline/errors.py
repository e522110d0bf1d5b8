"""The one error of the offline exchange."""

from __future__ import annotations

from appliance.errors import ApplianceError


class OfflineError(ApplianceError):
    """A sealed batch, an identity or a card is refused; nothing was changed."""
