"""Hostile clients (issue 14), each beside a canary user who must stay served.

Every test starts a server in this process on loopback, starts the canary (heartbeats, a
subscribed friend, fresh logins), runs one attack while checking the canary over and over, and
asserts that the attacker got the documented answer (docs/security.md): a RemoteError, or a
close with its code. Bounded: a fixed number of connections and messages, no sleeps to wait
for outcomes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
import trio
from wsproto.events import BytesMessage

from presenced.auth.identity import Identity, login_frame
from presenced.client import ConnectionEnded, RemoteError
from presenced.closes import Close
from presenced.engine import EngineConfig
from presenced.rpc.frames import encode_destroy_port
from presenced.v1 import presence_pb2 as pb
from tests.hostile.harness import (
    CHECK_TIMEOUT_S,
    GET_ONLINE_FRIENDS_ID,
    Canary,
    heartbeat_payload,
    hostile_server,
    new_identity,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow


def _users(raw: bytes) -> list[pb.UserPresence]:
    return list(pb.UsersResponse.FromString(raw).users)


# ---------------------------------------------- GetOnlineFriends amplification (item 1)


async def test_get_online_friends_amplification(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        attacker = new_identity()
        await srv.online_friends(attacker, 2000)
        async with srv.client(attacker) as client:
            gof = client.procedures["GetOnlineFriends"]
            async with canary.watching(min_checks=3):
                # 200 requests at once, none acknowledged: one is served, the rest refused,
                # by the module (one GetOnlineFriends at a time) or, once 32 refused streams
                # wait for the client to take their offer, by the protocol core.
                streams = [await client.open_stream(gof, _users) for _ in range(200)]
                refusals = set()
                for stream in streams[1:]:
                    with pytest.raises(RemoteError) as info:
                        await stream.next_batch()
                    refusals.add(str(info.value))
                assert refusals == {"at most 1 GetOnlineFriends at a time",
                                    "too many open streams on this connection"}
                (live,) = [c for c in srv.hub.connections.values()
                           if getattr(c, "address", None) == attacker.address]
                assert len(live.session.streams) == 1
                # The one served stream delivers everyone, as the attacker acknowledges.
                got = []
                async for batch in streams[0]:
                    got.extend(batch)
                assert len(got) == 2000
                # And again and again: each a full answer, one at a time.
                for _ in range(5):
                    assert len(await client.get_online_friends()) == 2000
        await canary.check()
    assert srv.hub.metrics.bad_input["too-many-streams"] > 0


async def test_get_online_friends_never_acknowledged_ends_the_connection(nursery):
    async with hostile_server(nursery, stuck_timeout_s=0.5, ping_interval_s=0.2) as srv, \
            Canary.start(srv) as canary:
        attacker = new_identity()
        await srv.online_friends(attacker, 2000)
        raw = await srv.raw()
        await raw.login(attacker)
        await raw.open_presence_port()
        async with canary.watching():
            await raw.send(raw.request(10, GET_ONLINE_FRIENDS_ID), raw.ack(10, 0))
            # One item is built; nothing more until it is acknowledged, which never happens.
            assert await raw.wait_closed() == Close.STUCK_STREAM.code
    assert srv.hub.metrics.disconnects["slow-consumer"] == 1


# ------------------------------------------------------- ports and names (item 3)


async def test_port_and_name_exhaustion(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        attackers = [new_identity() for _ in range(20)]
        async with canary.watching(min_checks=3):
            for identity in attackers:
                async with srv.client(identity, port_name="p" * 128) as client:
                    with pytest.raises(RemoteError, match="port name too long"):
                        await client._request(client._rpc.create_port("n" * 129))
                    with pytest.raises(RemoteError, match="port name too long"):
                        await client._request(client._rpc.create_port("é" * 65))  # 130 bytes
                    ports = 1
                    while True:
                        try:
                            await client._request(client._rpc.create_port("q" * 128))
                        except RemoteError as e:
                            assert "too many ports" in str(e)
                            break
                        ports += 1
                    assert ports == srv.hub.config.max_ports_per_connection == 8
                    # Still connected and served.
                    response = await client.heartbeat("main", 1, 1)
                    assert response.WhichOneof("response") == "position"


# ---------------------------------------------------------- floods (item 7)


async def test_heartbeat_flood_from_50_connections(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        attackers = [new_identity() for _ in range(50)]
        codes: list[tuple[int | None, str | None]] = []

        async def flood(identity) -> None:
            async with srv.client(identity) as client:
                payload = heartbeat_payload(1, 1)
                try:
                    for _ in range(3):  # 3 x 100 heartbeats, sent without waiting for answers
                        for _ in range(100):
                            client._rpc.call(client.port_id, client.procedures[
                                "PositionHeartbeat"], payload)
                        await client._flush()
                    with trio.fail_after(CHECK_TIMEOUT_S):
                        await client.heartbeat("main", 1, 1)
                except ConnectionEnded as e:
                    codes.append((e.code, e.reason))

        async with canary.watching(min_checks=3):
            async with trio.open_nursery() as floods:
                for identity in attackers:
                    floods.start_soon(flood, identity)
    assert codes == [(1008, Close.HEARTBEAT_FLOOD.text(
        "heartbeats far over the limit of 1 per second"))] * 50
    assert srv.hub.metrics.disconnects["heartbeat-flood"] == 50


async def test_message_flood(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        raw = await srv.raw()
        await raw.login(new_identity())
        await raw.open_presence_port()
        async with canary.watching():
            # Frames that change nothing but must each be read: past the burst, closed.
            flood = [encode_destroy_port(n, 999) for n in range(5000)]
            if not await raw.send_until_closed(*flood):
                assert await raw.wait_closed() == Close.FLOOD.code
    assert srv.hub.metrics.disconnects["flood"] == 1


async def test_slow_consumer_that_never_reads(nursery):
    # Blind acks pull stream after stream of 2,000 friends (~140 kB each) into a socket the
    # attacker never reads: the kernel's buffers fill, then the server's send queue, and the
    # connection is dropped without the server holding more than its queue.
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        attacker = new_identity()
        await srv.online_friends(attacker, 2000)
        raw = await srv.raw(rcvbuf=4096)
        await raw.login(attacker)
        await raw.open_presence_port()
        async with canary.watching(min_checks=3):
            try:
                for number in range(10, 10 + 80):
                    await raw.send(raw.request(number, GET_ONLINE_FRIENDS_ID),
                                   *[raw.ack(number, seq) for seq in range(21)])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await wait_until(lambda: srv.hub.metrics.disconnects["slow-consumer"] == 1,
                             timeout=CHECK_TIMEOUT_S)
        assert srv.hub.engine.session_count == 2  # the canary and its friend, nobody else


# ----------------------------------------------------------- frames (1009)


@pytest.mark.parametrize("attack", ["oversized", "fragmented", "never-finished"])
async def test_oversized_and_fragmented_frames(nursery, attack):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        raw = await srv.raw()
        await raw.login(new_identity())
        limit = srv.hub.config.max_frame_bytes
        async with canary.watching():
            if attack == "oversized":
                events = [b"\x00" * (limit + 1)]
            elif attack == "fragmented":
                # 100 fragments of 1 KiB: each small, the message far over the limit.
                events = [BytesMessage(data=b"\x00" * 1024, message_finished=i == 99)
                          for i in range(100)]
            else:
                # Tiny fragments that never end.
                events = [BytesMessage(data=b"\x00" * 16, message_finished=False)
                          for _ in range(limit // 16 + 2)]
            if not await raw.send_until_closed(*events):
                # Everything sent before the server reacted: its close frame comes.
                assert await raw.wait_closed() == Close.MESSAGE_TOO_BIG.code
            await wait_until(lambda: srv.hub.engine.session_count == 2)
    assert srv.hub.metrics.bad_input["oversized"] == 1


async def test_fragmented_messages_within_the_limit_are_read(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv):
        raw = await srv.raw()
        frame = login_frame(new_identity(), int(time.time() * 1000)).encode()
        # The login in 1-byte fragments: slow, legal, and read whole.
        for i, byte in enumerate(frame):
            await raw.send_event(BytesMessage(data=bytes((byte,)),
                                              message_finished=i == len(frame) - 1))
        (ready,) = await raw.read_messages(1)
        assert ready == bytes.fromhex("0d00000058")


# ----------------------------------------------------------------- logins (3003)


def _forged(victim: Identity, attacker: Identity) -> str:
    headers = json.loads(login_frame(victim, int(time.time() * 1000)))
    theirs = json.loads(login_frame(attacker, int(time.time() * 1000)))
    headers["x-identity-auth-chain-2"] = theirs["x-identity-auth-chain-2"]
    return json.dumps(headers)


async def test_forged_expired_and_stale_logins(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        victim = canary.me
        expired = Identity.generate(expiration=datetime(2020, 1, 1, tzinfo=UTC))
        now = int(time.time() * 1000)
        frames = [
            _forged(victim, new_identity()),
            login_frame(expired, now),
            login_frame(victim, now - 10 * 60 * 1000),  # signed 10 minutes ago
            login_frame(victim, now + 10 * 60 * 1000),  # 10 minutes ahead
            json.dumps({**json.loads(login_frame(victim, now)),
                        "x-identity-metadata": '{"signer":"decentraland-kernel-scene"}'}),
        ]
        codes: list[int | None] = []

        async def attempt(frame: str) -> None:
            raw = await srv.raw()
            await raw.send(frame.encode())
            codes.append(await raw.wait_closed())

        async with canary.watching(min_checks=3):
            async with trio.open_nursery() as attempts:
                for _ in range(10):  # 50 refused logins, 10 of each at once
                    for frame in frames:
                        attempts.start_soon(attempt, frame)
        assert codes == [Close.UNAUTHORIZED.code] * 50
        # The victim was never logged in by anyone else.
        assert srv.hub.engine.session_count == 2


async def test_replayed_login_headers(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        frame = login_frame(canary.me, int(time.time() * 1000))
        first = await srv.raw()
        await first.send(frame.encode())
        await first.read_messages(1)  # accepted once
        async with canary.watching():
            replay = await srv.raw()
            await replay.send(frame.encode())
            assert await replay.wait_closed() == Close.UNAUTHORIZED.code


# -------------------------------------------------------- pre-auth sockets (item 4)


async def test_pre_auth_sockets_that_never_send(nursery):
    async with hostile_server(nursery) as srv, Canary.start(srv) as canary:
        idle: list = []
        closed = 0

        async def hold(handshake: bool) -> None:
            nonlocal closed
            raw = await srv.raw(handshake=handshake)
            idle.append(raw)
            await raw.wait_closed(timeout=60)
            closed += 1

        async with trio.open_nursery() as holders:
            for i in range(1000):  # from one source address, none ever logs in
                holders.start_soon(hold, i % 2 == 0)
            await wait_until(lambda: len(idle) == 1000, timeout=30)
            async with canary.watching(min_checks=3):
                async with httpx.AsyncClient(trust_env=False) as http:
                    health = await http.get(f"http://127.0.0.1:{srv.hub.admin_port}/healthz")
                    assert health.status_code == 200
                # Past a per-source limit, sockets awaiting login are refused well before
                # the 30 s login timeout would free them.
                await wait_until(lambda: closed > 0, timeout=5)
            holders.cancel_scope.cancel()


# ------------------------------------------------------------------ the default


def test_the_suite_runs_with_production_limits():
    from dataclasses import asdict, replace

    from tests.hostile.harness import SUITE_ENGINE

    production = EngineConfig()
    assert asdict(replace(SUITE_ENGINE, offline_grace_ms=production.offline_grace_ms)) == \
        asdict(production)
