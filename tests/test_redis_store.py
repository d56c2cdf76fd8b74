"""RedisStore across instances: several stores on one private redis-server.

The store contract (one store) is in tests/test_store_contract.py; here are
the things only a shared store does: other instances hear about changes
(never the writer itself), expiry is claimed exactly once, and the store
survives Redis and its change feed failing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields, replace

import pytest
import redis
import trio

from presenced.engine import EngineConfig
from presenced.model import Position, Presence, PresenceLeave, PresenceWrite
from presenced.server.config import ServerConfig
from presenced.store.base import (
    BlockChanged,
    Expired,
    FriendshipChanged,
    RemoteLeave,
    RemotePresence,
    Resync,
    StoreEvent,
    StoreUnavailable,
)
from presenced.store.redis_config import RedisStoreConfig
from presenced.store.redis_direct import DirectConnection
from presenced.store.redis_store import RedisStore
from tests.support.redis_server import RedisServer
from tests.support.waits import now_ms, wait_until

TTL = 2_000
GRACE = 200
# Settings of the store alone (the server has no option for them).
STORE_ONLY = {f.name for f in fields(RedisStoreConfig)} - {
    "ttl_ms", "offline_grace_ms", "touch_write_interval_ms", "pool_size", "socket_timeout_s",
    "flush_interval_s", "resync_interval_s"}


def online(address: str, at: int | None = None, realm: str = "main", x: int = 1) -> Presence:
    return Presence(address, True, Position(realm, x, 0), now_ms() if at is None else at)


class Recorder:
    """A store's event sink that tests can wait on."""

    def __init__(self) -> None:
        self.events: list[StoreEvent] = []

    def __call__(self, events: Sequence[StoreEvent]) -> None:
        self.events.extend(events)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def about(self, address: str) -> list[StoreEvent]:
        out: list[StoreEvent] = []
        for e in self.events:
            if isinstance(e, RemotePresence) and e.presence.address == address:
                out.append(e)
            elif isinstance(e, RemoteLeave | Expired) and e.address == address:
                out.append(e)
            elif isinstance(e, Resync) and any(p.address == address for p, _ in e.records):
                out.append(e)
        return out

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        await wait_until(predicate, timeout)


def store_config(**overrides: object) -> RedisStoreConfig:
    """The store's settings as the server derives them, plus `STORE_ONLY` ones."""
    own = {k: overrides.pop(k) for k in list(overrides) if k in STORE_ONLY}
    return replace(config(**overrides).redis_store_config(), **own)  # type: ignore[arg-type]


