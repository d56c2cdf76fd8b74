"""The social service's Redis channels, followed by a plain thread.

redis-py is synchronous, so the subscriber connection lives in a thread
that loops on `get_message(timeout=…)`, parses messages there (off the trio
thread) and hands batches of desired states to trio. Every (re)subscription
is reported (`on_subscribed`): events published while the subscription was
down are lost, and the source answers with a reconciliation pass. Messages
that are not what the social service publishes are counted and logged,
never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import trio

from presenced.graph.social_events import CHANNELS, EventError, Wanted, parse_event

log = logging.getLogger("presenced.graph.events")

BATCH_MAX = 500
POLL_S = 0.2
# Malformed messages logged at most this often (each is counted).
LOG_EVERY_S = 10.0


def social_redis(url: str, timeout_s: float) -> redis.Redis:
    """A client for the social service's Redis (no silent retries: we resubscribe)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                client_name="presenced-social", protocol=2)


class EventsListener:
    """Owns the subscriber connection to the social service's Redis and its thread.

    `on_batch`, `on_subscribed` and `on_lost` run on the trio thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        token: trio.lowlevel.TrioToken,
        *,
        on_batch: Callable[[list[Wanted]], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[str], None],
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._client = client
        self._token = token
        self._on_batch = on_batch
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presenced-social-events",
                                        daemon=True)
        # Read from trio for metrics (ints written by one thread).
        self.received: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        self.ignored = 0
        self.malformed = 0
        self._last_log = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _to_trio(self, fn: Callable[..., None], *args: object) -> bool:
        try:
            trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            self._stop.set()
            return False
        return True

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            batch: list[Wanted] = []
            try:
                self._subscribe(pubsub)
                if not self._to_trio(self._on_subscribed):
                    return
                delay = 0.0
                self._read(pubsub, batch)
            except (redis.RedisError, OSError) as e:
                if batch and not self._to_trio(self._on_batch, batch):
                    return
                if self._stop.is_set():
                    return
                if not self._to_trio(self._on_lost, f"{type(e).__name__}: {e}"):
                    return
                delay = min(self.backoff_max_s, max(self.backoff_min_s, delay * 2))
                self._stop.wait(delay)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    # A broken connection may fail to close; nothing is left to free.
                    pass

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.subscribe(*CHANNELS)
        confirmed = 0
        kwargs = self._client.connection_pool.connection_kwargs
        timeout = kwargs.get("socket_timeout") or 5.0
        waited = 0.0
        while not self._stop.is_set() and confirmed < len(CHANNELS):
            m = pubsub.get_message(timeout=POLL_S)
            if m is not None and m["type"] == "subscribe":
                confirmed += 1
                continue
            waited += POLL_S
            if waited >= timeout:
                raise redis.TimeoutError("no subscribe confirmation")

    def _read(self, pubsub: Any, batch: list[Wanted]) -> None:
        while not self._stop.is_set():
            m = pubsub.get_message(timeout=0 if batch else POLL_S)
            if m is None:
                if batch:
                    handed = batch[:]
                    batch.clear()
                    if not self._to_trio(self._on_batch, handed):
                        return
                continue
            if m["type"] != "message":
                continue
            channel = m["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            self.received[channel] = self.received.get(channel, 0) + 1
            try:
                wanted = parse_event(channel, m["data"])
            except EventError as e:
                self.malformed += 1
                self._log_malformed(channel, e)
                continue
            if wanted is None:
                self.ignored += 1
                continue
            batch.append(wanted)
            if len(batch) >= BATCH_MAX:
                handed = batch[:]
                batch.clear()
                if not self._to_trio(self._on_batch, handed):
                    return

    def _log_malformed(self, channel: str, error: EventError) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("ignoring a malformed message on %s (%d so far): %s",
                        channel, self.malformed, error)
