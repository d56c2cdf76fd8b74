"""The pub/sub listener: a plain thread reading Redis, handing batches to trio.

redis-py is synchronous, so the subscriber connection lives in a thread of
its own that loops on `get_message(timeout=…)` and decodes messages there
(off the trio thread). Messages go to trio in batches through
`trio.from_thread.run_sync`, which waits until trio took the batch: a trio
thread that falls behind stops the reader, Redis buffers for us up to its
`client-output-buffer-limit pubsub` and then drops the connection, which we
notice and repair with a resync. Batches, not single messages, because a
thread-to-trio hop costs ~50-80 µs (stack notes §1b: 223k msg/s batched vs
13k/s one by one).

The connection is made without redis-py's silent reconnect: PubSub would
otherwise reconnect and resubscribe on its own, and messages published in
between would be lost without anyone knowing. Every disconnect is reported
to trio (`on_lost`), and every new subscription too (`on_subscribed`), which
is when the store resynchronises.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
import trio

from presenced.store.redis_codec import Message, MessageError, decode_message

log = logging.getLogger("presenced.store.redis")

# Messages per hand-off to trio; larger batches amortise the hop, smaller
# ones keep each trio step short.
BATCH_MAX = 500
# How long one `get_message` waits: bounds how long a stop takes.
POLL_S = 0.2


class Listener:
    """Owns the subscriber connection and its thread.

    `on_batch`, `on_subscribed` and `on_lost` run on the trio thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        channels: tuple[str, ...],
        me: str,
        token: trio.lowlevel.TrioToken,
        *,
        on_batch: Callable[[list[Message]], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[str], None],
        backoff_min_s: float,
        backoff_max_s: float,
    ) -> None:
        self._client = client
        self._channels = channels
        self._me = me
        self._token = token
        self._on_batch = on_batch
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        # Set from trio to make the thread drop its connection and reconnect
        # (the auditor saw the feed go silent).
        self._reconnect = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presenced-redis-listener",
                                        daemon=True)
        self.messages = 0
        self.bad_messages = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reconnect(self) -> None:
        self._reconnect.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------- the thread

    def _to_trio(self, fn: Callable[..., None], *args: object) -> bool:
        """Run `fn` on the trio thread and wait; False once trio is gone."""
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
            batch: list[Message] = []
            try:
                self._subscribe(pubsub)
                if not self._to_trio(self._on_subscribed):
                    return
                delay = 0.0
                self._reconnect.clear()
                self._read(pubsub, batch)
            except (redis.RedisError, OSError) as e:
                # Hand over what arrived before the failure: those messages are
                # good, and dropping them would only widen the gap to repair.
                if batch and not self._to_trio(self._on_batch, batch):
                    return
                if self._stop.is_set():
                    return
                # Closed at once: redis-py reconnects and subscribes once more
                # as it reports the failure, and that connection would
                # otherwise stay subscribed, unread, while we back off.
                _close(pubsub)
                if not self._to_trio(self._on_lost, f"{type(e).__name__}: {e}"):
                    return
                delay = min(self.backoff_max_s, max(self.backoff_min_s, delay * 2))
                self._stop.wait(delay)
            finally:
                _close(pubsub)

    def _subscribe(self, pubsub: redis.client.PubSub) -> None:
        # One SUBSCRIBE for every channel: Redis takes them in one step, which
        # the publishing scripts' count of listeners relies on.
        pubsub.subscribe(*self._channels)
        # Wait for the confirmations: only from then on are messages ours, and
        # only then may the store read a snapshot without missing anything.
        timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout") or 5.0
        waited = 0.0
        confirmed = 0
        while not self._stop.is_set():
            m = pubsub.get_message(timeout=POLL_S)
            if m is not None and m["type"] == "subscribe":
                confirmed += 1
                if confirmed == len(self._channels):
                    return
                continue
            waited += POLL_S
            if waited >= timeout:
                raise redis.TimeoutError("no subscribe confirmation")

    def _read(self, pubsub: redis.client.PubSub, batch: list[Message]) -> None:
        me = self._me
        while not self._stop.is_set():
            if self._reconnect.is_set():
                raise redis.ConnectionError("feed silent: reconnecting")
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
            self.messages += 1
            try:
                msg = decode_message(m["data"], me)
            except (MessageError, ValueError, UnicodeDecodeError) as e:
                self.bad_messages += 1
                log.warning("ignoring an unreadable change message: %s", e)
                continue
            if msg is None:
                continue
            batch.append(msg)
            if len(batch) >= BATCH_MAX:
                handed = batch[:]
                batch.clear()
                if not self._to_trio(self._on_batch, handed):
                    return


def _close(pubsub: redis.client.PubSub) -> None:
    try:
        pubsub.close()
    except Exception:
        # Closing a connection that already broke may fail too; there is
        # nothing left to release.
        pass
