"""The Store contract, run against every store: MemoryStore and RedisStore.

Whatever the engine and the hub rely on is here; cross-instance behaviour,
which only the Redis store has, is in tests/test_redis_store.py.
"""

from __future__ import annotations

import pytest

from presenced.engine import EngineConfig
from presenced.model import Position, Presence, PresenceLeave, PresenceWrite
from presenced.server.config import ServerConfig
from presenced.store.base import BlockChanged, BlockLists, FriendshipChanged, Store, StoreEvent
from presenced.store.memory import MemoryStore
from tests.support.waits import now_ms

TTL = 1_000


def online(address: str, at: int, realm: str | None = "main", x: int = 1, y: int = 2) -> Presence:
    position = Position(realm, x, y) if realm is not None else None
    return Presence(address, True, position, at)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> object:
    if request.param == "redis":
        return request.getfixturevalue("redis_server")
    return None


class Sink:
    """What a store reports to its engine."""

    def __init__(self) -> None:
        self.events: list[StoreEvent] = []

    def __call__(self, events: list[StoreEvent]) -> None:
        self.events.extend(events)

    def friendships(self) -> list[FriendshipChanged]:
        return [e for e in self.events if isinstance(e, FriendshipChanged)]


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def store(backend, nursery, sink):
    if backend is None:
        s = MemoryStore("me")
        await nursery.start(s.run, sink)
        yield s
        await s.aclose()
        return
    from presenced.store.redis_store import RedisStore

    # The engine refreshes users kept alive by pings this often; the Redis
    # store leaves a live owner's users to it for twice that.
    engine = EngineConfig(touch_write_interval_ms=TTL // 2)
    config = ServerConfig(redis_flush_interval_s=0.01, engine=engine).redis_store_config()
    s = RedisStore(backend.url, config, instance_id="me")
    await nursery.start(s.run, sink)
    yield s
    await s.aclose()


# ----------------------------------------------------------------- friendships


async def test_add_friendships_returns_only_new_pairs_normalized(store: Store):
    added = await store.add_friendships([("0xb", "0xa"), ("0xa", "0xc"), ("0xa", "0xa")])
    assert sorted(added.changed) == [("0xa", "0xb"), ("0xa", "0xc")]
    assert sorted(added.events, key=lambda e: e.b) == [
        FriendshipChanged("0xa", "0xb", True), FriendshipChanged("0xa", "0xc", True)]
    again = await store.add_friendships([("0xa", "0xb"), ("0xb", "0xa")])
    assert again.changed == [] and again.events == [] and not again
    again = await store.add_friendships([("0xc", "0xd"), ("0xd", "0xc")])
    assert again.changed == [("0xc", "0xd")]


async def test_friends_of_is_symmetric(store: Store):
    await store.add_friendships([("0xa", "0xb"), ("0xa", "0xc")])
    assert await store.friends_of("0xa") == {"0xb", "0xc"}
    assert await store.friends_of("0xb") == {"0xa"}
    assert await store.friends_of("0xnobody") == frozenset()


async def test_remove_friendships_returns_only_existing_pairs(store: Store):
    await store.add_friendships([("0xa", "0xb"), ("0xa", "0xc")])
    # Read once so that a caching store has something to keep current.
    assert await store.friends_of("0xb") == {"0xa"}
    removed = await store.remove_friendships([("0xb", "0xa"), ("0xa", "0xz"), ("0xa", "0xa")])
    assert removed.changed == [("0xa", "0xb")]
    assert removed.events == [FriendshipChanged("0xa", "0xb", False)]
    assert (await store.remove_friendships([("0xa", "0xb")])).changed == []
    assert await store.friends_of("0xa") == {"0xc"}
    assert await store.friends_of("0xb") == frozenset()


async def test_friends_of_sees_own_changes_after_caching(store: Store):
    assert await store.friends_of("0xa") == frozenset()
    await store.add_friendships([("0xa", "0xb")])
    assert await store.friends_of("0xa") == {"0xb"}
    await store.remove_friendships([("0xb", "0xa")])
    assert await store.friends_of("0xa") == frozenset()


async def test_load_friendships_is_idempotent(store: Store, sink: Sink):
    await store.add_friendships([("0xa", "0xb")])
    assert await store.friends_of("0xc") == frozenset()  # cached by a caching store
    pairs = [("0xa", "0xb"), ("0xb", "0xc"), ("0xc", "0xd"), ("0xd", "0xd")]
    assert await store.load_friendships(pairs) == 2
    assert await store.friends_of("0xc") == {"0xb", "0xd"}
    assert await store.friends_of("0xa") == {"0xb"}
    assert await store.load_friendships(iter(pairs)) == 0
    # A load precedes this instance's sessions: its engine is not told.
    assert sink.friendships() == []


async def test_load_friendships_in_bulk(store: Store):
    # More than one script call and more than one pipeline of the Redis store.
    users = [f"0x{i:040x}" for i in range(45_001)]
    pairs = list(zip(users, users[1:], strict=False))
    assert await store.load_friendships(pairs) == 45_000
    assert await store.friends_of(users[30_000]) == {users[29_999], users[30_001]}
    assert await store.load_friendships(pairs) == 0


async def test_stats_say_whether_the_store_is_shared(store: Store, backend):
    assert store.stats.shared is (backend is not None)


# ---------------------------------------------------------------------- blocks


async def test_block_between_friends_ends_the_effective_friendship(store: Store):
    await store.add_friendships([("0xa", "0xb"), ("0xa", "0xc")])
    changes = await store.add_blocks([("0xb", "0xa")])
    assert changes.changed == [("0xb", "0xa")]
    assert changes.events == [FriendshipChanged("0xa", "0xb", False),
                              BlockChanged("0xb", "0xa", True)]
    # Hidden both ways, whoever blocked.
    assert await store.friends_of("0xa") == {"0xc"}
    assert await store.friends_of("0xb") == frozenset()
    assert await store.block_status("0xa", "0xb") == (False, True)
    assert await store.block_status("0xb", "0xa") == (True, False)
    assert await store.blocks_of("0xb") == BlockLists(frozenset({"0xa"}), frozenset())
    assert await store.blocks_of("0xa") == BlockLists(frozenset(), frozenset({"0xb"}))
    # Idempotent.
    again = await store.add_blocks([("0xb", "0xa")])
    assert again.changed == [] and again.events == []


async def test_unblocking_restores_the_friendship_only_after_the_last_block(store: Store):
    await store.add_friendships([("0xa", "0xb")])
    await store.add_blocks([("0xa", "0xb")])
    # The second direction changes the blocks, not the (already hidden) friendship.
    both = await store.add_blocks([("0xb", "0xa")])
    assert both.events == [BlockChanged("0xb", "0xa", True)]
    one = await store.remove_blocks([("0xa", "0xb")])
    assert one.changed == [("0xa", "0xb")]
    assert one.events == [BlockChanged("0xa", "0xb", False)]
    assert await store.friends_of("0xa") == frozenset()
    last = await store.remove_blocks([("0xb", "0xa"), ("0xb", "0xa"), ("0xz", "0xa")])
    assert last.changed == [("0xb", "0xa")]
    assert last.events == [BlockChanged("0xb", "0xa", False),
                           FriendshipChanged("0xa", "0xb", True)]
    assert await store.friends_of("0xa") == {"0xb"}
    assert await store.friends_of("0xb") == {"0xa"}
    assert await store.block_status("0xa", "0xb") == (False, False)


async def test_friendships_changed_under_a_block_have_no_effective_event(store: Store):
    await store.add_blocks([("0xa", "0xb")])
    added = await store.add_friendships([("0xb", "0xa")])
    assert added.changed == [("0xa", "0xb")] and added.events == []
    assert await store.friends_of("0xa") == frozenset()
    removed = await store.remove_friendships([("0xa", "0xb")])
    assert removed.changed == [("0xa", "0xb")] and removed.events == []
    # Unblocking restores nothing: the friendship is gone.
    unblocked = await store.remove_blocks([("0xa", "0xb")])
    assert unblocked.events == [BlockChanged("0xa", "0xb", False)]
    assert await store.friends_of("0xa") == frozenset()


async def test_blocks_without_friendship_and_self_blocks(store: Store):
    changes = await store.add_blocks([("0xa", "0xb"), ("0xa", "0xa"), ("0xa", "0xc")])
    assert changes.changed == [("0xa", "0xb"), ("0xa", "0xc")]
    assert changes.events == [BlockChanged("0xa", "0xb", True), BlockChanged("0xa", "0xc", True)]
    assert await store.blocks_of("0xa") == BlockLists(frozenset({"0xb", "0xc"}), frozenset())
    assert await store.blocks_of("0xnobody") == BlockLists(frozenset(), frozenset())
    assert (await store.remove_blocks([("0xa", "0xa")])).changed == []


async def test_load_blocks_is_idempotent_and_hides_loaded_friendships(store: Store, sink: Sink):
    await store.load_friendships([("0xa", "0xb"), ("0xa", "0xc")])
    assert await store.load_blocks([("0xb", "0xa"), ("0xb", "0xa"), ("0xc", "0xc")]) == 1
    assert await store.load_blocks([("0xb", "0xa")]) == 0
    assert await store.friends_of("0xa") == {"0xc"}
    assert await store.blocks_of("0xb") == BlockLists(frozenset({"0xa"}), frozenset())
    assert sink.friendships() == []


# -------------------------------------------------------------------- presence


async def test_write_then_read_back(store: Store):
    t = now_ms()
    p = online("0xa", t, "main", -5, 7)
    store.write(PresenceWrite(p, True))
    assert await store.get_presence("0xa") == p
    assert await store.get_presence("0xb") is None
    snapshot = await store.online_snapshot()
    assert [(q.address, q.online, q.position, q.last_seen_ms) for q, _ in snapshot] == [
        ("0xa", True, Position("main", -5, 7), t)
    ]
    assert snapshot[0][1] == {store.instance_id}


async def test_presence_without_position_and_unicode_realm(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t, realm=None), True))
    store.write(PresenceWrite(online("0xb", t, realm="réalm-☃"), True))
    assert await store.get_presence("0xa") == online("0xa", t, realm=None)
    assert (await store.get_presence("0xb")).position == Position("réalm-☃", 1, 2)


