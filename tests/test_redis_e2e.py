"""Several `presenced serve` processes sharing one private redis-server.

Real processes, real sockets, our Python client: what an operator running a
cluster would see, including an instance killed with SIGKILL, Redis killed
and restarted empty, and the subscriber connection dropped by Redis.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from presenced.auth.identity import Identity
from presenced.client import ConnectionEnded, PresenceClient
from presenced.server.config import ServerConfig
from presenced.store.redis_store import RedisStore
from presenced.v1 import presence_pb2 as pb
from tests.support.daemon import Daemon
from tests.support.waits import wait_until

TTL_S = 2.0
SWEEP_S = 0.2
GRACE_S = 0.2
COMMON = (
    "--ttl", str(TTL_S), "--sweep-interval", str(SWEEP_S), "--offline-grace", str(GRACE_S),
    "--heartbeat-rate", "100", "--heartbeat-burst", "100", "--redis-timeout", "2",
    "--log-level", "info",
)

USERS = [Identity.generate(random.Random(1000 + i)) for i in range(5)]
FRIEND, ALICE, BOB, CAROL, LOCAL = USERS


@dataclass(frozen=True)
class Update:
    at: float
    address: str
    online: bool
    realm: str | None


class Watcher:
    """Records every update a subscription delivers, with its arrival time."""

    def __init__(self) -> None:
        self.updates: list[Update] = []

    async def follow(self, client: PresenceClient,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with client.subscribe() as sub:
            task_status.started()
            async for batch in sub:
                now = time.monotonic()
                for u in batch:
                    realm = u.position.realm if u.HasField("position") else None
                    self.updates.append(Update(now, u.address, u.status == pb.ONLINE, realm))

    def of(self, who: Identity) -> list[Update]:
        return [u for u in self.updates if u.address == who.address]

    def last(self, who: Identity) -> Update | None:
        mine = self.of(who)
        return mine[-1] if mine else None

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        await wait_until(predicate, timeout)


async def add_friends(url: str, *pairs: tuple[Identity, Identity]) -> None:
    """Through the store's API, as the admin endpoint would."""
    store = RedisStore(url, ServerConfig().redis_store_config())
    async with trio.open_nursery() as n:
        await n.start(store.run, lambda events: None)
        await store.add_friendships([(a.address, b.address) for a, b in pairs])
        n.cancel_scope.cancel()
    await store.aclose(leave=False)


@asynccontextmanager
async def daemons(redis_url: str, count: int, *extra: str) -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    failed = False
    try:
        for _ in range(count):
            started.append(Daemon("--redis-url", redis_url, *COMMON, *extra).start())
        yield started
    except BaseException:
        # Their logs are what explains a failure: kept, and shown by pytest.
        failed = True
        raise
    finally:
        for d in started:
            d.close(failed)


def connect(daemon: Daemon, who: Identity):
    return PresenceClient.connect(daemon.url, who)


@asynccontextmanager
async def online(
    daemon: Daemon, who: Identity, *, realm: str = "home", watcher: Watcher | None = None,
) -> AsyncIterator[tuple[PresenceClient, Beater]]:
    """A client that heartbeats (and, with `watcher`, follows its friends' updates) while
    the block runs.

    Its tasks end before its connection closes: a task that outlived it would find the
    connection closed by the test itself (code 1000) and fail the test for nothing. That
    is what made test_kill_9_of_an_instance flaky, when those tasks ran in the test's
    nursery: a heartbeat due while the friend's connection closed at the end ended the
    subscription with "connection closed (1000)".
    """
    async with connect(daemon, who) as client, trio.open_nursery() as tasks:
        beater = await beating(tasks, client, realm)
        if watcher is not None:
            await tasks.start(watcher.follow, client)
        yield client, beater
        tasks.cancel_scope.cancel()


class Beater:
    """Heartbeats like a real client: every 0.4 s (the TTL here is 2 s).

    `move` changes the position and sends it at once; the periodic beats
    repeat the current one, which tells nobody anything.
    """

    def __init__(self, client: PresenceClient, realm: str = "home") -> None:
        self.client = client
        self.position = (realm, 0, 0)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self.client.heartbeat(*self.position)
                await trio.sleep(0.4)
        except ConnectionEnded:
            pass

    async def move(self, realm: str, x: int = 0, y: int = 0) -> pb.PositionResponse:
        self.position = (realm, x, y)
        return await self.client.heartbeat(realm, x, y)


