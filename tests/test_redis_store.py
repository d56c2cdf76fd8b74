"""RedisStore across instances: several stores on one private redis-server.

The store contract (one store) is in tests/test_store_contract.py; here are
the things only a shared store does: other instances hear about changes
(never the writer itself), expiry is claimed exactly once, and the store
survives Redis and its change feed failing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import trio

from presenced.engine import EngineConfig
from presenced.model import Position, Presence, PresenceLeave, PresenceWrite
from presenced.server.config import ServerConfig
from presenced.store.base import (
    Expired,
    FriendshipChanged,
    RemoteLeave,
    RemotePresence,
    Resync,
    StoreEvent,
    StoreUnavailable,
)
from presenced.store.redis import RedisStore
from presenced.store.redis_config import RedisStoreConfig

TTL = 2_000
GRACE = 200


def now_ms() -> int:
    return int(time.time() * 1000)


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
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.005)


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

    async def start(
        name: str, prepare: Callable[[RedisStore], None] | None = None, **overrides: object
    ) -> tuple[RedisStore, Recorder]:
        store = RedisStore(redis_server.url, config(**overrides).redis_store_config(),
                           instance_id=name)
        if prepare is not None:
            prepare(store)
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
    assert a.pending_writes == 1
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


async def test_a_dead_owner_does_not_keep_a_user_online(cluster):
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
    await trio.sleep(b.dead_after_ms / 1000 + 0.1)
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
    assert not [t for t in threading.enumerate() if t.name == "presenced-redis-listener"
                and t.is_alive() and t is not b._listener._thread]
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
    assert rb.of(FriendshipChanged) == [FriendshipChanged("0xb", "0xa", True)]
    assert await b.friends_of("0xa") == {"0xb"}
    assert (await a.remove_friendships([("0xa", "0xb")])).changed == [("0xa", "0xb")]
    await rb.wait_for(lambda: len(rb.of(FriendshipChanged)) == 2)
    assert rb.of(FriendshipChanged)[-1] == FriendshipChanged("0xa", "0xb", False)
    assert await b.friends_of("0xa") == frozenset()
    await barrier(a, ra, b, rb, "friends")
    assert ra.of(FriendshipChanged) == []


async def test_friends_of_keeps_a_change_that_races_with_the_fetch(cluster):
    a, _ = await cluster("a")
    b, rb = await cluster("b")
    await a.add_friendships([("0xa", "0xold")])
    await rb.wait_for(lambda: rb.of(FriendshipChanged))
    # b's fetch reads Redis, then is held until a's change has reached b: the
    # answer Redis gave is stale by then, and b must still report the change.
    release = threading.Event()
    real = b._redis.smembers

    def slow_smembers(key: str) -> object:
        members = real(key)
        release.wait(5)
        return members

    b._redis.smembers = slow_smembers  # type: ignore[method-assign]
    result: list[frozenset[str]] = []

    async def fetch() -> None:
        result.append(await b.friends_of("0xa"))

    async with trio.open_nursery() as n:
        n.start_soon(fetch)
        await trio.sleep(0.05)
        await a.add_friendships([("0xa", "0xnew")])
        await a.remove_friendships([("0xa", "0xold")])
        await rb.wait_for(lambda: len(rb.of(FriendshipChanged)) == 3)
        release.set()
    assert result == [frozenset({"0xnew"})]
    b._redis.smembers = real  # type: ignore[method-assign]
    assert await b.friends_of("0xa") == {"0xnew"}


# --------------------------------------------------------------- failures


async def test_subscriber_killed_is_noticed_and_repaired(cluster, redis_server):
    def slow_reconnect(store: RedisStore) -> None:
        # Stay cut off long enough for a change to be published meanwhile.
        store.backoff_min_s = 0.5

    a, _ = await cluster("a")
    b, rb = await cluster("b", prepare=slow_reconnect)
    r = redis_server.client()
    try:
        assert r.client_kill_filter(_type="pubsub") >= 2
    finally:
        r.close()
    await trio.sleep(0.05)
    assert not b.healthy
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
    assert b.redis_errors["listener"] == 1
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
    audits = b.audits
    await rb.wait_for(lambda: b.audits > audits + 1)
    assert len(rb.of(Resync)) == 2


async def test_redis_restarted_empty(cluster, redis_server):
    def quick(store: RedisStore) -> None:
        store.backoff_max_s = 0.2

    a, ra = await cluster("a", prepare=quick)
    b, rb = await cluster("b", prepare=quick)
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
    assert a.pending_writes == 2
    with pytest.raises(StoreUnavailable):
        await a.add_friendships([("0xa1", "0xzz")])
    assert await a.friends_of("0xa1") == {"0xb1"}  # cached
    with pytest.raises(StoreUnavailable):
        await a.friends_of("0xuncached")
    assert a.outages == 1

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
    assert a.outages == 1 and a.resync_reasons
    # Friendships are not rebuilt from memory, but connected users keep theirs.
    assert await a.friends_of("0xa1") == {"0xb1"}


async def test_start_waits_for_redis(redis_server, nursery):
    url = redis_server.url
    redis_server.kill()
    store = RedisStore(url, config().redis_store_config(), instance_id="late")
    store.backoff_max_s = 0.1
    started = trio.Event()

    async def run() -> None:
        await nursery.start(store.run, Recorder())
        started.set()

    nursery.start_soon(run)
    await trio.sleep(0.3)
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
    assert not a._listener.alive
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
    assert b.resync_reasons == {"start": 1, "gap": 1}


async def test_an_expiry_racing_with_a_resync_is_not_undone(cluster):
    """Our claim lands after the resync's snapshot was read but before it is
    applied: the snapshot still shows the user, so the store expires them
    again right after the Resync (or the user would stay online for good)."""
    x, _ = await cluster("x")
    b, rb = await cluster("b")
    t = now_ms()
    x.write(PresenceWrite(online("0xu", t), True))
    await x.flush()
    await x.aclose(leave=False)
    await rb.wait_for(lambda: rb.of(RemotePresence))

    snapshot_read, claim_done = threading.Event(), threading.Event()
    real_read, real_claim = b._read_snapshot_sync, b._claim_sync

    def read(friends):
        snap = real_read(friends)
        snapshot_read.set()
        claim_done.wait(5)
        return snap

    def claim(now, ttl):
        snapshot_read.wait(5)
        return real_claim(now, ttl)

    b._read_snapshot_sync = read
    b._claim_sync = claim
    claimed: list[str] = []

    async def sweep() -> None:
        claimed.extend(await b.claim_expired(t + 3 * TTL, TTL))
        claim_done.set()

    async with trio.open_nursery() as n:
        n.start_soon(sweep)
        await trio.sleep(0.05)  # the claim is in flight, then a resync starts
        b._request_resync("test", "test")
        await rb.wait_for(lambda: len(rb.of(Resync)) == 2)
    assert claimed == ["0xu"]
    resync = rb.of(Resync)[-1]
    assert [p.address for p, _ in resync.records] == ["0xu"]
    assert rb.events[-1] == Expired("0xu")
