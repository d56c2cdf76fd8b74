"""Friendships and blocks from the social service's PostgreSQL and events, end to end.

A real PostgreSQL (a database of our own per test, the social service's
schema), a private redis-server for the social service's events, the server
in-process over real WebSockets, and our protocol client subscribed. Passes
are run on demand (`reconcile_now`) so that each step is deterministic; the
periodic loop itself is exercised by tests/test_friends_db_daemon.py.
"""

from __future__ import annotations

import json
import random
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import redis
import trio

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.engine import EngineConfig
from presenced.graph.reconcile import PassKind
from presenced.graph.social_events import BLOCK_CHANNEL, FRIENDSHIP_CHANNEL
from presenced.server.app import StartupFailed, serve
from presenced.server.config import ServerConfig
from presenced.v1 import presence_pb2 as pb
from tests.support.postgres import SocialDatabase, url_of

USERS = [Identity.generate(random.Random(500 + i)) for i in range(4)]
ALICE, BOB, CAROL, DAVE = USERS
ONLINE, OFFLINE = pb.ONLINE, pb.OFFLINE
# Long: passes run only when a test asks (reconcile_now).
NEVER = 3600.0


class Running:
    def __init__(self, hub) -> None:
        self.hub = hub
        self.source = hub.friends_db
        self.url = f"ws://127.0.0.1:{hub.listen_port}/"
        self.admin = f"http://127.0.0.1:{hub.admin_port}"

    def client(self, identity: Identity):
        return PresenceClient.connect(self.url, identity)

    async def reconcile(self, kind: PassKind | None = None) -> bool:
        return await self.source.reconcile_now(kind)

    async def friends(self, address: str) -> frozenset[str]:
        return await self.hub.store.friends_of(address)


@asynccontextmanager
async def running(nursery, db: SocialDatabase, events_url: str | None = None, **overrides):
    config = ServerConfig(
        port=0, admin_port=0, engine=EngineConfig(offline_grace_ms=100),
        friends_db_url=db.url, friends_db_reconcile_interval_s=NEVER,
        friends_db_full_interval_s=NEVER, social_events_url=events_url,
    )
    config = replace(config, **overrides)
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, task_status=task_status))
    try:
        yield Running(hub)
    finally:
        shutdown.set()


async def next_update(sub) -> tuple[str, int]:
    with trio.fail_after(10):
        (update,) = await sub.next_batch()
    return update.address, update.status


def publish(url: str, channel: str, body: dict) -> None:
    with redis.Redis.from_url(url) as r:
        r.publish(channel, json.dumps(body))


def friendship_event(action: str, sender: Identity, to: Identity) -> dict:
    return {"id": "00000000-0000-0000-0000-000000000000", "from": sender.address,
            "to": to.address, "action": action, "timestamp": 1764331000000}


def block_event(blocker: Identity, blocked: Identity, is_blocked: bool) -> dict:
    return {"blockerAddress": blocker.address, "blockedAddress": blocked.address,
            "isBlocked": is_blocked}


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# ------------------------------------------------------------------ start-up


async def test_load_at_start_with_blocks_hiding_friends_either_way(nursery, social_db):
    social_db.befriend(ALICE.address, BOB.address)
    social_db.befriend(CAROL.address.upper().replace("0X", "0x"), ALICE.address)
    social_db.befriend(ALICE.address, DAVE.address)
    social_db.unfriend(ALICE.address, DAVE.address)
    social_db.befriend(BOB.address, CAROL.address)
    social_db.block(CAROL.address, BOB.address)
    async with running(nursery, social_db) as srv:
        assert srv.source.stats.loaded_friendships == 2
        assert srv.source.stats.loaded_blocks == 1
        assert await srv.friends(ALICE.address) == {BOB.address, CAROL.address}
        assert await srv.friends(BOB.address) == {ALICE.address}
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 1, 1)
            (online,) = await alice.get_online_friends()
            assert online.address == BOB.address


async def test_database_unavailable_at_start_is_a_clear_error(nursery):
    config = ServerConfig(port=0, admin_port=0,
                          friends_db_url=url_of("presenced_no_such_database_x"))
    with pytest.RaisesGroup(pytest.RaisesExc(StartupFailed, match="cannot read the friends "
                                             "database postgresql://127.0.0.1:5432/"),
                            flatten_subgroups=True):
        await serve(config, trio.Event())


# ------------------------------------------------------ reconciliation alone


async def test_reconciliation_alone_adds_ends_and_restores_a_friendship(nursery, social_db):
    async with running(nursery, social_db) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                social_db.befriend(BOB.address, ALICE.address)
                assert await srv.reconcile()
                assert await next_update(updates) == (BOB.address, ONLINE)
                social_db.unfriend(ALICE.address, BOB.address)
                assert await srv.reconcile()
                assert await next_update(updates) == (BOB.address, OFFLINE)
                social_db.befriend(ALICE.address, BOB.address)
                assert await srv.reconcile()
                assert await next_update(updates) == (BOB.address, ONLINE)
        applied = srv.source.stats.applied
        assert applied[("incremental", "friendship", "add")] == 2
        assert applied[("incremental", "friendship", "remove")] == 1