async def beating(nursery: trio.Nursery, client: PresenceClient, realm: str = "home") -> Beater:
    beater = Beater(client, realm)
    await nursery.start(beater.run)
    return beater


async def wait_log(daemon: Daemon, text: str, count: int = 1, timeout: float = 10.0) -> None:
    await wait_until(lambda: daemon.log().count(text) >= count, timeout)


# ---------------------------------------------------------------------------


async def test_a_friend_on_another_instance_sees_everything(redis_server):
    await add_friends(redis_server.url, (FRIEND, ALICE))
    async with daemons(redis_server.url, 2) as (one, two):
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher) as (friend, _):
            async with online(one, ALICE) as (alice, beater):
                await watcher.wait_for(lambda: watcher.last(ALICE))
                assert watcher.last(ALICE).online
                await beater.move("plaza", 1, 2)
                await watcher.wait_for(lambda: watcher.last(ALICE).realm == "plaza")
                await beater.move("museum", 3, 4)
                await watcher.wait_for(lambda: watcher.last(ALICE).realm == "museum")
                # Unchanged heartbeats reach nobody: the next update is the move.
                count = len(watcher.of(ALICE))
                await alice.heartbeat("museum", 3, 4)
                await trio.sleep(0.3)
                await beater.move("park", 5, 6)
                await watcher.wait_for(lambda: watcher.last(ALICE).realm == "park")
                assert len(watcher.of(ALICE)) == count + 1
                friends = await friend.get_online_friends()
                assert [(f.address, f.position.realm) for f in friends] == [
                    (ALICE.address, "park")]
            # Logout: offline once the grace has passed, exactly once.
            closed = time.monotonic()
            await watcher.wait_for(lambda: not watcher.last(ALICE).online)
            assert GRACE_S - 0.05 <= watcher.last(ALICE).at - closed < GRACE_S + 2.0
            await trio.sleep(0.3)
            assert [u.online for u in watcher.of(ALICE)].count(False) == 1
            assert await friend.get_online_friends() == []


