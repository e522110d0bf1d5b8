"""The one error of calibration: nothing can be recommended (or written) from these pairs."""

from __future__ import annotations

from appliance.errors import ApplianceError


class CalibrationError(ApplianceError):
    """Too few pairs, no threshold reaches the target, or a draft that cannot be written."""
