"""What the profile source decides, without I/O: what is cached, what to fetch, and when.

Pure and synchronous; every method takes the time as Unix milliseconds. The I/O around it
(`presenced.profiles.source`) asks it for the next batch, sends the request, and reports the
answer or the failure back.

- A lookup never waits: it answers from the cache (a stale entry too, while a fresh one is
  fetched) and queues a miss for fetching.
- Misses are fetched in batches: a batch leaves when it is full or its oldest address has
  waited `linger_ms`, so a burst of misses (a fan-out, a friends list) costs one request.
- Everything is bounded: cached entries (least recently used evicted), addresses waiting to be
  fetched (further misses are not queued; a later lookup queues them again) and batches in
  flight.
- A user the profile server does not know is cached as "no profile" like any answer; a failed
  request caches nothing but holds its addresses back for `retry_ms`, so a server that is down
  is not hammered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CacheConfig", "Profile", "ProfileCache"]


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's public profile as friends lists show it."""

    address: str
    name: str = ""
    has_claimed_name: bool = False
    picture_url: str = ""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl_ms: int = 10 * 60_000
    max_entries: int = 100_000
    # Addresses waiting to be fetched (not yet in a batch).
    max_waiting: int = 10_000
    batch_size: int = 100
    linger_ms: int = 20
    max_in_flight: int = 4
    # After a failed request, its addresses are not asked again for this long.
    retry_ms: int = 30_000


class _Entry:
    __slots__ = ("profile", "expires_ms")

    def __init__(self, profile: Profile | None, expires_ms: int) -> None:
        self.profile = profile
        self.expires_ms = expires_ms


class ProfileCache:
    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Address -> when it started waiting; in arrival order.
        self._waiting: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._batches_in_flight = 0
        # Address -> until when a failed address is not asked again.
        self._held: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.not_queued = 0

    # ---------------------------------------------------------------- lookups

    def get(self, address: str, now_ms: int) -> Profile | None:
        """The cached profile (possibly stale) or None; a miss or a stale entry is queued."""
        entry = self._entries.get(address)
        if entry is None:
            self.misses += 1
            self._want(address, now_ms)
            return None
        self._entries.move_to_end(address)
        self.hits += 1
        if entry.expires_ms <= now_ms:
            self._want(address, now_ms)
        return entry.profile

    def known(self, address: str, now_ms: int) -> bool:
        """Whether a fresh answer (a profile or "none") is cached."""
        entry = self._entries.get(address)
        return entry is not None and entry.expires_ms > now_ms

    def peek(self, address: str) -> Profile | None:
        """The cached profile, stale or not, without counting or queueing anything."""
        entry = self._entries.get(address)
        return None if entry is None else entry.profile

    def pending(self, address: str) -> bool:
        """Whether an answer for `address` is on its way (queued or in flight)."""
        return address in self._waiting or address in self._in_flight

    def _want(self, address: str, now_ms: int) -> None:
        if address in self._waiting or address in self._in_flight:
            return
        held = self._held.get(address)
        if held is not None:
            if held > now_ms:
                return
            del self._held[address]
        if len(self._waiting) >= self.config.max_waiting:
            self.not_queued += 1
            return
        self._waiting[address] = now_ms

    # --------------------------------------------------------------- batching

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def batches_in_flight(self) -> int:
        return self._batches_in_flight

    def due_ms(self) -> int | None:
        """When the next batch may leave (if a slot is free), or None if nothing waits."""
        if not self._waiting:
            return None
        if len(self._waiting) >= self.config.batch_size:
            return 0
        return next(iter(self._waiting.values())) + self.config.linger_ms

    def next_batch(self, now_ms: int) -> list[str] | None:
        """The addresses of a request to send now, or None (nothing due, or no slot free)."""
        config = self.config
        if self._batches_in_flight >= config.max_in_flight:
            return None
        due = self.due_ms()
        if due is None or due > now_ms:
            return None
        batch: list[str] = []
        waiting = self._waiting
        for address in waiting:
            batch.append(address)
            if len(batch) == config.batch_size:
                break
        for address in batch:
            del waiting[address]
        self._in_flight.update(batch)
        self._batches_in_flight += 1
        return batch

    def answered(
        self, batch: list[str], profiles: dict[str, Profile], now_ms: int
    ) -> None:
        """The profile server answered `batch`: cache each address (absent ones as "none")."""
        self._batches_in_flight -= 1
        expires = now_ms + self.config.ttl_ms
        entries = self._entries
        for address in batch:
            self._in_flight.discard(address)
            entries[address] = _Entry(profiles.get(address), expires)
            entries.move_to_end(address)
        while len(entries) > self.config.max_entries:
            entries.popitem(last=False)

    def failed(self, batch: list[str], now_ms: int) -> None:
        """The request for `batch` failed: keep what was cached, ask again after retry_ms."""
        self._batches_in_flight -= 1
        until = now_ms + self.config.retry_ms
        held = self._held
        for address in batch:
            self._in_flight.discard(address)
            held[address] = until
        # Held addresses are few (batches in flight x batch size per retry period) but a long
        # outage must not let them pile up: forget the ones whose hold is over.
        if len(held) > self.config.max_waiting:
            for address in [a for a, t in held.items() if t <= now_ms]:
                del held[address]
            while len(held) > self.config.max_waiting:
                del held[next(iter(held))]

    def __len__(self) -> int:
        return len(self._entries)