async def test_kill_9_of_an_instance(redis_server, nursery):
    await add_friends(redis_server.url, (FRIEND, ALICE), (FRIEND, BOB))
    async with daemons(redis_server.url, 2) as (one, two):
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher) as (friend, _):

            async def on_one(who: Identity, realm: str,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
                # Stays connected and beating until the instance dies under it
                # (its beater then ends quietly: the connection is gone).
                async with online(one, who, realm=realm) as (_, beater):
                    await beater.move(realm)
                    task_status.started()
                    await trio.sleep_forever()

            await nursery.start(on_one, ALICE, "alice-realm")
            await nursery.start(on_one, BOB, "bob-realm")
            await watcher.wait_for(lambda: watcher.last(ALICE) and watcher.last(BOB)
                                   and watcher.last(ALICE).realm and watcher.last(BOB).realm)

            one.kill9()
            died = time.monotonic()
            # Bob's client reconnects to the surviving instance at once.
            async with online(two, BOB, realm="bob-realm"):
                # Alice's client is gone for good: offline within TTL + sweep.
                await watcher.wait_for(lambda: not watcher.last(ALICE).online, timeout=10)
                took = watcher.last(ALICE).at - died
                assert took <= TTL_S + SWEEP_S + 0.5, took
                # Watch a little longer: no second OFFLINE, and Bob never offline.
                await trio.sleep(SWEEP_S * 3)
                assert [u.online for u in watcher.of(ALICE)].count(False) == 1
                assert all(u.online for u in watcher.of(BOB))
                friends = await friend.get_online_friends()
                assert [f.address for f in friends] == [BOB.address]


async def test_redis_killed_and_restarted_empty(redis_server):
    await add_friends(redis_server.url, (FRIEND, ALICE), (LOCAL, ALICE))
    async with daemons(redis_server.url, 2) as (one, two):
        far, near = Watcher(), Watcher()
        async with online(two, FRIEND, watcher=far) as (friend, _), \
                online(one, LOCAL, watcher=near), online(one, ALICE) as (alice, beater):
            await beater.move("before")
            await far.wait_for(lambda: far.last(ALICE) and far.last(ALICE).realm == "before")
            await near.wait_for(lambda: near.last(ALICE) and near.last(ALICE).realm == "before")

            redis_server.kill()
            for d in (one, two):
                await wait_log(d, "Redis unavailable")
            # Service continues from memory: heartbeats are answered and
            # friends on the same instance still hear about them.
            response = await beater.move("during", 1, 1)
            assert response.position.realm == "during"
            await near.wait_for(lambda: near.last(ALICE).realm == "during")

            redis_server.restart()
            for d in (one, two):
                await wait_log(d, "Redis available again")
            # Redis again holds every live user, and nobody had to reconnect.
            r = redis_server.client()
            try:
                state = {k.decode() for k in r.hkeys("{presenced}:state")}
            finally:
                r.close()
            assert state == {FRIEND.address, LOCAL.address, ALICE.address}
            await far.wait_for(lambda: far.last(ALICE).realm == "during")
            await beater.move("after", 2, 2)
            await far.wait_for(lambda: far.last(ALICE).realm == "after")
            assert [u.online for u in far.of(ALICE)].count(False) == 0
            assert [u.online for u in near.of(ALICE)].count(False) == 0
            assert (await friend.heartbeat("home", 0, 0)).position.realm == "home"
        for d in (one, two):
            assert "Redis lost its data" in d.log()


async def test_subscriber_connection_killed(redis_server):
    await add_friends(redis_server.url, (FRIEND, ALICE))
    async with daemons(redis_server.url, 2) as (one, two):
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher), online(one, ALICE) as (_, beater):
            await beater.move("before")
            await watcher.wait_for(lambda: watcher.last(ALICE)
                                   and watcher.last(ALICE).realm == "before")
            r = redis_server.client()
            try:
                # Keep the subscribers cut off for a while, and change
                # something in the middle of it.
                deadline = time.monotonic() + 0.6
                killed = 0
                while time.monotonic() < deadline:
                    killed += r.client_kill_filter(_type="pubsub")
                    if beater.position[0] == "before" and time.monotonic() > deadline - 0.4:
                        await beater.move("while-cut-off", 5, 5)
                    await trio.sleep(0.005)
            finally:
                r.close()
            assert killed >= 2
            await watcher.wait_for(lambda: watcher.last(ALICE).realm == "while-cut-off")
            await wait_log(two, "resynchronised with Redis (change feed reconnected)")
            await wait_log(two, "Redis available again")
            await beater.move("after", 6, 6)
            await watcher.wait_for(lambda: watcher.last(ALICE).realm == "after")
            assert all(u.online for u in watcher.of(ALICE))


@pytest.fixture(autouse=True)
def _fail_fast_on_missing_redis(redis_server):
    # Every test here needs the private Redis (skipped when not installed).
    return redis_server


async def test_a_client_kept_alive_by_pings_alone_stays_online_everywhere(redis_server):
    # With a TTL shorter than the engine's touch-write interval (10 s), such
    # a user is written to Redis less often than the TTL: other instances
    # must leave them to their (alive) owner instead of expiring them.
    await add_friends(redis_server.url, (FRIEND, ALICE))
    async with daemons(redis_server.url, 2, "--ttl", "1") as (one, two):
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher), connect(one, ALICE) as alice:
            await alice.heartbeat("idle", 1, 1)  # then only the server's pings
            await watcher.wait_for(lambda: watcher.last(ALICE)
                                   and watcher.last(ALICE).realm == "idle")
            await trio.sleep(3.0)  # three TTLs
            assert all(u.online for u in watcher.of(ALICE)), watcher.of(ALICE)


# ------------------------------------------------- friendships and data loss


def friend_set(redis_server, who: Identity) -> set[str]:
    r = redis_server.client()
    try:
        return {m.decode() for m in r.smembers(f"{{presenced}}:f:{who.address}")}
    finally:
        r.close()


