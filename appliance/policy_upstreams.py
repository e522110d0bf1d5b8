"""Do the policy's upstream names meet config.toml's ``[[upstreams]]``?

A policy names upstreams twice: ``upstreams = [...]`` (where escalations may go, in order)
and ``[prices.NAME]``. Both must be ``name``s of config.toml's ``[[upstreams]]``. A listed
name the box does not configure is skipped, by design: one policy may serve boxes with other
uplinks. But when *none* of the listed names is configured while config.toml configures
some, nothing escalates at all, and nothing else would say so: ``appliance policy check``
prints it, and ``appliance status`` reports it as a problem.

Imports only the standard library and ``policy_source`` (``appliance status`` starts fast).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.home import Home
from appliance.policy_source import MAX_POLICY_BYTES, source_in_force


@dataclass(frozen=True)
class UpstreamNames:
    """The upstream names a policy uses, beside those config.toml configures."""

    listed: tuple[str, ...]  # the policy's `upstreams`, in its order (() = every configured)
    priced: tuple[str, ...]  # the policy's [prices.NAME] names
    configured: tuple[str, ...]  # config.toml's [[upstreams]] names, in file order

    @property
    def missing(self) -> tuple[str, ...]:
        """Listed names config.toml does not configure (skipped)."""
        return tuple(n for n in self.listed if n not in self.configured)

    @property
    def escalation_off(self) -> bool:
        """True when the policy lists upstreams and config.toml configures none of them
        (but configures others): then nothing escalates."""
        return bool(self.listed and self.configured) and len(self.missing) == len(self.listed)

    @property
    def unused_prices(self) -> tuple[str, ...]:
        """[prices.NAME] entries that name no configured upstream (never used while some
        are configured; with none, the TCO report reads the first entry)."""
        if not self.configured:
            return ()
        return tuple(n for n in self.priced if n not in self.configured)

    def escalation_off_message(self) -> str:
        return (
            f"the policy sends escalations only to {', '.join(self.listed)}, and config.toml "
            f"configures none of them (its [[upstreams]]: {', '.join(self.configured)}): "
            "nothing escalates"
        )

    def fix(self) -> str:
        return (
            "give the [[upstreams]] in config.toml the names the policy uses, or list "
            f"{', '.join(self.configured)} in the policy's upstreams (upstreams = [] means "
            "every configured upstream)"
        )

    def warnings(self) -> list[str]:
        """Every mismatch, one line each (``appliance policy check``)."""
        found: list[str] = []
        if self.escalation_off:
            found.append(f"{self.escalation_off_message()}; {self.fix()}")
        elif self.missing and self.configured:
            found.append(
                f"the policy lists {', '.join(self.missing)}, which config.toml does not "
                "configure: skipped"
            )
        elif self.listed and not self.configured:
            found.append(
                "config.toml configures no [[upstreams]]: nothing escalates, whatever the "
                f"policy lists ({', '.join(self.listed)})"
            )
        for name in self.unused_prices:
            found.append(
                f"[prices.{name}] names no upstream of config.toml: that price is never used"
            )
        return found


def check(listed: Iterable[str], priced: Iterable[str], configured: Iterable[str]) -> UpstreamNames:
    return UpstreamNames(tuple(listed), tuple(priced), tuple(configured))


def peek(home: Home, policy_file: str, configured: Iterable[str]) -> UpstreamNames:
    """The names in the policy in force, read as TOML only (the full check is the loader's).

    Raises OSError, UnicodeDecodeError or tomllib.TOMLDecodeError for an unreadable policy
    (status reports that on its own), sqlite3.Error for an unusable state.db.
    """
    source = source_in_force(home, policy_file)
    with source.path.open("rb") as f:
        data = tomllib.loads(f.read(MAX_POLICY_BYTES).decode("utf-8"))
    listed = data.get("upstreams")
    prices = data.get("prices")
    return check(
        [str(n) for n in listed] if isinstance(listed, list) else [],
        [str(n) for n in prices] if isinstance(prices, dict) else [],
        configured,
    )
