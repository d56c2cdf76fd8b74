"""`--publish-social-status`: online/offline transitions on the social service's channel.

A social-service fleet can take its presence from presenced (with its own
peer-tracking publisher turned off): every transition of a user between
online anywhere and offline everywhere is published once, across all
instances, on `friend.status.updates` in the service's format. Who sees a
transition is the store's business (`Store.on_status`): the embedded store
sees all of them; the Redis store reports those its flush caused.

Transitions are queued (bounded) and published in pipelined batches from a
worker thread; while Redis is away they wait, and past the bound the oldest
are dropped and counted (a subscriber then has a stale status for those
users until their next transition).
"""

from __future__ import annotations

import logging
from collections import deque

import redis
import trio

from presenced.graph.social_events import STATUS_CHANNEL, status_message

log = logging.getLogger("presenced.graph.status")

# Transitions waiting at most (a Redis outage); beyond, the oldest are dropped.
MAX_PENDING = 100_000
# Published per pipeline.
BATCH = 1000
# A transition waits at most this long for its batch.
FLUSH_INTERVAL_S = 0.02


class StatusPublisher:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            client_name="presenced-status", protocol=2)
        self._pending: deque[tuple[str, bool]] = deque()
        self._wake = trio.Event()
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self.healthy = True
        self._backoff = 0.0

    def publish(self, address: str, online: bool) -> None:
        """Queue one transition (from the trio thread; never blocks)."""
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            pending.popleft()
            self.dropped += 1
        pending.append((address, online))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                # Let transitions that happen together go in one batch.
                await trio.sleep(FLUSH_INTERVAL_S)
                while self._pending:
                    batch = [self._pending.popleft()
                             for _ in range(min(BATCH, len(self._pending)))]
                    try:
                        await trio.to_thread.run_sync(self._send, batch,
                                                      abandon_on_cancel=True)
                    except (redis.RedisError, OSError) as e:
                        self._failed(batch, e)
                        await trio.sleep(self._backoff)
                        continue
                    self.published += len(batch)
                    if not self.healthy:
                        log.info("publishing social status again")
                    self.healthy = True
                    self._backoff = 0.0
        finally:
            self._redis.close()

    def _send(self, batch: list[tuple[str, bool]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for address, online in batch:
            pipe.publish(STATUS_CHANNEL, status_message(address, online))
        pipe.execute()

    def _failed(self, batch: list[tuple[str, bool]], e: BaseException) -> None:
        self.errors += 1
        # Put them back in front, in order; the bound still holds.
        self._pending.extendleft(reversed(batch))
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._backoff = min(5.0, max(0.1, self._backoff * 2))
        if self.healthy:
            log.warning("cannot publish social status (%s: %s); retrying", type(e).__name__, e)
        self.healthy = False