async def test_an_empty_redis_restart_unfriends_nobody(redis_server):
    """Issue 14: after Redis restarted without persistence, the next resync of
    any kind removed every friendship: friends were told OFFLINE and got no
    more updates."""
    await add_friends(redis_server.url, (FRIEND, ALICE))
    async with daemons(redis_server.url, 2, "--redis-resync-interval", "1") as (one, two):
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher) as (friend, _), \
                online(one, ALICE) as (_, beater):
            await beater.move("before")
            await watcher.wait_for(lambda: watcher.last(ALICE)
                                   and watcher.last(ALICE).realm == "before")

            redis_server.restart()
            for d in (one, two):
                await wait_log(d, "Redis available again")
            # The periodic audit finds a "lost" message, then the pub/sub
            # connections drop: a resync of each kind, on both instances.
            r = redis_server.client()
            try:
                r.hincrby("{presenced}:seq", "ghost", 1)
                for d in (one, two):
                    await wait_log(d, "resynchronised with Redis (audit: missed change "
                                      "messages from ghost)")
                reconnected = [d.log().count("(change feed reconnected)") for d in (one, two)]
                assert r.client_kill_filter(_type="pubsub") >= 2
            finally:
                r.close()
            for d, before in zip((one, two), reconnected, strict=True):
                await wait_log(d, "(change feed reconnected)", count=before + 1)

            await beater.move("after", 1, 1)
            await watcher.wait_for(lambda: watcher.last(ALICE).realm == "after")
            assert all(u.online for u in watcher.of(ALICE))
            assert [f.address for f in await friend.get_online_friends()] == [ALICE.address]
            assert friend_set(redis_server, FRIEND) == {ALICE.address}
            assert friend_set(redis_server, ALICE) == {FRIEND.address}


async def test_serve_loads_the_friends_file_into_redis_and_rebuilds_from_it(
        redis_server, tmp_path):
    friends = tmp_path / "friends.csv"
    friends.write_text(f"{FRIEND.address},{ALICE.address}\n{BOB.address},{CAROL.address}\n")
    async with daemons(redis_server.url, 2, "--friends", str(friends)) as (one, two):
        # Loaded once; the second instance found it there (idempotent).
        await wait_log(one, "loaded 2 friendships from")
        assert "(2 new to the store)" in one.log()
        assert "(0 new to the store)" in two.log()
        assert "rebuilt from the friends file" in one.log()  # the persistence warning
        assert friend_set(redis_server, BOB) == {CAROL.address}
        watcher = Watcher()
        async with online(two, FRIEND, watcher=watcher), online(one, ALICE):
            await watcher.wait_for(lambda: watcher.last(ALICE))

            redis_server.restart()
            for d in (one, two):
                await wait_log(d, "rebuilt friendships from the friends file")
            # Nobody connected knows Bob and Carol: the file does.
            assert friend_set(redis_server, BOB) == {CAROL.address}
            assert friend_set(redis_server, CAROL) == {BOB.address}
            assert friend_set(redis_server, FRIEND) == {ALICE.address}
            assert all(u.online for u in watcher.of(ALICE))


def test_a_malformed_friends_file_with_redis_is_one_line_and_exit_2(redis_server, tmp_path):
    friends = tmp_path / "friends.csv"
    friends.write_text(f"{FRIEND.address},{ALICE.address}\n0xnot-an-address,0xabc\n")
    out = subprocess.run(
        [sys.executable, "-m", "presenced", "serve", "--port", "0", "--admin-port", "0",
         "--redis-url", redis_server.url, "--friends", str(friends)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "line 2" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Nothing was loaded.
    assert friend_set(redis_server, FRIEND) == set()


async def test_a_login_replayed_on_another_instance_is_closed(redis_server):
    """The same signed headers on two instances: the second session is closed with 3003."""
    async with daemons(redis_server.url, 2) as (one, two):
        stamp = BOB.login_timestamp_ms()
        async with PresenceClient.connect(one.url, BOB, timestamp_ms=stamp) as first:
            with pytest.raises(ConnectionEnded) as ended:
                # Accepted at first (a login never waits for Redis), closed once the second
                # instance's claim of the frame finds the first one's.
                async with PresenceClient.connect(two.url, BOB, timestamp_ms=stamp) as replay:
                    with trio.fail_after(10):
                        async with replay.subscribe() as sub:
                            async for _ in sub:
                                pass
            assert ended.value.code == 3003
            assert "another instance" in (ended.value.reason or "")
            # The first session is untouched, and a fresh login works on either instance.
            await first.heartbeat("home", 0, 0)
            async with PresenceClient.connect(two.url, BOB) as again:
                await again.heartbeat("home", 1, 1)
        await wait_log(two, "(replayed)")
