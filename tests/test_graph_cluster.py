"""Friendships, blocks and social status across two instances sharing one Redis store.

Two servers in-process over real WebSockets, one private redis-server (the
shared store, and the social service's events channel), and for the
database tests a PostgreSQL database of our own: what a fleet beside a
social service does.
"""

from __future__ import annotations

import json
import random
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis
import trio

from decentraland.social_service.v2 import social_service_v2_pb2 as v2
from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.engine import EngineConfig
from presenced.graph.social_events import FRIENDSHIP_CHANNEL, STATUS_CHANNEL
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.v1 import presence_pb2 as pb
from tests.support.waits import wait_until

ALICE, BOB, CAROL = (Identity.generate(random.Random(900 + i)) for i in range(3))
NEVER = 3600.0


@asynccontextmanager
async def two_instances(nursery, redis_url: str, **overrides):
    config = ServerConfig(port=0, admin_port=0, redis_url=redis_url,
                          redis_flush_interval_s=0.01,
                          engine=EngineConfig(offline_grace_ms=100))
    config = replace(config, **overrides)
    shutdown = trio.Event()
    hubs = []
    for _ in range(2):
        hubs.append(await nursery.start(
            lambda task_status: serve(config, shutdown, task_status=task_status)))
    try:
        yield [(hub, f"ws://127.0.0.1:{hub.listen_port}/") for hub in hubs]
    finally:
        shutdown.set()


async def known_at(hub, who, realm: str) -> None:
    """Wait until `hub` has heard of `who` in `realm` (their heartbeat on the other instance):
    a subscription opened before would get their login and their position as two updates."""
    def known() -> bool:
        p = hub.engine.presence(who.address)
        return p is not None and p.position is not None and p.position.realm == realm
    await wait_until(known, timeout=10)


async def next_update(sub) -> tuple[str, int]:
    with trio.fail_after(10):
        batch = await sub.next_batch()
    assert batch is not None and len(batch) == 1, batch
    return batch[0].address, batch[0].status


@pytest.mark.parametrize("where", ["blocked on the subscriber's instance",
                                   "blocked on the friend's instance"])
async def test_blocks_both_ways_both_modules_across_two_instances(nursery, redis_server, where):
    async with two_instances(nursery, redis_server.url) as ((hub_a, url_a), (hub_b, url_b)):
        await hub_a.add_friendships([(ALICE.address, BOB.address)])
        blocking_hub = hub_a if where.endswith("subscriber's instance") else hub_b
        async with PresenceClient.connect(url_b, BOB) as bob, \
                PresenceClient.connect(url_a, ALICE) as alice:
            await bob.heartbeat("main", 1, 1)
            await known_at(hub_a, BOB, "main")
            ids = await alice.load_module("SocialService")
            v2_updates = await alice.open_stream(ids["SubscribeToFriendConnectivityUpdates"],
                                                 v2.FriendConnectivityUpdate.FromString)
            async with alice.subscribe() as updates:
                assert await next_update(updates) == (BOB.address, pb.ONLINE)
                with trio.fail_after(10):
                    assert (await v2_updates.next_batch()).status == v2.ONLINE
                for blocker, blocked in [(ALICE, BOB), (BOB, ALICE)]:
                    await blocking_hub.add_blocks([(blocker.address, blocked.address)])
                    assert await next_update(updates) == (BOB.address, pb.OFFLINE)
                    with trio.fail_after(10):
                        gone = await v2_updates.next_batch()
                    assert (gone.friend.address, gone.status) == (BOB.address, v2.OFFLINE)
                    assert await alice.get_online_friends() == []
                    await blocking_hub.remove_blocks([(blocker.address, blocked.address)])
                    assert await next_update(updates) == (BOB.address, pb.ONLINE)
                    with trio.fail_after(10):
                        back = await v2_updates.next_batch()
                    assert (back.friend.address, back.status) == (BOB.address, v2.ONLINE)
                    assert [f.address for f in await alice.get_online_friends()] == [
                        BOB.address]


async def test_the_database_source_on_two_instances_applies_each_change_once(
    nursery, redis_server, social_db
):
    async with two_instances(nursery, redis_server.url, friends_db_url=social_db.url,
                             social_events_url=redis_server.url,
                             friends_db_reconcile_interval_s=NEVER,
                             friends_db_full_interval_s=NEVER) as ((hub_a, url_a),
                                                                    (hub_b, url_b)):
        async with PresenceClient.connect(url_a, BOB) as bob, \
                PresenceClient.connect(url_b, ALICE) as alice:
            await bob.heartbeat("main", 1, 1)
            await known_at(hub_b, BOB, "main")
            async with alice.subscribe() as updates:
                social_db.befriend(ALICE.address, BOB.address)
                with redis.Redis.from_url(redis_server.url) as r:
                    r.publish(FRIENDSHIP_CHANNEL, json.dumps(
                        {"id": "x", "from": ALICE.address, "to": BOB.address,
                         "action": "accept", "timestamp": 1}))
                assert await next_update(updates) == (BOB.address, pb.ONLINE)
                sources = [hub_a.friends_db, hub_b.friends_db]

                def event_adds() -> int:
                    return sum(s.stats.applied[("event", "friendship", "add")]
                               for s in sources)

                # Both heard the event; the store applied it once. Wait for
                # both outcomes: the instance whose call changed the store
                # may count it after the other has counted "already" (each
                # counts when its own call returns from its thread).
                await wait_until(lambda: event_adds() + sum(s.stats.already
                                                            for s in sources) >= 2,
                                 timeout=10)
                assert event_adds() == 1, [s.stats for s in sources]
                assert sum(s.stats.already for s in sources) == 1
                # Deactivated without an event: each instance's pass finds it.
                social_db.unfriend(ALICE.address, BOB.address)
                assert await hub_a.friends_db.reconcile_now()
                assert await next_update(updates) == (BOB.address, pb.OFFLINE)
                assert await hub_b.friends_db.reconcile_now()
                social_db.befriend(BOB.address, ALICE.address)
                assert await hub_b.friends_db.reconcile_now()
                assert await next_update(updates) == (BOB.address, pb.ONLINE)
                assert await hub_a.friends_db.reconcile_now()
                # Nothing more reaches the subscriber.
                with trio.move_on_after(0.5):
                    extra = await updates.next_batch()
                    pytest.fail(f"unexpected update {extra}")
        assert sum(s.stats.already for s in sources) == 3


async def test_social_status_is_published_once_across_instances(nursery, redis_server):
    r = redis.Redis.from_url(redis_server.url)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(STATUS_CHANNEL)
    seen: list[dict] = []

    async def drain(seconds: float) -> None:
        with trio.move_on_after(seconds):
            while True:
                m = await trio.to_thread.run_sync(pubsub.get_message, True, 0.05)
                if m is not None:
                    seen.append(json.loads(m["data"]))

    try:
        async with two_instances(nursery, redis_server.url,
                                 social_events_url=redis_server.url,
                                 publish_social_status=True) as ((_, url_a), (_, url_b)):
            async with PresenceClient.connect(url_a, CAROL) as on_a:
                await on_a.heartbeat("main", 1, 1)
                async with PresenceClient.connect(url_b, CAROL) as on_b:
                    await on_b.heartbeat("main", 2, 2)
                    await drain(0.5)
                    assert seen == [{"address": CAROL.address, "status": 0}]
            # Both connections gone: offline once, after the grace.
            await drain(1.0)
        assert seen == [{"address": CAROL.address, "status": 0},
                        {"address": CAROL.address, "status": 1}]
    finally:
        pubsub.close()
        r.close()
