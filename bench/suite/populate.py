"""Fill a Redis with online users and their friendships, as presenced instances would.

Everything is written through `RedisStore` itself, the code every instance
runs: presence through its batched flush script (state, seen, the owner's
own set, beacons, sequence numbers, epoch), friendships through its
friendship script. So the data is exactly what a cold-starting instance
finds in production, in the format docs/redis.md describes.
"""

from __future__ import annotations

import time

import trio

from presenced.model import Position, Presence, PresenceWrite
from presenced.server.config import ServerConfig
from presenced.socialgraph import SocialGraph
from presenced.store.redis_store import RedisStore

REALMS = ("main", "hela", "dg")
FRIENDSHIP_BATCH = 20_000


def address(i: int) -> str:
    """A well-formed, distinct address (deriving 100k real keys would take minutes)."""
    return f"0x{i:040x}"


def presence(i: int, now_ms: int) -> Presence:
    return Presence(address(i), True,
                    Position(REALMS[i % len(REALMS)], i % 300 - 150, (i // 300) % 300 - 150),
                    now_ms)


async def write_presence(store: RedisStore, indices: range, now_ms: int) -> None:
    for i in indices:
        store.write(PresenceWrite(presence(i, now_ms), True))
    await store.flush()


async def _populate(url: str, users: int, avg_friends: float, seed: int,
                    instance: str) -> dict:
    t0 = time.monotonic()
    graph = SocialGraph.generate(users, avg_friends, seed)
    t_graph = time.monotonic() - t0
    store = RedisStore(url, ServerConfig().redis_store_config(), instance_id=instance)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, lambda events: None)
        t1 = time.monotonic()
        await write_presence(store, range(users), int(time.time() * 1000))
        t_presence = time.monotonic() - t1
        t2 = time.monotonic()
        edges = graph.edges
        for start in range(0, len(edges), FRIENDSHIP_BATCH):
            await store.add_friendships([(address(a), address(b))
                                         for a, b in edges[start:start + FRIENDSHIP_BATCH]])
        t_friends = time.monotonic() - t2
        nursery.cancel_scope.cancel()
    # Leaves its users online (no retire), as an instance that still holds them.
    await store.aclose(leave=False)
    return {"users_online": users, "friendships": len(graph.edges),
            "graph_s": round(t_graph, 2), "presence_s": round(t_presence, 2),
            "friendships_s": round(t_friends, 2)}


def populate(url: str, users: int, avg_friends: float = 20.0, seed: int = 1,
             instance: str = "populate") -> dict:
    return trio.run(_populate, url, users, avg_friends, seed, instance)
