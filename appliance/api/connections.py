"""Connections a hostile client cannot hoard: read deadlines and caps, below the ASGI app.

uvicorn gives a request no deadline: its keep-alive timer runs only between requests and the
first byte of the next one cancels it, so a client that sends half a request holds a
connection, and a file descriptor, for ever. About 20,000 of them used up the daemon's
descriptors (issue 14). ASGI middleware cannot help, as it runs only once a head is complete.
So the daemon serves HTTP through ``GuardedH11Protocol``, uvicorn's own h11 protocol plus:

- a deadline for a request's head (request line and headers): ``server.header_timeout_s``
  from the connection's start, or on a kept-alive connection from the first byte of the
  next head (before it, uvicorn's keep-alive timer closes an idle connection);
- a deadline for its body: ``server.body_timeout_s`` from the end of the head to the last
  byte. Past either, the client gets a 408 (unless a response has begun), the connection is
  closed, and the app, if it was waiting for the body, sees the client leave;
- caps on open connections: ``server.max_connections_per_client`` per address (an IPv6
  client counts per /64, the block one host usually holds), and ``server.max_connections``
  in all (clients on loopback have ``LOOPBACK_RESERVE`` more, for the box's own supervisor).
  At the cap the connection idle the longest (still sending its first head, or kept alive
  between requests) is closed to make room, so hoarders from many addresses cannot shut out
  a client that sends its request at once; only when every connection is busy with a request
  is a new one refused. A refused or evicted connection gets a minimal 503 and is closed at
  once (a refused one before a byte of it is read).

Refusals and timeouts are logged once per ``LOG_INTERVAL_S`` with a count: under attack,
a line per connection would itself fill the disk.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from appliance.api.errors import RETRY_AFTER_S, error_body
from appliance.api.ratelog import RateLimitedLog
from appliance.settings import ServerSettings

log = logging.getLogger("appliance.connections")

LOOPBACK_RESERVE = 16  # connections past max_connections that only loopback clients may use
LOG_INTERVAL_S = 10.0  # seconds between two log lines about refused or timed-out connections
IPV6_CLIENT_PREFIX = 64  # bits of an IPv6 address that name one client


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float  # seconds for a request's head to arrive in full
    body_timeout_s: float  # seconds for its body, from the end of the head
    max_connections: int  # open connections in all (loopback clients: LOOPBACK_RESERVE more)
    max_per_client: int  # open connections from one client address

    @classmethod
    def of(cls, server: ServerSettings, max_connections: int | None = None) -> ConnectionLimits:
        return cls(
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            max_connections=max_connections or server.max_connections,
            max_per_client=server.max_connections_per_client,
        )


def client_key(host: str) -> str:
    """The address a per-client cap counts by: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if not address.is_loopback:
            return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def raw_response(status: int, reason: str, message: str, type: str, code: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, in the API's JSON error shape."""
    body = json.dumps(error_body(message, type, code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"retry-after: {RETRY_AFTER_S}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Evictable(Protocol):
    def evict(self) -> None:
        """Close at once: the guard has counted this connection out already."""


class ConnectionGuard:
    """What all connections of one server share: the counts, the limits, the log, and the
    idle connections (no request in progress), oldest first, to make room from."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self.idle: dict[Evictable, str] = {}  # connection -> client host, oldest first
        self.log = RateLimitedLog(log, LOG_INTERVAL_S)
        self.busy = raw_response(
            503,
            "Service Unavailable",
            "too many open connections; try again shortly",
            "overloaded_error",
            "too_many_connections",
        )
        self.timeout = {
            part: raw_response(
                408,
                "Request Timeout",
                f"the request {part} did not arrive within {seconds:g} s (server.{key})",
                "invalid_request_error",
                "request_timeout",
            )
            for part, seconds, key in (
                ("head", limits.header_timeout_s, "header_timeout_s"),
                ("body", limits.body_timeout_s, "body_timeout_s"),
            )
        }

    def admit(self, host: str) -> str | None:
        """Count a new connection in; or say why it is refused (and count nothing).

        At the cap, the connection idle the longest (one still sending its first head, or
        kept alive between requests) is closed to make room: a client that sends its request
        at once is served however many hoard connections, and only connections busy with a
        request hold their place.
        """
        key = client_key(host)
        if self.by_client[key] >= self.limits.max_per_client:
            return f"{key} has {self.by_client[key]} open (server.max_connections_per_client)"
        cap = self.limits.max_connections + (LOOPBACK_RESERVE if _is_loopback(host) else 0)
        while self.open >= cap and self.idle:
            victim, victim_host = next(iter(self.idle.items()))
            self.release(victim, victim_host)
            victim.evict()
            self.log.note("evicted", "idle connection closed to make room (server.max_connections)")
        if self.open >= cap:
            return f"{self.open} connections open, all busy (server.max_connections)"
        self.open += 1
        self.by_client[key] += 1
        return None

    def mark_idle(self, connection: Evictable, host: str) -> None:
        self.idle.pop(connection, None)
        self.idle[connection] = host  # the newest idle one: evicted last

    def mark_busy(self, connection: Evictable) -> None:
        self.idle.pop(connection, None)

    def release(self, connection: Evictable, host: str) -> None:
        self.idle.pop(connection, None)
        key = client_key(host)
        self.open -= 1
        self.by_client[key] -= 1
        if self.by_client[key] <= 0:
            del self.by_client[key]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and connection caps (see module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self._host = ""
        self._counted = False  # in the guard's counts
        self._served = False  # handed to uvicorn's protocol (not refused)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # uvicorn's own protocol narrows the argument to asyncio.Transport the same way
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self.guard.admit(self._host)
        if refusal is not None:
            self.transport = transport
            transport.write(self.guard.busy)
            transport.close()
            self.guard.log.note("refused", f"connection refused: {refusal}")
            return
        self._counted = self._served = True
        super().connection_made(transport)
        self.guard.mark_idle(self, self._host)
        self._head_timer = self.loop.call_later(
            self.guard.limits.header_timeout_s, self._expired, "head"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.guard.release(self, self._host)
        if not self._served:
            return  # refused: uvicorn never knew it
        self._served = False
        self._cancel_timers()
        super().connection_lost(exc)

    def evict(self) -> None:
        self._counted = False  # the guard counted it out
        self._close(self.guard.busy)

    def data_received(self, data: bytes) -> None:
        if not self._served:
            return  # refused: closing, nothing of it is read
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self._head_timer is None:
            # The first bytes of a kept-alive connection's next head; they cancelled uvicorn's
            # keep-alive timer, and nothing else would close the connection.
            self._head_timer = self.loop.call_later(
                self.guard.limits.header_timeout_s, self._expired, "head"
            )
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timer: idle until the next head
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            self.guard.mark_idle(self, self._host)
        self._follow_request()  # a pipelined request may be complete already

    def _follow_request(self) -> None:
        """Move from the head deadline to the body deadline as the request arrives."""
        state = self.conn.their_state
        if state is h11.IDLE:
            return
        self.guard.mark_busy(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.guard.limits.body_timeout_s, self._expired, "body"
                )
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _expired(self, part: str) -> None:
        if part == "head":
            self._head_timer = None
        else:
            self._body_timer = None
        self._close(self.guard.timeout[part])
        limit = "header_timeout_s" if part == "head" else "body_timeout_s"
        self.guard.log.note(
            f"timeout-{part}",
            f"connection closed: request {part} not received in time (server.{limit})",
        )

    def _close(self, reason: bytes) -> None:
        """Close now; say why first unless a response has begun; tell a waiting app."""
        if self.transport.is_closing():
            return
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no response head sent yet
            self.transport.write(reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says the client left
            cycle.message_event.set()
        self.transport.close()
