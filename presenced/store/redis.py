"""The shared Redis store (`presenced serve --redis-url …`).

The implementation is split by concern: `redis_store` (the `Store`),
`redis_scripts` (Lua and key names), `redis_codec` (what goes over the
wire), `redis_bridge` (the pub/sub listener thread). Design: docs/redis.md.
"""

from presenced.store.redis_store import RedisStore

__all__ = ["RedisStore"]
