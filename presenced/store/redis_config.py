"""What the Redis store needs to know, without depending on the server.

The server builds it from its own settings with
`ServerConfig.redis_store_config()`; the defaults below are copies of
today's defaults there (`ServerConfig` and the engine's `EngineConfig`),
kept here so the store imports neither the server nor the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    # A user not heard from for this long expires (EngineConfig.ttl_ms).
    ttl_ms: int = 120_000
    # How long a disconnected user stays online (EngineConfig.offline_grace_ms).
    offline_grace_ms: int = 5_000
    # The engine writes a user kept alive only by pings this often
    # (EngineConfig.touch_write_interval_ms).
    touch_write_interval_ms: int = 40_000
    # Flushes go through a connection driven from the trio thread (presenced/store/
    # redis_direct.py) instead of a worker thread; False: redis-py in a thread, as every
    # other call (TLS and Unix-socket URLs always are).
    direct_flush: bool = True
    # Connections to Redis, and the timeout on each call.
    pool_size: int = 16
    socket_timeout_s: float = 5.0
    # Presence writes are batched into pipelines. A change other instances must hear of (online,
    # moved, offline) is written as soon as the previous flush is `flush_min_gap_s` old, so it
    # waits for no timer while Redis is idle and batches with others under load; writes that
    # only refresh a user wait at most `flush_interval_s`.
    flush_interval_s: float = 0.05
    flush_min_gap_s: float = 0.01
    # Full comparison with Redis this often, to repair anything missed.
    resync_interval_s: float = 30.0
    # Reconnect backoff (seconds) for calls and for the change feed: from the
    # minimum, doubling up to the maximum.
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0