async def test_refresh_and_move_keep_latest(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t, "main", 1, 1), True))
    store.write(PresenceWrite(online("0xa", t + 10, "main", 1, 1), False))
    store.write(PresenceWrite(online("0xa", t + 20, "other", 3, 4), True))
    assert await store.get_presence("0xa") == online("0xa", t + 20, "other", 3, 4)
    store.write(PresenceWrite(online("0xa", t + 30, "other", 3, 4), False))
    assert (await store.get_presence("0xa")).last_seen_ms == t + 30


async def test_leave_takes_user_offline(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t), True))
    store.write(PresenceWrite(online("0xb", t), True))
    assert await store.get_presence("0xa") is not None
    store.write(PresenceLeave("0xa", t + 5))
    assert await store.get_presence("0xa") is None
    assert [p.address for p, _ in await store.online_snapshot()] == ["0xb"]
    # Leaving twice, or someone never written, is harmless.
    store.write(PresenceLeave("0xa", t + 6))
    store.write(PresenceLeave("0xnever", t + 6))
    assert [p.address for p, _ in await store.online_snapshot()] == ["0xb"]


async def test_write_after_leave_is_online_again(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t), True))
    store.write(PresenceLeave("0xa", t + 1))
    store.write(PresenceWrite(online("0xa", t + 2, "back"), True))
    assert await store.get_presence("0xa") == online("0xa", t + 2, "back")


