"""The Redis store's health: one state, its transitions decided here (no I/O).

The store reports what happened (a call failed or succeeded, the change feed
dropped or subscribed, a resync completed) and reads back the state and the
retry delay; every transition is decided, counted and logged here, once.

    STARTING ──(first full load)──> HEALTHY
    HEALTHY ──(a call fails, the feed drops)──> UNAVAILABLE      an outage starts
    UNAVAILABLE ──(calls work and the feed is subscribed)──> RECOVERING
    RECOVERING ──(a resync completed with nothing left to repair)──> HEALTHY
    RECOVERING ──(fails again)──> UNAVAILABLE                    the same outage
    any ──(aclose)──> CLOSED

An outage is logged when it starts (a warning, with its first cause) and when
it ends (with its duration); the steps in between are logged at debug level,
so that a flapping Redis cannot flood the log.

This module also judges Redis's persistence settings (`persistence_problem`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from presenced.store.base import StoreStats

log = logging.getLogger("presenced.store.redis")


class Health(enum.Enum):
    # Not yet loaded: the instance does not take connections.
    STARTING = "starting"
    HEALTHY = "healthy"
    # Redis answers again; the store is resynchronising with it.
    RECOVERING = "recovering"
    # Calls fail or the change feed is down: serving from memory, retrying.
    UNAVAILABLE = "unavailable"
    CLOSED = "closed"


class HealthMachine:
    """`name` says which Redis in log lines (never with a password);
    `clock` is monotonic seconds, for outage durations."""

    def __init__(
        self, name: str, stats: StoreStats, *, backoff_min_s: float, backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.stats = stats
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self.state = Health.STARTING
        # Calls to Redis work (False from a failure until one succeeds).
        self.calls_ok = True
        # Seconds to wait before retrying while calls fail (exponential backoff).
        self.retry_delay = 0.0
        self._feed_up = False
        self._in_sync = False
        self._started = False
        self._closed = False
        self._failures_before_start = 0
        self._outage_reason: str | None = None
        self._outage_since: float | None = None

    @property
    def healthy(self) -> bool:
        return self.state is Health.HEALTHY

    # ------------------------------------------------------------------ inputs

    def call_failed(self, reason: str) -> None:
        """A call to Redis failed; calls back off until one succeeds."""
        self.calls_ok = False
        self.retry_delay = min(self.backoff_max_s,
                               max(self.backoff_min_s, self.retry_delay * 2))
        self._failure(reason)

    def call_succeeded(self) -> bool:
        """A call to Redis worked; True if calls just came back after the start
        (the store must then resynchronise)."""
        came_back = not self.calls_ok
        if came_back:
            self.calls_ok = True
            self.retry_delay = 0.0
            self._update()
        return came_back and self._started

    def feed_lost(self, reason: str) -> None:
        """The change feed dropped. Says nothing about other connections: calls
        go on, and a resync follows the new subscription."""
        self._feed_up = False
        self._failure(reason)

    def feed_subscribed(self) -> None:
        self._feed_up = True
        self._update()

    def started(self) -> None:
        """The first full load is done."""
        self._started = True
        self._update()

    def resynced(self, *, clean: bool) -> None:
        """A resync completed; `clean` if nothing asked for another one since."""
        if clean and self.calls_ok:
            self._in_sync = True
        self._update()

    def closed(self) -> None:
        self._closed = True
        self._update()

    # ------------------------------------------------------------- transitions

    def _failure(self, reason: str) -> None:
        self._in_sync = False
        if self._outage_reason is None:
            self._outage_reason = reason
        if not self._started:
            self._failures_before_start += 1
            if self._failures_before_start == 1:
                log.warning("cannot reach Redis at %s (%s); retrying", self.name, reason)
        self._update()

    def _decide(self) -> Health:
        if self._closed:
            return Health.CLOSED
        if not self._started:
            return Health.STARTING
        if not (self.calls_ok and self._feed_up):
            return Health.UNAVAILABLE
        if not self._in_sync:
            return Health.RECOVERING
        return Health.HEALTHY

    def _update(self) -> None:
        old, new = self.state, self._decide()
        if new is old:
            return
        self.state = new
        if new is Health.HEALTHY:
            if self._outage_since is not None:
                log.info("Redis available again after %.1f s; resynchronised",
                         self._clock() - self._outage_since)
            self._outage_since = None
            self._outage_reason = None
        elif old is Health.HEALTHY and new is not Health.CLOSED:
            self.stats.outages += 1
            self._outage_since = self._clock()
            log.warning("Redis unavailable (%s): serving from memory, retrying",
                        self._outage_reason or "unknown")
        else:
            log.debug("Redis store: %s -> %s", old.value, new.value)


def persistence_problem(save: str | None, appendonly: str | None,
                        source: str | None) -> str | None:
    """What a restart of this Redis would lose, judged from `CONFIG GET save`
    and `CONFIG GET appendonly` (None: unknown); None if Redis keeps its data
    on disk or the settings could not be read. `source` names the registered
    friends source, if any."""
    if save is None or appendonly is None:
        return None
    if save.strip() or appendonly.strip().lower() == "yes":
        return None
    if source is not None:
        return ("Redis keeps nothing on disk (save \"\", appendonly no): if it restarts, "
                f"friendships are rebuilt from the {source} and presence from the instances, "
                "but friendships added since the source was written are lost")
    return ("Redis keeps nothing on disk (save \"\", appendonly no): if it restarts, "
            "every friendship that no instance has in memory is lost; run Redis with "
            "persistence (appendonly yes) or give presenced a friends source (--friends)")
