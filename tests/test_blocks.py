"""Blocks through the admin path (no database): hidden at once, restored at once, both ways."""

from __future__ import annotations

import random

import pytest
import trio

from decentraland.social_service.v2 import social_service_v2_pb2 as v2
from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.engine import EngineConfig
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.store.base import BlockChanged
from presenced.store.memory import MemoryStore
from presenced.v1 import presence_pb2 as pb

ALICE, BOB, CAROL = (Identity.generate(random.Random(800 + i)) for i in range(3))


async def start(nursery):
    store = MemoryStore()
    await store.load_friendships([(ALICE.address, BOB.address), (ALICE.address, CAROL.address)])
    config = ServerConfig(port=0, admin_port=0, engine=EngineConfig(offline_grace_ms=100))
    shutdown = trio.Event()
    hub = await nursery.start(lambda task_status: serve(config, shutdown, store=store,
                                                        task_status=task_status))
    return hub, f"ws://127.0.0.1:{hub.listen_port}/", shutdown


async def next_update(sub) -> tuple[str, int]:
    with trio.fail_after(5):
        (update,) = await sub.next_batch()
    return update.address, update.status


@pytest.mark.parametrize("direction", ["alice blocks bob", "bob blocks alice", "both"])
async def test_a_block_hides_a_friend_at_once_and_unblocking_restores(nursery, direction):
    hub, url, shutdown = await start(nursery)
    seen: list[BlockChanged] = []
    for user in (ALICE, BOB):
        hub.watch_blocks(user.address, lambda blocker, added, blocked=user.address:
                         seen.append(BlockChanged(blocker, blocked, added)))
    blocks = {"alice blocks bob": [(ALICE.address, BOB.address)],
              "bob blocks alice": [(BOB.address, ALICE.address)],
              "both": [(ALICE.address, BOB.address), (BOB.address, ALICE.address)]}[direction]
    try:
        async with PresenceClient.connect(url, BOB) as bob, \
                PresenceClient.connect(url, CAROL) as carol, \
                PresenceClient.connect(url, ALICE) as alice:
            await bob.heartbeat("main", 1, 1)
            await carol.heartbeat("main", 2, 2)
            async with alice.subscribe() as alice_updates, bob.subscribe() as bob_updates:
                with trio.fail_after(5):
                    first = await alice_updates.next_batch()
                assert {u.address for u in first} == {BOB.address, CAROL.address}
                assert await next_update(bob_updates) == (ALICE.address, pb.ONLINE)
                assert await hub.add_blocks(blocks) == blocks
                # Each disappears for the other; Carol stays.
                assert await next_update(alice_updates) == (BOB.address, pb.OFFLINE)
                assert await next_update(bob_updates) == (ALICE.address, pb.OFFLINE)
                assert [p.address for p in await alice.get_online_friends()] == [CAROL.address]
                assert await bob.get_online_friends() == []
                # Bob moving is not Alice's business any more.
                await bob.heartbeat("main", 5, 5)
                await carol.heartbeat("main", 3, 3)
                assert await next_update(alice_updates) == (CAROL.address, pb.ONLINE)
                assert await hub.remove_blocks(blocks) == blocks
                assert await next_update(alice_updates) == (BOB.address, pb.ONLINE)
                assert await next_update(bob_updates) == (ALICE.address, pb.ONLINE)
        assert seen == [BlockChanged(*b, True) for b in blocks] + [
            BlockChanged(*b, False) for b in blocks]
    finally:
        shutdown.set()


async def test_a_block_hides_a_friend_from_the_v2_module_too(nursery):
    hub, url, shutdown = await start(nursery)
    try:
        async with PresenceClient.connect(url, BOB) as bob, \
                PresenceClient.connect(url, ALICE) as alice:
            await bob.heartbeat("main", 1, 1)
            ids = await alice.load_module("SocialService")
            updates = await alice.open_stream(ids["SubscribeToFriendConnectivityUpdates"],
                                              v2.FriendConnectivityUpdate.FromString)
            friendships = await alice.open_stream(ids["SubscribeToFriendshipUpdates"],
                                                  v2.FriendshipUpdate.FromString)

            async def friends() -> list[str]:
                raw = await alice.call(ids["GetFriends"], b"")
                response = v2.PaginatedFriendsProfilesResponse.FromString(raw)
                return sorted(f.address for f in response.friends)

            async def next_status() -> tuple[str, int]:
                with trio.fail_after(5):
                    item = await updates.next_batch()
                return item.friend.address, item.status

            assert await next_status() == (BOB.address, v2.ONLINE)
            assert await friends() == sorted([BOB.address, CAROL.address])
            await hub.add_blocks([(BOB.address, ALICE.address)])
            assert await next_status() == (BOB.address, v2.OFFLINE)
            with trio.fail_after(5):
                ended = await friendships.next_batch()
            assert ended.WhichOneof("update") == "delete"
            assert ended.delete.user.address == BOB.address
            assert await friends() == [CAROL.address]
            await hub.remove_blocks([(BOB.address, ALICE.address)])
            assert await next_status() == (BOB.address, v2.ONLINE)
            with trio.fail_after(5):
                back = await friendships.next_batch()
            assert back.WhichOneof("update") == "accept"
            assert await friends() == sorted([BOB.address, CAROL.address])
    finally:
        shutdown.set()
