"""Who may connect and who must go: descriptor, login and per-address limits, without I/O.

A process has a fixed number of file descriptors (RLIMIT_NOFILE), and every socket costs one
whether or not its client ever logs in. So (docs/security.md, "Connection caps"):

- **client sockets** open at once are capped at the descriptor limit minus a reserve for
  everything else the process needs (the admin endpoint and its clients, Redis, PostgreSQL,
  logs, listeners, the event loop's own descriptors). At the cap the accept loop pauses:
  new clients wait in the kernel's listen backlog (and get in as soon as a socket closes,
  without a refusal and a retry), while the admin endpoint and the store keep theirs;
- **logged-in connections** are capped by `max_connections` (default: the socket cap); a
  login past it is refused with 1013 after the WebSocket handshake;
- **sockets awaiting login** are capped in total (`max_pending_logins`): at the cap the
  accept loop pauses too, so a burst of logins queues in the backlog instead of in memory;
- **per source address** (an IPv6 /64 counts as one address): a source with more than
  `max_pending_logins_per_address` sockets awaiting login loses those that have waited
  longer than `grace_s` without anything unread from the client, oldest checks first,
  closed with 1013 (`Close.LOGIN_LIMIT`). A burst from one address (a reconnect storm
  behind a NAT, a load generator) is not cut short: its sockets are young, or have data
  the server has not read yet. A client that opens sockets and stays silent keeps at most
  that many past the grace;
- everyone has `login_timeout_s` to log in (3004).

`Admission` keeps the counts and one heap of deadlines for all sockets awaiting login (no
task or timer per socket); the server calls `due()` when `next_check()` comes. Time is
passed in; whether a socket is idle is asked through a callback (a non-blocking peek).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from presenced.closes import Close

__all__ = [
    "LOGIN_GRACE_S",
    "Admission",
    "Limits",
    "Pending",
    "derive_limits",
    "fd_reserve",
    "source_key",
]

# How long a socket awaiting login is safe from the per-address limit. Real clients send
# the upgrade and the login within a few round trips of connecting.
LOGIN_GRACE_S = 3.0
# Descriptors kept for everything but client sockets: standard streams and log files,
# the listening sockets, the event loop's epoll and wake-up pipe and the WebSocket poller,
# admin endpoint clients (Prometheus, probes, an operator's CLI), PostgreSQL, DNS, the
# profiles client; the Redis pool comes on top.
FD_RESERVE_BASE = 96
# Sockets awaiting login in total, at most: the socket cap, up to this. A reconnect storm
# of a full server then waits in memory (about 1.4 KB a socket) rather than in SYN
# retransmissions once the listen backlog is full: with half the socket cap, 19,000 users
# dropped at once were all back after 27 s, 4,841 of their connects timing out after 1, 3
# and 7 s of SYN back-off; with this, after 12 s and none (docs/performance.md). Silent
# sockets are bounded by the per-address limit and the login timeout, not by this cap.
PENDING_CAP = 16384
PENDING_PER_SOURCE = 64


def fd_reserve(redis_pool_size: int) -> int:
    """Descriptors the process keeps for itself beyond client sockets."""
    # The pool, the change feed's pub/sub connection and one being replaced.
    return FD_RESERVE_BASE + redis_pool_size + 2


@dataclass(frozen=True, slots=True)
class Limits:
    sockets: int
    logged_in: int
    pending: int
    pending_per_source: int
    login_timeout_s: float
    grace_s: float = LOGIN_GRACE_S


def derive_limits(*, nofile: int, redis_pool_size: int, max_connections: int,
                  max_pending: int, max_pending_per_source: int,
                  login_timeout_s: float) -> Limits:
    """The limits in force: each 0 in the configuration is derived from `nofile`."""
    sockets = max(16, nofile - fd_reserve(redis_pool_size))
    pending = max_pending or max(16, min(PENDING_CAP, sockets))
    return Limits(
        sockets=sockets,
        logged_in=max_connections or sockets,
        pending=pending,
        pending_per_source=max_pending_per_source or PENDING_PER_SOURCE,
        login_timeout_s=login_timeout_s,
    )


def source_key(host: str) -> str:
    """What the per-address limit counts by: the IPv4 address, or the IPv6 /64."""
    if ":" not in host:
        return host
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    import ipaddress

    try:
        network = ipaddress.IPv6Network((host.split("%")[0], 64), strict=False)
    except ValueError:
        return host
    return str(network)


class Pending(Protocol):
    """A socket as admission sees it (the server's connection)."""

    source: str
    accepted_at: float
    # Admission's handle on this socket's deadline (set by `opened`, emptied when it leaves
    # the login): the heap holds the handle, so a socket that went is not kept alive by it.
    admission_ticket: list[Pending | None] | None

    @property
    def awaiting_login(self) -> bool: ...


class Admission:
    """Counts and login deadlines of one server process (see the module docstring)."""

    __slots__ = ("limits", "sockets", "logged_in", "pending", "by_source", "_checks", "_seq")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sockets = 0
        self.logged_in = 0
        self.pending = 0
        self.by_source: dict[str, int] = {}
        # (when to look at it, tie-breaker, [socket]): one heap for every socket awaiting login.
        self._checks: list[tuple[float, int, list[Pending | None]]] = []
        self._seq = itertools.count()

    # ------------------------------------------------------------- questions

    def accepting(self) -> bool:
        """Whether the accept loop may take another socket now."""
        return self.blocking_limit() is None

    def blocking_limit(self) -> str | None:
        """The cap that keeps the accept loop waiting ("sockets", "awaiting_login"), or None
        (the names of `presenced_connection_limit`'s labels)."""
        limits = self.limits
        if self.sockets >= limits.sockets:
            return "sockets"
        if self.pending >= limits.pending:
            return "awaiting_login"
        return None

    def full(self) -> bool:
        """Whether a login now would pass the cap of logged-in connections."""
        return self.logged_in >= self.limits.logged_in

    def next_check(self) -> float:
        """When `due()` next has something to decide (inf: nothing awaits login)."""
        checks = self._checks
        return checks[0][0] if checks else math.inf

    # --------------------------------------------------------------- changes

    def opened(self, conn: Pending, now: float) -> None:
        """A socket was accepted: it awaits its login from now."""
        self.sockets += 1
        self.pending += 1
        source = conn.source
        self.by_source[source] = self.by_source.get(source, 0) + 1
        limits = self.limits
        ticket: list[Pending | None] = [conn]
        conn.admission_ticket = ticket
        self._push(now + min(limits.grace_s, limits.login_timeout_s), ticket)

    def left_login(self, conn: Pending, logged_in: bool) -> None:
        """`conn` no longer awaits its login (it logged in, or ended); call once."""
        ticket = conn.admission_ticket
        if ticket is not None:
            ticket[0] = None
            conn.admission_ticket = None
        self.pending -= 1
        source = conn.source
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]
        if logged_in:
            self.logged_in += 1

    def logged_out(self) -> None:
        """A logged-in connection ended."""
        self.logged_in -= 1

    def closed(self) -> None:
        """A client socket was closed."""
        self.sockets -= 1

    def due(self, now: float, idle: Callable[[Pending], bool]) -> list[tuple[Pending, Close]]:
        """Sockets to close now, each with its cause: the login timeout, or the per-address
        limit (`idle(conn)`: nothing unread from the client). The caller closes them, which
        makes them leave the login (`left_login`)."""
        checks = self._checks
        limits = self.limits
        out: list[tuple[Pending, Close]] = []
        # Evictions decided in this call, per source, not yet reflected in `by_source`.
        evicting: dict[str, int] = {}
        while checks and checks[0][0] <= now:
            _, _, ticket = heapq.heappop(checks)
            conn = ticket[0]
            if conn is None or not conn.awaiting_login:
                continue  # logged in or gone since: nothing to check
            deadline = conn.accepted_at + limits.login_timeout_s
            if now >= deadline:
                out.append((conn, Close.AUTH_TIMEOUT))
                continue
            source = conn.source
            over = (self.by_source.get(source, 0) - evicting.get(source, 0)
                    > limits.pending_per_source)
            if over and idle(conn):
                evicting[source] = evicting.get(source, 0) + 1
                out.append((conn, Close.LOGIN_LIMIT))
            elif over:
                # Busy (data the server has not read yet): look again after another grace.
                self._push(min(now + limits.grace_s, deadline), ticket)
            else:
                self._push(deadline, ticket)
        return out

    def _push(self, when: float, ticket: list[Pending | None]) -> None:
        heapq.heappush(self._checks, (when, next(self._seq), ticket))
