"""Device API tokens: one bearer token per device, stored only as its SHA-256.

A token is ``"apl_" + secrets.token_urlsafe(32)`` (256 random bits). Its plaintext is returned
once, by :meth:`TokenStore.create`, and never stored: ``state.db`` holds the hex SHA-256 and
the scope (``infer`` may call the inference routes, ``admin`` also ``/admin/…``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, cast, get_args

import sqlite_utils

from appliance.errors import StateError, TokenError
from appliance.home import Home
from appliance.state import ThreadConnections, write_transaction

Scope = Literal["infer", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "apl_"
TOUCH_INTERVAL_S = 60  # seconds: last_used_at is refreshed at most this often per device

_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"



@dataclass(frozen=True)
class TokenInfo:
    """What is known about a device's token; never the token or its hash."""

    device: str
    scope: Scope
    created_at: str
    last_used_at: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The device tokens of one APPLIANCE_HOME (table ``device_tokens`` in state.db)."""

    def __init__(self, home: Home, clock: Callable[[], float] = time.time) -> None:
        self.home = home.ensure()
        self._clock = clock
        # the daemon authenticates from several threads: one connection each
        self._connections = ThreadConnections(self.home)
        try:
            self._db()  # opening state.db brings its tables (appliance.schema) up to date
        except BaseException:
            self.close()
            raise

    def _db(self) -> sqlite_utils.Database:
        return self._connections.db()

    def close(self) -> None:
        """Close this thread's connection; other threads' close when those threads end."""
        self._connections.close()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def create(self, device: str, scope: Scope = "infer") -> str:
        """A new token for `device`; the plaintext is returned here and never again."""
        if not _DEVICE_NAME.fullmatch(device):
            raise TokenError(
                f"invalid device name {device!r}: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if scope not in SCOPES:
            raise TokenError(f"unknown scope {scope!r}; use one of: {', '.join(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with write_transaction(self._db()) as conn:
            if conn.execute("SELECT 1 FROM device_tokens WHERE device = ?", (device,)).fetchone():
                raise TokenError(f"device {device} already has a token; revoke it first")
            conn.execute(
                "INSERT INTO device_tokens (device, token_hash, scope, created_at) "
                "VALUES (?, ?, ?, ?)",
                (device, hash_token(token), scope, self._now().strftime(_TIMESTAMP)),
            )
        return token

    def authenticate(self, token: str) -> TokenInfo | None:
        """The device and scope `token` belongs to, or None for an unknown or revoked token."""
        # The lookup is by SHA-256 of the presented token, so no comparison ever runs on the
        # secret itself; a timing leak could only reveal bits of a hash, and finding a token
        # that matches chosen hash bits means inverting SHA-256 over 256 random bits.
        row = (
            self._db()
            .conn.execute(
                "SELECT device, scope, created_at, last_used_at FROM device_tokens "
                "WHERE token_hash = ?",
                (hash_token(token),),
            )
            .fetchone()
        )
        if row is None:
            return None
        info = TokenInfo(row[0], cast(Scope, row[1]), row[2], row[3])
        now = self._now()
        if (
            info.last_used_at is None
            or (now - _parse(info.last_used_at)).total_seconds() >= TOUCH_INTERVAL_S
        ):
            stamp = now.strftime(_TIMESTAMP)
            try:
                with write_transaction(self._db()) as conn:
                    conn.execute(
                        "UPDATE device_tokens SET last_used_at = ? WHERE token_hash = ?",
                        (stamp, hash_token(token)),
                    )
            except (StateError, sqlite3.OperationalError):
                # last_used_at is advisory: a busy database must not refuse a valid device.
                return info
            info = TokenInfo(info.device, info.scope, info.created_at, stamp)
        return info

    def revoke(self, device: str) -> None:
        """Delete `device`'s token; its requests are refused from now on."""
        with write_transaction(self._db()) as conn:
            deleted = conn.execute("DELETE FROM device_tokens WHERE device = ?", (device,))
            if deleted.rowcount == 0:
                raise TokenError(f"no token for device {device!r}")

    def list(self) -> list[TokenInfo]:
        """Every device with a token, by name."""
        rows = (
            self._db()
            .conn.execute(
                "SELECT device, scope, created_at, last_used_at FROM device_tokens ORDER BY device"
            )
            .fetchall()
        )
        return [TokenInfo(r[0], cast(Scope, r[1]), r[2], r[3]) for r in rows]


def _parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, _TIMESTAMP).replace(tzinfo=UTC)