def config(**overrides: object) -> ServerConfig:
    base: dict[str, object] = {
        "redis_flush_interval_s": 0.01,
        "redis_resync_interval_s": 0.2,
        "engine": EngineConfig(ttl_ms=TTL, offline_grace_ms=GRACE,
                               touch_write_interval_ms=TTL // 4),
    }
    base.update(overrides)
    return ServerConfig(**base)  # type: ignore[arg-type]


def test_store_config_defaults_match_the_server():
    # RedisStoreConfig copies the server's and the engine's defaults.
    assert RedisStoreConfig() == ServerConfig().redis_store_config()
    built = config().redis_store_config()
    assert (built.ttl_ms, built.offline_grace_ms, built.flush_interval_s) == (TTL, GRACE, 0.01)


@pytest.fixture
async def cluster(redis_server, nursery):
    """`await cluster("a")` starts a RedisStore named "a"; returns (store, recorder)."""
    stores: list[RedisStore] = []

    async def start(name: str, **overrides: object) -> tuple[RedisStore, Recorder]:
        store = RedisStore(redis_server.url, store_config(**overrides), instance_id=name)
        rec = Recorder()
        stores.append(store)
        await nursery.start(store.run, rec)
        return store, rec

    yield start
    for store in stores:
        await store.aclose()


def offline_transitions(events: Sequence[StoreEvent]) -> Counter[str]:
    """How often each user went from online to offline in a sink's view."""
    online: set[str] = set()
    went: Counter[str] = Counter()
    for e in events:
        if isinstance(e, RemotePresence):
            online.add(e.presence.address)
        elif isinstance(e, Expired) and e.address in online:
            online.discard(e.address)
            went[e.address] += 1
        elif isinstance(e, Resync):
            now = {p.address for p, _ in e.records}
            went.update(online - now)
            online = now
    return went


async def barrier(writer: RedisStore, writer_rec: Recorder, other: RedisStore,
                  other_rec: Recorder, tag: str) -> None:
    """Wait until `writer` has read everything published before now.

    `other` publishes a change and we wait for `writer` to receive it: the
    feed is ordered, so anything earlier (including the writer's own
    messages, which must not come back) has been processed by then.
    """
    other.write(PresenceWrite(online(f"0xbarrier-{tag}"), True))
    await writer_rec.wait_for(lambda: writer_rec.about(f"0xbarrier-{tag}"))


# ---------------------------------------------------------------- fan-out


async def test_changes_reach_other_instances_and_never_the_writer(cluster):
    a, ra = await cluster("a")
    b, rb = await cluster("b")
    p = online("0xu", realm="plaza", x=5)
    a.write(PresenceWrite(p, True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    assert rb.of(RemotePresence) == [RemotePresence(p, "a")]

    moved = online("0xu", realm="museum", x=9)
    a.write(PresenceWrite(moved, True))
    await rb.wait_for(lambda: len(rb.of(RemotePresence)) == 2)
    assert rb.of(RemotePresence)[-1] == RemotePresence(moved, "a")

    a.write(PresenceLeave("0xu", now_ms()))
    await rb.wait_for(lambda: rb.of(Expired))
    assert rb.about("0xu")[-2:] == [RemoteLeave("0xu", "a"), Expired("0xu")]

    await barrier(a, ra, b, rb, "echo")
    # The writer heard nothing of its own changes.
    assert ra.about("0xu") == []
    assert [type(e) for e in ra.events] == [Resync, RemotePresence]


async def test_a_change_is_written_without_waiting_for_the_flush_interval(cluster):
    # An interval no test could wait for: only the change itself can start the flush.
    a, ra = await cluster("a", redis_flush_interval_s=3600.0, redis_flush_min_gap_s=0.0)
    b, rb = await cluster("b", redis_flush_interval_s=3600.0, redis_flush_min_gap_s=0.0)
    refresh = online("0xr")
    a.write(PresenceWrite(online("0xu"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    a.write(PresenceWrite(refresh, False))
    a.write(PresenceLeave("0xu", now_ms()))  # a change: the refresh goes out with it
    await rb.wait_for(lambda: rb.of(Expired))
    assert [e.presence.address for e in rb.of(RemotePresence)] == ["0xu", "0xr"]
    assert a.stats.flushes == 2


async def test_refresh_is_silent_but_a_new_owner_is_announced(cluster):
    a, ra = await cluster("a")
    b, rb = await cluster("b")
    c, rc = await cluster("c")
    a.write(PresenceWrite(online("0xu"), True))
    await rc.wait_for(lambda: rc.of(RemotePresence))
    # Heartbeats that change nothing refresh Redis and tell nobody.
    for _ in range(3):
        a.write(PresenceWrite(online("0xu"), False))
        await a.flush()
    # The user connects to b too: unchanged, but b is a new owner, and
    # everyone must count it (or a's leave would take the user offline).
    b.write(PresenceWrite(online("0xu"), False))
    await rc.wait_for(lambda: len(rc.of(RemotePresence)) == 2)
    assert [e.instance for e in rc.of(RemotePresence)] == ["a", "b"]
    await ra.wait_for(lambda: ra.of(RemotePresence))
    assert ra.of(RemotePresence)[0].instance == "b"

    # a stops vouching: b still does, so nobody hears "offline".
    a.write(PresenceLeave("0xu", now_ms()))
    await rc.wait_for(lambda: rc.of(RemoteLeave))
    assert rc.about("0xu")[-1] == RemoteLeave("0xu", "a")
    assert (await c.get_presence("0xu")) is not None
    snapshot = dict((p.address, owners) for p, owners in await c.online_snapshot())
    assert snapshot["0xu"] == {"b"}

    b.write(PresenceLeave("0xu", now_ms()))
    await rc.wait_for(lambda: rc.of(Expired))
    assert rc.about("0xu")[-2:] == [RemoteLeave("0xu", "b"), Expired("0xu")]
    assert (await c.get_presence("0xu")) is None
    await barrier(c, rc, a, ra, "end")
    assert len(rc.of(Expired)) == 1


async def test_coalescing_never_loses_a_change(cluster):
    a, _ = await cluster("a", redis_flush_interval_s=5.0)
    b, rb = await cluster("b")
    first = online("0xu", realm="r1")
    a.write(PresenceWrite(first, True))
    # Same batch: the latest state wins but stays a change.
    later = Presence("0xu", True, first.position, first.last_seen_ms + 5)
    a.write(PresenceWrite(later, False))
    assert a.stats.pending_writes == 1
    await a.flush()
    await rb.wait_for(lambda: rb.of(RemotePresence))
    assert rb.of(RemotePresence) == [RemotePresence(later, "a")]

    # A leave then a write in one batch: still announced as a change.
    a.write(PresenceLeave("0xu", later.last_seen_ms))
    back = online("0xu", realm="r2")
    a.write(PresenceWrite(back, False))
    await a.flush()
    await rb.wait_for(lambda: len(rb.of(RemotePresence)) == 2)
    assert rb.of(RemotePresence)[-1] == RemotePresence(back, "a")
    assert rb.of(RemoteLeave) == []


# ----------------------------------------------------------------- expiry


async def test_expiry_is_announced_to_every_other_instance(cluster):
    a, ra = await cluster("a")
    b, rb = await cluster("b")
    c, rc = await cluster("c")
    t = now_ms()
    a.write(PresenceWrite(online("0xu", t), True))
    await a.flush()
    claimed = await b.claim_expired(t + 3 * TTL, TTL)
    assert claimed == ["0xu"]
    await rc.wait_for(lambda: rc.of(Expired))
    await ra.wait_for(lambda: ra.of(Expired))
    assert rc.about("0xu")[-1] == Expired("0xu")
    assert ra.of(Expired) == [Expired("0xu")]
    await barrier(b, rb, c, rc, "claim")
    assert rb.of(Expired) == []  # the claimer applies its own claims


async def test_a_live_owner_is_left_to_expire_its_own_users(cluster):
    a, _ = await cluster("a")
    b, _ = await cluster("b")
    t = now_ms() - TTL - 100
    a.write(PresenceWrite(online("0xu", t), True))
    await a.flush()
    # Silent for longer than the TTL, but a is alive and will release the
    # user itself (its engine ticks); claiming it too could announce the
    # user offline twice.
    assert await b.claim_expired(now_ms(), TTL) == []
    # If the owner fails to do so for another TTL, the sweep takes over.
    assert await b.claim_expired(t + 2 * TTL + 1, TTL) == ["0xu"]


async def test_concurrent_claimers_get_each_user_exactly_once(cluster):
    writer, _ = await cluster("w")
    claimers = [await cluster(name) for name in ("c1", "c2", "c3")]
    observer, ro = await cluster("o")
    t = now_ms()
    users = [f"0x{i:040x}" for i in range(3000)]
    for i, u in enumerate(users):
        writer.write(PresenceWrite(online(u, t - (i % 7)), True))
    await writer.flush()

    results: dict[str, list[str]] = {}

    async def claim(store: RedisStore) -> None:
        got: list[str] = []
        for _ in range(5):
            got += await store.claim_expired(t + 3 * TTL, TTL)
        results[store.instance_id] = got

    async with trio.open_nursery() as n:
        for store, _ in claimers:
            n.start_soon(claim, store)
    every = [u for got in results.values() for u in got]
    assert sorted(every) == sorted(users)
    assert len(set(every)) == len(every)
    # The observer sees each of them go offline exactly once (normally by an
    # Expired; by a resync if its feed was interrupted, e.g. on a loaded host).
    await ro.wait_for(lambda: set(offline_transitions(ro.events)) >= set(users))
    await barrier(observer, ro, writer, _, "claims")
    went = offline_transitions(ro.events)
    assert all(went[u] == 1 for u in users)


def dead_by_redis_clock(redis_server, store: RedisStore) -> bool:
    """`store` no longer counts as an owner: its last beacon is older than
    dead_after by Redis's own clock (as the scripts judge it)."""
    r = redis_server.client()
    try:
        beacon = r.zscore(store.keys.alive, store.instance_id)
        seconds, micros = r.time()
    finally:
        r.close()
    return beacon is None or seconds * 1000 + micros // 1000 - beacon > store.dead_after_ms


async def test_a_dead_owner_does_not_keep_a_user_online(cluster, redis_server):
    """A user whose first instance died moved to b, then logged out of b."""
    x, _ = await cluster("x")
    b, rb = await cluster("b")
    c, rc = await cluster("c")
    x.write(PresenceWrite(online("0xu"), True))
    await x.flush()
    await x.aclose(leave=False)  # crashed: its entry stays in Redis
    b.write(PresenceWrite(online("0xu"), False))
    await b.flush()
    # Once x counts as dead, b's leave is the last one: offline everywhere,
    # including b's own engine, which still counts x as an owner.
    await wait_until(lambda: dead_by_redis_clock(redis_server, x), 5)
    b.write(PresenceLeave("0xu", now_ms()))
    await rc.wait_for(lambda: rc.of(Expired))
    assert rc.about("0xu")[-2:] == [RemoteLeave("0xu", "b"), Expired("0xu")]
    await rb.wait_for(lambda: rb.of(Expired))
    assert rb.of(Expired) == [Expired("0xu")]
    assert await c.get_presence("0xu") is None


async def test_clean_shutdown_hands_users_to_the_sweep_after_the_grace(cluster):
    a, _ = await cluster("a")
    b, rb = await cluster("b")
    a.write(PresenceWrite(online("0xu"), True))
    a.write(PresenceWrite(online("0xv"), True))
    await rb.wait_for(lambda: len(rb.of(RemotePresence)) == 2)
    # 0xv also connected to b: a's departure changes nothing for it.
    b.write(PresenceWrite(online("0xv"), False))
    await b.flush()
    await a.aclose()
    assert not a.listening and b.listening
    # Nobody is offline yet: a client has the grace to reconnect elsewhere.
    assert rb.of(Expired) == []
    assert await b.claim_expired(now_ms(), TTL) == []
    assert await b.claim_expired(now_ms() + GRACE + 50, TTL) == ["0xu"]
    assert await b.get_presence("0xv") is not None


# ------------------------------------------------------------ friendships


async def test_friendship_changes_reach_other_instances(cluster):
    a, ra = await cluster("a")
    b, rb = await cluster("b")
    assert await b.friends_of("0xa") == frozenset()  # cached by b from now on
    assert (await a.add_friendships([("0xb", "0xa")])).changed == [("0xa", "0xb")]
    await rb.wait_for(lambda: rb.of(FriendshipChanged))
    # Announced in order (a < b), whichever way round it was added.
    assert rb.of(FriendshipChanged) == [FriendshipChanged("0xa", "0xb", True)]
    assert await b.friends_of("0xa") == {"0xb"}
    assert (await a.remove_friendships([("0xa", "0xb")])).changed == [("0xa", "0xb")]
    await rb.wait_for(lambda: len(rb.of(FriendshipChanged)) == 2)
    assert rb.of(FriendshipChanged)[-1] == FriendshipChanged("0xa", "0xb", False)
    assert await b.friends_of("0xa") == frozenset()
    await barrier(a, ra, b, rb, "friends")
    assert ra.of(FriendshipChanged) == []


async def test_block_changes_reach_other_instances_with_the_effective_friendship(cluster):
    a, ra = await cluster("a")
    b, rb = await cluster("b")
    await a.add_friendships([("0xa", "0xb")])
    assert await b.friends_of("0xa") == {"0xb"}  # cached by b
    changes = await a.add_blocks([("0xb", "0xa")])
    assert changes.events == [FriendshipChanged("0xa", "0xb", False),
                              BlockChanged("0xb", "0xa", True)]
    await rb.wait_for(lambda: rb.of(BlockChanged))
    assert rb.of(FriendshipChanged)[-1] == FriendshipChanged("0xa", "0xb", False)
    assert rb.of(BlockChanged) == [BlockChanged("0xb", "0xa", True)]
    assert await b.friends_of("0xa") == frozenset()
    # Read fresh by an instance that had not cached it: hidden too.
    c, rc = await cluster("c")
    assert await c.friends_of("0xb") == frozenset()
    assert await c.block_status("0xa", "0xb") == (False, True)
    await b.add_blocks([("0xa", "0xb")])
    await a.remove_blocks([("0xb", "0xa")])
    assert await c.friends_of("0xb") == frozenset()  # still blocked the other way
    changes = await b.remove_blocks([("0xa", "0xb")])
    assert changes.events == [BlockChanged("0xa", "0xb", False),
                              FriendshipChanged("0xa", "0xb", True)]
    await ra.wait_for(lambda: ra.of(FriendshipChanged))
    assert ra.of(FriendshipChanged) == [FriendshipChanged("0xa", "0xb", True)]
    assert await a.friends_of("0xb") == {"0xa"}
    # c's cached set changes when c hears of it, which may be after a did.
    await rc.wait_for(lambda: FriendshipChanged("0xa", "0xb", True) in rc.events)
    assert await c.friends_of("0xb") == {"0xa"}
    await barrier(a, ra, b, rb, "blocks")
    # Nobody hears of its own changes; every instance hears of the others'.
    assert ra.of(BlockChanged) == [BlockChanged("0xa", "0xb", True),
                                   BlockChanged("0xa", "0xb", False)]
    assert rb.of(BlockChanged) == [BlockChanged("0xb", "0xa", True),
                                   BlockChanged("0xb", "0xa", False)]


async def test_each_online_and_offline_transition_is_reported_by_one_instance(
        cluster, redis_server):
    seen: list[tuple[str, str, bool]] = []
    stores = []
    for name in ("a", "b"):
        store, rec = await cluster(name)
        store.on_status = lambda address, online_, name=name: seen.append(
            (name, address, online_))
        stores.append((store, rec))
    (a, ra), (b, rb) = stores
    a.write(PresenceWrite(online("0xu"), True))
    await a.flush()
    b.write(PresenceWrite(online("0xu"), True))  # a second owner: no transition
    await b.flush()
    a.write(PresenceLeave("0xu", now_ms()))
    await a.flush()
    assert seen == [("a", "0xu", True)]
    b.write(PresenceLeave("0xu", now_ms()))  # the last owner leaves
    await b.flush()
    assert seen == [("a", "0xu", True), ("b", "0xu", False)]
    # Expired by a sweep: the claimer reports it.
    t = now_ms()
    a.write(PresenceWrite(online("0xv", t), True))
    await a.flush()
    await a.aclose(leave=False)  # vanishes as if it had crashed
    await wait_until(lambda: dead_by_redis_clock(redis_server, a), 10)
    assert await b.claim_expired(t + 3 * TTL, TTL) == ["0xv"]
    assert seen[-2:] == [("a", "0xv", True), ("b", "0xv", False)]


# --------------------------------------------------------------- failures


async def test_subscriber_killed_is_noticed_and_repaired(cluster, redis_server):
    a, _ = await cluster("a")
    # b stays cut off long enough for a change to be published meanwhile.
    b, rb = await cluster("b", backoff_min_s=0.5)
    r = redis_server.client()
    try:
        assert r.client_kill_filter(_type="pubsub") >= 2
    finally:
        r.close()
    await rb.wait_for(lambda: not b.healthy)
    p = online("0xu", realm="while-cut-off")
    a.write(PresenceWrite(p, True))
    await a.flush()
    await rb.wait_for(lambda: rb.about("0xu"))
    first = rb.about("0xu")[0]
    # Not heard live (b was cut off): it came with the resync.
    assert isinstance(first, Resync)
    assert first.reason == "change feed reconnected"
    assert [(q, owners) for q, owners in first.records if q.address == "0xu"] == [(p, {"a"})]
    await rb.wait_for(lambda: b.healthy)
    assert b.stats.errors["listener"] == 1
    # And the feed works again.
    a.write(PresenceWrite(online("0xu", realm="after"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))


async def test_a_sequence_gap_triggers_a_resync(cluster, redis_server):
    a, _ = await cluster("a")
    b, rb = await cluster("b")
    a.write(PresenceWrite(online("0xu", realm="one"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    # Three messages from a "lost" (numbers taken, nothing delivered).
    r = redis_server.client()
    try:
        r.hincrby(a.keys.seq, "a", 3)
    finally:
        r.close()
    p = online("0xu", realm="two")
    a.write(PresenceWrite(p, True))
    await rb.wait_for(lambda: len(rb.of(Resync)) == 2)
    resync = rb.of(Resync)[-1]
    assert resync.reason == "missed 3 change message(s) from a"
    assert [q for q, _ in resync.records] == [p]
    # The message that revealed the gap is in the snapshot: not applied twice.
    assert len(rb.of(RemotePresence)) == 1
    a.write(PresenceWrite(online("0xu", realm="three"), True))
    await rb.wait_for(lambda: len(rb.of(RemotePresence)) == 2)


async def test_the_audit_notices_a_lost_last_message(cluster, redis_server):
    a, _ = await cluster("a")
    b, rb = await cluster("b")
    r = redis_server.client()
    try:
        # a's last message "lost": no later message would reveal the gap.
        r.hincrby(a.keys.seq, "a", 1)
    finally:
        r.close()
    await rb.wait_for(lambda: len(rb.of(Resync)) == 2)
    assert rb.of(Resync)[-1].reason == "audit: missed change messages from a"
    audits = b.stats.audits
    await rb.wait_for(lambda: b.stats.audits > audits + 1)
    assert len(rb.of(Resync)) == 2


async def test_redis_restarted_empty(cluster, redis_server):
    a, ra = await cluster("a", backoff_max_s=0.2)
    b, rb = await cluster("b", backoff_max_s=0.2)
    await a.add_friendships([("0xa1", "0xb1")])
    assert await a.friends_of("0xa1") == {"0xb1"}
    a.write(PresenceWrite(online("0xa1"), True))
    b.write(PresenceWrite(online("0xb1"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    await ra.wait_for(lambda: ra.of(RemotePresence))

    redis_server.kill()
    await ra.wait_for(lambda: not a.healthy)
    await rb.wait_for(lambda: not b.healthy)
    # Writes never fail; they wait, one per user.
    for i in range(5):
        a.write(PresenceWrite(online("0xa1", x=i), True))
    a.write(PresenceWrite(online("0xa2"), True))
    assert a.stats.pending_writes == 2
    with pytest.raises(StoreUnavailable):
        await a.add_friendships([("0xa1", "0xzz")])
    assert await a.friends_of("0xa1") == {"0xb1"}  # cached
    with pytest.raises(StoreUnavailable):
        await a.friends_of("0xuncached")
    assert a.stats.outages == 1

    redis_server.restart()
    await ra.wait_for(lambda: a.healthy, timeout=10)
    await rb.wait_for(lambda: b.healthy, timeout=10)
    # Each instance put its own users back; each loaded the other's.
    snapshot = {p.address: owners for p, owners in await a.online_snapshot()}
    assert snapshot == {"0xa1": {"a"}, "0xa2": {"a"}, "0xb1": {"b"}}
    assert (await b.get_presence("0xa1")).position == Position("main", 4, 0)
    last = rb.of(Resync)[-1]
    assert {p.address for p, _ in last.records} == {"0xa1", "0xa2", "0xb1"}
    assert last.reason in ("change feed reconnected", "Redis reachable again")
    assert a.stats.outages == 1 and a.stats.resyncs["start"] == 1
    # Friendships in memory were put back.
    assert await a.friends_of("0xa1") == {"0xb1"}
    assert await b.friends_of("0xb1") == {"0xa1"}


async def test_start_waits_for_redis(redis_server, nursery):
    url = redis_server.url
    redis_server.kill()
    store = RedisStore(url, store_config(backoff_max_s=0.1), instance_id="late")
    started = trio.Event()

    async def run() -> None:
        await nursery.start(store.run, Recorder())
        started.set()

    nursery.start_soon(run)
    # Retried a few times, and still waiting.
    await wait_until(lambda: store.stats.errors.total() >= 3)
    assert not started.is_set() and not store.healthy
    redis_server.start()
    with trio.fail_after(5):
        await started.wait()
    assert store.healthy
    await store.aclose()


async def test_aclose_is_quick_and_leaves_no_threads(cluster):
    a, _ = await cluster("a")
    a.write(PresenceWrite(online("0xu"), True))
    start = time.monotonic()
    await a.aclose()
    assert time.monotonic() - start < 1.0
    assert not a.healthy
    assert not a.listening
    a.write(PresenceWrite(online("0xu"), True))  # ignored, never raises


async def test_a_restarted_sequence_is_noticed(cluster, redis_server):
    a, _ = await cluster("a")
    b, rb = await cluster("b")
    a.write(PresenceWrite(online("0xu", realm="one"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    # a's counter vanishes (as when silent instances are garbage-collected
    # while one is merely partitioned): its next message is number 1 again.
    r = redis_server.client()
    try:
        r.hdel(a.keys.seq, "a")
    finally:
        r.close()
    p = online("0xu", realm="two")
    a.write(PresenceWrite(p, True))
    await rb.wait_for(lambda: len(rb.of(Resync)) == 2)
    assert rb.of(Resync)[-1].reason == "sequence of a restarted"
    assert [q for q, _ in rb.of(Resync)[-1].records] == [p]
    a.write(PresenceWrite(online("0xu", realm="three"), True))
    await rb.wait_for(lambda: len(rb.of(RemotePresence)) == 2)
    assert b.stats.resyncs == {"start": 1, "gap": 1}


# --------------------------------------------------------------- data loss


def removals(rec: Recorder) -> list[FriendshipChanged]:
    return [e for e in rec.of(FriendshipChanged) if not e.added]


async def resyncs_after(store: RedisStore, kind: str, before: int) -> None:
    await wait_until(lambda: store.stats.resyncs[kind] > before and store.healthy, 10)


async def audit_and_feed_resyncs(redis_server, *stores: RedisStore) -> None:
    """A resync of each kind the issue names, on every store, after recovery."""
    audits = [s.stats.resyncs["audit"] for s in stores]
    reconnects = [s.stats.resyncs["feed-reconnected"] for s in stores]
    r = redis_server.client()
    try:
        # A counter no message matches: every audit finds a "lost" message.
        r.hincrby(stores[0].keys.seq, "ghost", 1)
        for store, before in zip(stores, audits, strict=True):
            await resyncs_after(store, "audit", before)
        assert r.client_kill_filter(_type="pubsub") >= len(stores)
    finally:
        r.close()
    for store, before in zip(stores, reconnects, strict=True):
        await resyncs_after(store, "feed-reconnected", before)


async def recovered(*stores: RedisStore) -> None:
    await wait_until(lambda: all(s.stats.outages for s in stores), 10)
    await wait_until(lambda: all(s.healthy for s in stores), 10)


def friend_set(redis_server, store: RedisStore, address: str) -> set[str]:
    r = redis_server.client()
    try:
        return {m.decode() for m in r.smembers(store.keys.friends(address))}
    finally:
        r.close()


async def test_an_empty_restart_never_unfriends_anyone(cluster, redis_server):
    """Issue 14: after Redis restarted without persistence, the next resync of
    any kind (the periodic audit, a dropped pub/sub connection) compared the
    cached friend sets with the empty ones in Redis and removed them all."""
    a, ra = await cluster("a", backoff_max_s=0.2)
    b, rb = await cluster("b", backoff_max_s=0.2)
    await a.add_friendships([("0xa1", "0xb1"), ("0xa1", "0xa2")])
    assert await a.friends_of("0xa1") == {"0xb1", "0xa2"}
    assert await b.friends_of("0xb1") == {"0xa1"}
    a.write(PresenceWrite(online("0xa1"), True))
    b.write(PresenceWrite(online("0xb1"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    await ra.wait_for(lambda: ra.of(RemotePresence))

    redis_server.restart()
    await recovered(a, b)
    await audit_and_feed_resyncs(redis_server, a, b)

    assert removals(ra) == [] and removals(rb) == []
    assert await a.friends_of("0xa1") == {"0xb1", "0xa2"}
    assert await b.friends_of("0xb1") == {"0xa1"}
    # What the instances had in memory is in Redis again, both directions.
    assert friend_set(redis_server, a, "0xa1") == {"0xb1", "0xa2"}
    assert friend_set(redis_server, a, "0xa2") == {"0xa1"}
    assert friend_set(redis_server, a, "0xb1") == {"0xa1"}


async def test_a_restart_from_an_older_save_never_unfriends_anyone(cluster, redis_server):
    """Redis restarted from a dump that misses the last writes: the same epoch,
    but counters that went back; the friendships made since are put back."""
    a, ra = await cluster("a", backoff_max_s=0.2)
    b, rb = await cluster("b", backoff_max_s=0.2)
    await a.add_friendships([("0xa1", "0xb1")])
    assert await a.friends_of("0xa1") == {"0xb1"}
    r = redis_server.client()
    try:
        r.save()
    finally:
        r.close()
    await a.add_friendships([("0xa1", "0xlate")])
    assert await b.friends_of("0xlate") == {"0xa1"}

    redis_server.restart()
    await recovered(a, b)
    await audit_and_feed_resyncs(redis_server, a, b)

    assert removals(ra) == [] and removals(rb) == []
    assert await a.friends_of("0xa1") == {"0xb1", "0xlate"}
    assert await b.friends_of("0xlate") == {"0xa1"}
    assert friend_set(redis_server, a, "0xa1") == {"0xb1", "0xlate"}


class ListSource:
    """A friends source in memory, in two batches."""

    name = "test source"

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.reads = 0

    async def batches(self):
        self.reads += 1
        yield self.pairs[:1]
        yield self.pairs[1:]

    async def block_batches(self):
        return
        yield


async def test_friendships_are_rebuilt_from_the_source_after_an_empty_restart(
        cluster, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="presenced.store.redis")
    a, ra = await cluster("a", backoff_max_s=0.2)
    b, rb = await cluster("b", backoff_max_s=0.2)
    source = ListSource([("0xs1", "0xs2"), ("0xa1", "0xs3")])
    a.set_friends_source(source)
    assert await a.load_friendships(source.pairs) == 2
    assert await a.friends_of("0xa1") == {"0xs3"}
    # Made through the admin API, not in the source: survives through memory.
    await b.add_friendships([("0xb1", "0xb2")])
    assert await b.friends_of("0xb1") == {"0xb2"}
    heard = len(rb.of(FriendshipChanged))

    redis_server.restart()
    await recovered(a, b)
    # Nobody had 0xs1 or 0xs2 in memory: only the source knows them.
    await wait_until(lambda: friend_set(redis_server, a, "0xs1") == {"0xs2"}, 10)
    assert source.reads == 1
    assert friend_set(redis_server, a, "0xs3") == {"0xa1"}
    assert friend_set(redis_server, a, "0xb2") == {"0xb1"}
    # Every engine hears of what the rebuild added, this instance's too
    # (sessions run by then), as of any change.
    await rb.wait_for(lambda: FriendshipChanged("0xs1", "0xs2", True)
                      in rb.of(FriendshipChanged)[heard:])
    assert FriendshipChanged("0xs1", "0xs2", True) in ra.of(FriendshipChanged)
    assert removals(ra) == [] and removals(rb) == []
    assert "rebuilt friendships from the test source" in caplog.text


async def test_start_warns_when_redis_keeps_nothing_on_disk(cluster, caplog):
    a, _ = await cluster("a")
    assert "Redis keeps nothing on disk" in caplog.text
    assert "give presenced a friends source" in caplog.text


async def test_start_tolerates_config_being_disabled(nursery, caplog):
    caplog.set_level(logging.INFO, logger="presenced.store.redis")
    with RedisServer(extra_args=["--rename-command", "CONFIG", ""]) as server:
        store = RedisStore(server.url, store_config(), instance_id="managed")
        await nursery.start(store.run, Recorder())
        assert store.healthy
        await store.aclose()
    assert "cannot tell whether Redis keeps its data on disk" in caplog.text
    assert "Redis keeps nothing on disk" not in caplog.text


# ------------------------------------------------------ the flusher's connection


def heard(rec: Recorder, address: str, x: int) -> bool:
    return any(isinstance(e, RemotePresence) and e.presence.address == address
               and e.presence.position is not None and e.presence.position.x == x
               for e in rec.events)


def test_the_direct_flush_serves_plain_tcp_urls_only():
    pool = redis.ConnectionPool.from_url("redis://user:pw@10.1.2.3:6390/3", client_name="n")
    direct = DirectConnection.for_pool(pool, 2.0)
    assert direct is not None
    assert (direct.host, direct.port, direct.db, direct.timeout_s) == ("10.1.2.3", 6390, 3, 2.0)
    for url in ("rediss://10.1.2.3:6390/0", "unix:///run/redis.sock"):
        assert DirectConnection.for_pool(redis.ConnectionPool.from_url(url), 2.0) is None


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "thread"])
async def test_a_flush_after_redis_forgot_its_scripts_loads_them_again(
    cluster, redis_server, direct
):
    a, _ = await cluster("a", direct_flush=direct)
    _, rec = await cluster("b")
    a.write(PresenceWrite(online("0xa1", x=1), True))
    await a.flush()
    await wait_until(lambda: heard(rec, "0xa1", 1))
    with redis_server.client() as r:
        r.script_flush()
    a.write(PresenceWrite(online("0xa1", x=2), True))
    await a.flush()
    await wait_until(lambda: heard(rec, "0xa1", 2))
    assert a.healthy


async def test_the_direct_flush_logs_in_and_selects_the_database(nursery):
    with RedisServer(extra_args=["--requirepass", "s3cret"]) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        a = RedisStore(url, store_config(), instance_id="a")
        b = RedisStore(url, store_config(), instance_id="b")
        rec = Recorder()
        await nursery.start(a.run, Recorder())
        await nursery.start(b.run, rec)
        a.write(PresenceWrite(online("0xa1", x=7), True))
        await a.flush()
        await wait_until(lambda: heard(rec, "0xa1", 7))
        with server.client(password="s3cret", db=3) as r3, \
                server.client(password="s3cret", db=0) as r0:
            assert r3.dbsize() > 0 and r0.dbsize() == 0
        await a.aclose()
        await b.aclose()


async def test_a_broken_direct_connection_is_replaced_at_the_next_flush(cluster, redis_server):
    a, _ = await cluster("a", backoff_max_s=0.2)
    _, rec = await cluster("b")
    a.write(PresenceWrite(online("0xa1", x=1), True))
    await a.flush()
    with redis_server.client() as r:
        # Every client connection of instance "a" dropped by Redis, the flusher's included.
        r.client_kill_filter(_type="normal", skipme=True)
    a.write(PresenceWrite(online("0xa1", x=3), True))
    with trio.fail_after(10):
        while True:
            try:
                await a.flush()
                break
            except StoreUnavailable:
                await trio.sleep(0.05)
    await wait_until(lambda: heard(rec, "0xa1", 3))


# ---------------------------------------------------------------- login claims


async def test_a_login_claimed_by_one_instance_is_refused_by_the_others(cluster, redis_server):
    a, _ = await cluster("a", backoff_max_s=0.2)
    b, _ = await cluster("b", backoff_max_s=0.2)
    expires = int(time.time() * 1000) + 60_000
    refused: list[str] = []
    a.claim_login(b"frame-1", expires, lambda: refused.append("a"))
    await wait_until(lambda: redis_server.client().exists(a.keys.login(b"frame-1")))
    b.claim_login(b"frame-1", expires, lambda: refused.append("b"))
    b.claim_login(b"frame-2", expires, lambda: refused.append("b2"))
    await wait_until(lambda: refused == ["b"] and redis_server.client().exists(
        b.keys.login(b"frame-2")))
    # The claim lasts as long as the frame's window.
    ttl = redis_server.client().pttl(a.keys.login(b"frame-1"))
    assert 50_000 < ttl <= 60_000

    # While Redis is away the claims wait (bounded), and are checked when it is back.
    redis_server.kill()
    await wait_until(lambda: not a.healthy, timeout=10)
    a.claim_login(b"frame-3", expires, lambda: refused.append("a3"))
    b.claim_login(b"frame-3", expires, lambda: refused.append("b3"))
    redis_server.restart()
    await wait_until(lambda: a.healthy and b.healthy, timeout=10)
    await wait_until(lambda: len(refused) == 2, timeout=10)
    assert refused[1] in ("a3", "b3")


# ------------------------------------------------ publishing only to listeners


def publishes(redis_server) -> int:
    """PUBLISH calls Redis has run so far (scripts' calls included)."""
    r = redis_server.client()
    try:
        return int(r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))
    finally:
        r.close()


def counter(redis_server, store: RedisStore, origin: str) -> int:
    r = redis_server.client()
    try:
        return int(r.hget(store.keys.seq, origin) or 0)
    finally:
        r.close()


async def test_a_lone_instance_numbers_its_changes_but_sends_none(cluster, redis_server):
    # No audit fence (a PUBLISH of its own) during the test.
    a, ra = await cluster("a", redis_resync_interval_s=3600.0)
    await ra.wait_for(lambda: a.healthy)
    sent, seq = publishes(redis_server), counter(redis_server, a, "a")
    for x in range(3):
        a.write(PresenceWrite(online("0xu", x=x), True))
        await a.flush()
    assert counter(redis_server, a, "a") == seq + 3
    assert publishes(redis_server) == sent

    # A second instance reads the unsent changes in its snapshot, then hears
    # the next one live.
    b, rb = await cluster("b", redis_resync_interval_s=3600.0)
    await rb.wait_for(lambda: rb.of(Resync))
    assert [q.position.x for q, _ in rb.of(Resync)[0].records if q.address == "0xu"] == [2]
    a.write(PresenceWrite(online("0xu", x=7), True))
    await rb.wait_for(lambda: rb.of(RemotePresence))
    assert rb.of(RemotePresence)[-1].presence.position.x == 7
    assert publishes(redis_server) == sent + 1
    assert b.stats.resyncs.get("gap", 0) == 0


async def test_changes_wait_for_the_interval_only_while_nobody_else_listens(cluster):
    # Rare beacons (every 2.5 s): a change that arrives within a second came with a flush
    # of its own, not with a beacon or the interval.
    slow = {"redis_flush_interval_s": 3600.0, "redis_flush_min_gap_s": 0.0,
            "engine": EngineConfig(ttl_ms=60_000, offline_grace_ms=GRACE)}
    a, ra = await cluster("a", **slow)
    await a.flush()
    assert not a.others_listening
    b, rb = await cluster("b", **slow)
    await rb.wait_for(lambda: rb.of(Resync))
    # a learns of b at its next flush...
    a.write(PresenceWrite(online("0xr"), False))
    await a.flush()
    assert a.others_listening
    # ...and from then on writes each change at once.
    a.write(PresenceWrite(online("0xu"), True))
    await rb.wait_for(lambda: rb.of(RemotePresence), timeout=1.0)
    await b.aclose()
    a.write(PresenceWrite(online("0xr"), False))
    await a.flush()
    assert not a.others_listening


async def test_changes_are_sent_while_the_instance_own_listener_is_away(cluster, redis_server):
    # a's listener stays away for a while once cut off.
    a, ra = await cluster("a", backoff_min_s=30.0, backoff_max_s=30.0,
                          redis_resync_interval_s=3600.0)
    await ra.wait_for(lambda: a.healthy)
    r = redis_server.client()
    watcher = r.pubsub()
    try:
        assert r.client_kill_filter(_type="pubsub") == 1
        await ra.wait_for(lambda: not a.healthy)
        # Someone else listens now; a's own listener does not.
        watcher.subscribe(a.keys.channel)
        assert watcher.get_message(timeout=5)["type"] == "subscribe"
        a.write(PresenceWrite(online("0xu", realm="heard"), True))
        await a.flush()
        assert not a.healthy
        assert r.pubsub_numsub(a.keys.channel, a.keys.listening("a")) == [
            (a.keys.channel.encode(), 1), (a.keys.listening("a").encode(), 0)]
        m = watcher.get_message(timeout=5)
        assert m is not None and m["type"] == "message"
        assert m["data"].startswith(b"P1|a|") and b"0xu" in m["data"]
    finally:
        watcher.close()
        r.close()