async def test_the_overlap_window_rereads_a_late_commit(nursery, social_db):
    # A transaction that started before the last pass and commits after it:
    # its updated_at is older than the pass's watermark.
    async with running(nursery, social_db) as srv:
        with social_db.conn.transaction():
            social_db.conn.execute(
                "INSERT INTO friendships (id, address_requester, address_requested, is_active, "
                "updated_at) VALUES (gen_random_uuid(), %s, %s, true, "
                "localtimestamp - interval '30 seconds')", (ALICE.address, BOB.address))
        assert await srv.reconcile()
        assert await srv.friends(ALICE.address) == {BOB.address}


# ------------------------------------------------------------------- events


async def test_events_reach_subscribers_and_the_pass_applies_nothing_twice(
    nursery, social_db, redis_server
):
    async with running(nursery, social_db, events_url=redis_server.url) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                # The row first, then the event, as the social service does.
                social_db.befriend(ALICE.address, BOB.address)
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("accept", BOB, ALICE))
                assert await next_update(updates) == (BOB.address, ONLINE)
                social_db.unfriend(ALICE.address, BOB.address)
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("delete", ALICE, BOB))
                assert await next_update(updates) == (BOB.address, OFFLINE)
                social_db.befriend(BOB.address, ALICE.address)  # re-activated
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("accept", ALICE, BOB))
                assert await next_update(updates) == (BOB.address, ONLINE)
                # The pass re-reads the row (window, and verification): no change.
                assert await srv.reconcile()
                assert srv.source.stats.applied == {
                    ("event", "friendship", "add"): 2, ("event", "friendship", "remove"): 1}
                # Requests change nothing.
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("request", CAROL, ALICE))
                await wait_until(lambda: srv.source.listener.ignored == 1)


async def test_a_lost_event_is_caught_up_by_the_reconciliation(nursery, social_db, redis_server):
    async with running(nursery, social_db, events_url=redis_server.url) as srv:
        social_db.befriend(ALICE.address, BOB.address)  # no event published
        assert await srv.friends(ALICE.address) == frozenset()
        assert await srv.reconcile()
        assert await srv.friends(ALICE.address) == {BOB.address}


async def test_an_event_for_a_row_not_there_is_undone_then_redone_by_the_database(
    nursery, social_db, redis_server
):
    async with running(nursery, social_db, events_url=redis_server.url) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("accept", BOB, ALICE))
                assert await next_update(updates) == (BOB.address, ONLINE)
                # The database disagrees: it wins.
                assert await srv.reconcile()
                assert await next_update(updates) == (BOB.address, OFFLINE)
                # The row lands late: the next pass finds it.
                social_db.befriend(BOB.address, ALICE.address)
                assert await srv.reconcile()
                assert await next_update(updates) == (BOB.address, ONLINE)
        assert srv.source.stats.applied[("event", "friendship", "add")] == 1


async def test_malformed_events_are_counted_and_ignored(nursery, social_db, redis_server):
    async with running(nursery, social_db, events_url=redis_server.url) as srv:
        with redis.Redis.from_url(redis_server.url) as r:
            r.publish(FRIENDSHIP_CHANNEL, b"\xff not json")
            r.publish(BLOCK_CHANNEL, json.dumps({"blockerAddress": "nobody"}))
            r.publish(FRIENDSHIP_CHANNEL, "x" * 100_000)
        social_db.befriend(ALICE.address, BOB.address)
        publish(redis_server.url, FRIENDSHIP_CHANNEL, friendship_event("accept", ALICE, BOB))
        await wait_until(lambda: srv.source.stats.applied)
        assert srv.source.listener.malformed == 3
        assert await srv.friends(BOB.address) == {ALICE.address}


# ------------------------------------------------------------------- blocks