# ---------------------------------------------------------------------- expiry


async def test_claim_expired_returns_each_user_once(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t), True))
    store.write(PresenceWrite(online("0xb", t + 5 * TTL), True))
    # Far enough past the TTL that any store's safety margin has run out.
    later = t + 4 * TTL
    assert await store.claim_expired(later, TTL) == ["0xa"]
    assert await store.claim_expired(later, TTL) == []
    assert await store.get_presence("0xa") is None
    assert await store.get_presence("0xb") is not None
    assert await store.claim_expired(t + 9 * TTL, TTL) == ["0xb"]
    assert await store.online_snapshot() == []


async def test_claim_expired_spares_a_user_refreshed_in_time(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t), True))
    # A re-write (e.g. the user reconnected) refreshes the shared last-seen.
    store.write(PresenceWrite(online("0xa", t + 10 * TTL), False))
    assert await store.claim_expired(t + 5 * TTL, TTL) == []
    assert await store.get_presence("0xa") is not None
    assert await store.claim_expired(t + 14 * TTL, TTL) == ["0xa"]
    assert await store.claim_expired(t + 14 * TTL, TTL) == []


async def test_claim_expired_ignores_users_who_left(store: Store):
    t = now_ms()
    store.write(PresenceWrite(online("0xa", t), True))
    store.write(PresenceLeave("0xa", t))
    assert await store.claim_expired(t + 10 * TTL, TTL) == []


async def test_store_reports_healthy(store: Store):
    assert store.healthy
