"""UTC time as the appliance writes it: one place for "now" and its two text forms.

Times are stored and shown as text in UTC with a ``Z``: to the second where people read
them (audit rows, manifests, the status screen), to the microsecond where rows are ordered
by them (the outbox). A naive datetime is never guessed at: it is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now_dt() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """`moment` to the second: ``2026-12-06T21:05:00Z``."""
    _aware(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_precise(moment: datetime) -> str:
    """`moment` to the microsecond: ``2026-12-06T21:05:00.123456Z`` (sorts as text)."""
    _aware(moment)
    # isoformat() is several times faster than strftime() and gives the same text here.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    """Now, to the second."""
    return format_timestamp(utc_now_dt())


def _aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give a time zone (UTC)")