@pytest.mark.parametrize("blocker_is_subscriber", [True, False])
async def test_blocks_either_way_hide_and_unblocking_restores(
    nursery, social_db, redis_server, blocker_is_subscriber
):
    social_db.befriend(ALICE.address, BOB.address)
    blocker, blocked = (ALICE, BOB) if blocker_is_subscriber else (BOB, ALICE)
    async with running(nursery, social_db, events_url=redis_server.url) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                assert await next_update(updates) == (BOB.address, ONLINE)
                social_db.block(blocker.address, blocked.address)
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("block", blocker, blocked))
                publish(redis_server.url, BLOCK_CHANNEL, block_event(blocker, blocked, True))
                assert await next_update(updates) == (BOB.address, OFFLINE)
                assert await alice.get_online_friends() == []
                # The two channels' events may come in either order.
                await wait_until(lambda: srv.source.stats.applied[("event", "block", "add")])
                assert await srv.hub.store.block_status(blocker.address, blocked.address) \
                    == (True, False)
                # Unblocking does not restore the friendship the block ended...
                social_db.unblock(blocker.address, blocked.address)
                publish(redis_server.url, BLOCK_CHANNEL, block_event(blocker, blocked, False))
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("delete", blocker, blocked))
                await wait_until(lambda: srv.source.stats.applied[
                    ("event", "block", "remove")] == 1)
                assert await srv.friends(ALICE.address) == frozenset()
                # ... befriending again does.
                social_db.befriend(blocked.address, blocker.address)
                publish(redis_server.url, FRIENDSHIP_CHANNEL,
                        friendship_event("accept", blocked, blocker))
                assert await next_update(updates) == (BOB.address, ONLINE)
                assert await srv.reconcile()


async def test_an_unblock_without_event_is_found_by_the_block_count(nursery, social_db):
    social_db.befriend(ALICE.address, BOB.address)
    social_db.conn.execute("INSERT INTO blocks (id, blocker_address, blocked_address) "
                           "VALUES (gen_random_uuid(), %s, %s)", (BOB.address, ALICE.address))
    async with running(nursery, social_db) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                assert await alice.get_online_friends() == []
                social_db.unblock(BOB.address, ALICE.address)
                assert await srv.reconcile()  # counts one block fewer
                assert await srv.reconcile()  # reads the blocks
                assert await next_update(updates) == (BOB.address, ONLINE)
        assert srv.source.stats.passes["blocks"] == 1


async def test_full_comparison_finds_a_friendship_deleted_outright(nursery, social_db):
    social_db.befriend(ALICE.address, BOB.address)
    async with running(nursery, social_db) as srv:
        social_db.conn.execute("DELETE FROM friendships")
        assert await srv.reconcile()
        assert await srv.friends(ALICE.address) == {BOB.address}
        assert await srv.reconcile(PassKind.FULL)
        assert await srv.friends(ALICE.address) == frozenset()


# ------------------------------------------------------------- the database lost


async def test_database_lost_while_serving_then_back(nursery, social_db):
    social_db.befriend(ALICE.address, BOB.address)
    async with running(nursery, social_db) as srv:
        async with srv.client(BOB) as bob, srv.client(ALICE) as alice:
            await bob.heartbeat("main", 2, 2)
            async with alice.subscribe() as updates:
                assert await next_update(updates) == (BOB.address, ONLINE)
                social_db.refuse_connections()
                assert not await srv.reconcile()
                assert not srv.source.healthy
                async with httpx.AsyncClient(base_url=srv.admin) as http:
                    ready = (await http.get("/readyz")).json()
                    assert ready["ready"] is True
                    assert "friends database unavailable" in ready["degraded"][0]
                    metrics = (await http.get("/metrics")).text
                    assert "presenced_friends_db_healthy 0.0" in metrics
                    status = (await http.get("/v1/status")).json()
                    assert status["friends_source"]["healthy"] is False
                # Still serving from memory.
                (online,) = await alice.get_online_friends()
                assert online.address == BOB.address
                social_db.allow_connections()
                social_db.befriend(ALICE.address, CAROL.address)
                async with srv.client(CAROL) as carol:
                    await carol.heartbeat("main", 3, 3)
                    assert await srv.reconcile()
                    assert srv.source.healthy
                    assert await next_update(updates) == (CAROL.address, ONLINE)
                async with httpx.AsyncClient(base_url=srv.admin) as http:
                    assert (await http.get("/readyz")).json()["degraded"] == []
        assert srv.source.stats.outages == 1


# -------------------------------------------------------------- edits refused


async def test_admin_refuses_friendship_and_block_edits_with_a_database(nursery, social_db):
    async with running(nursery, social_db) as srv:
        async with httpx.AsyncClient(base_url=srv.admin) as http:
            for method, path in [("PUT", f"/v1/friendships/{ALICE.address}/{BOB.address}"),
                                 ("DELETE", f"/v1/friendships/{ALICE.address}/{BOB.address}"),
                                 ("PUT", f"/v1/blocks/{ALICE.address}/{BOB.address}"),
                                 ("DELETE", f"/v1/blocks/{ALICE.address}/{BOB.address}"),
                                 ("POST", "/v1/friendships/import")]:
                headers = {"Content-Type": "text/csv"} if method == "POST" else {}
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 409
                assert "friends database (--friends-db)" in response.json()["error"]
            blocks = (await http.get(f"/v1/users/{ALICE.address}/blocks")).json()
            assert blocks == {"address": ALICE.address, "blocking": [], "blocked_by": []}
