"""The RPC module framework (presenced.services) through a real server and real WebSockets.

A test module beside PresenceService exercises what the presence module does not use
(asynchronous calls, typed errors, streams that stay open), and the limits every module gets.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager

import pytest
import trio
from google.protobuf.message import DecodeError

from presenced.auth.identity import Identity
from presenced.client import PresenceClient, RemoteError
from presenced.model import Position, Presence
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.server.session import MAX_ASYNC_CALLS
from presenced.services import SERVED_MODULES, presence
from presenced.services.base import (
    AsyncUnary,
    Module,
    ProcedureError,
    ServerStream,
    Session,
    StreamSource,
    Unary,
)
from presenced.services.streams import BatchStream, OpenStream
from presenced.store.memory import MemoryStore
from presenced.v1 import presence_pb2 as pb

ALICE, BOB = (Identity.generate(random.Random(100 + i)) for i in range(2))


class Gate:
    """Holds `Slow` calls until released, and counts them."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.entered = 0


GATE = Gate()


def echo(session: Session, payload: bytes) -> bytes:
    if payload == b"fail":
        raise ProcedureError("refused: fail", 7)
    if payload == b"garbage":
        raise DecodeError("not a message")
    return session.address.encode() + b":" + payload


async def slow(session: Session, payload: bytes) -> bytes:
    GATE.entered += 1
    await GATE.release.wait()
    friends = await session.friends_of(session.address)
    return b",".join(sorted(f.encode() for f in friends))


def idle(session: Session, payload: bytes) -> StreamSource:
    return OpenStream(session, "Idle")


def count(session: Session, payload: bytes) -> StreamSource:
    return BatchStream(str(i).encode() for i in range(int(payload or b"0")))


TEST_MODULE = Module(
    "TestService",
    (
        Unary("Echo", echo),
        AsyncUnary("Slow", slow),
        ServerStream("Idle", idle),
        ServerStream("Count", count),
    ),
)


@asynccontextmanager
async def running(nursery, **overrides):
    global GATE
    GATE = Gate()
    config = ServerConfig(port=0, admin_port=0, **overrides)
    store = MemoryStore()
    await store.load_friendships([(ALICE.address, BOB.address)])
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, store=store,
                                  modules=(*SERVED_MODULES, TEST_MODULE),
                                  task_status=task_status)
    )
    try:
        yield hub, f"ws://127.0.0.1:{hub.listen_port}/"
    finally:
        shutdown.set()


@asynccontextmanager
async def connect(url: str, identity: Identity = ALICE):
    async with PresenceClient.connect(url, identity) as client:
        client.test = await client.load_module("TestService")  # type: ignore[attr-defined]
        yield client


def items(raw: bytes) -> bytes:
    return raw


async def test_procedures_get_ids_after_the_presence_module_on_the_same_port(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        assert alice.procedures == {
            "PositionHeartbeat": 1, "GetOnlineFriends": 2,
            "SubscribeFriendshipPresenceUpdates": 3,
        }
        assert alice.test == {"Echo": 4, "Slow": 5, "Idle": 6, "Count": 7}


async def test_a_unary_handler_answers_with_the_session_it_is_given(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        assert await alice.call(alice.test["Echo"], b"hi") == ALICE.address.encode() + b":hi"
        assert hub.metrics.requests["Echo"] == 1


async def test_procedure_error_and_bad_payload_are_remote_errors_and_the_connection_lives(
    nursery,
):
    async with running(nursery) as (hub, url), connect(url) as alice:
        with pytest.raises(RemoteError, match="refused: fail"):
            await alice.call(alice.test["Echo"], b"fail")
        with pytest.raises(RemoteError, match="invalid payload for Echo"):
            await alice.call(alice.test["Echo"], b"garbage")
        assert await alice.call(alice.test["Echo"], b"x") == ALICE.address.encode() + b":x"
        assert hub.metrics.bad_input["invalid-payload"] == 1


async def test_async_calls_run_in_tasks_and_are_bounded_per_connection(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        results: list[bytes] = []

        async def call_slow() -> None:
            results.append(await alice.call(alice.test["Slow"]))

        async with trio.open_nursery() as calls:
            for _ in range(MAX_ASYNC_CALLS):
                calls.start_soon(call_slow)
            with trio.fail_after(5):
                while GATE.entered < MAX_ASYNC_CALLS:
                    await trio.sleep(0.01)
            # One more is refused at once, while the others wait...
            with pytest.raises(RemoteError, match="too many calls in flight"):
                await alice.call(alice.test["Slow"])
            # ... and the connection still answers synchronous calls meanwhile.
            assert await alice.call(alice.test["Echo"], b"y") == ALICE.address.encode() + b":y"
            GATE.release.set()
        assert results == [BOB.address.encode()] * MAX_ASYNC_CALLS
        # The slots are free again.
        assert await alice.call(alice.test["Slow"]) == BOB.address.encode()


async def test_an_idle_stream_stays_open_until_cancelled(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        stream = await alice.open_stream(alice.test["Idle"], items)
        with trio.move_on_after(0.2) as scope:
            await stream.next_batch()
        assert scope.cancelled_caught
        await stream.cancel()
        await alice.heartbeat("main", 1, 1)
        session = next(iter(hub.connections.values())).session
        assert session.streams == {}


async def test_a_batch_stream_sends_one_item_per_ack_then_closes(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        stream = await alice.open_stream(alice.test["Count"], items, b"3")
        assert [item async for item in stream] == [b"0", b"1", b"2"]
        empty = await alice.open_stream(alice.test["Count"], items, b"0")
        assert [item async for item in empty] == []


async def test_streams_per_connection_are_limited(nursery):
    async with running(nursery, max_streams_per_connection=2) as (hub, url), \
            connect(url) as alice:
        await alice.open_stream(alice.test["Idle"], items)
        await alice.open_stream(alice.test["Idle"], items)
        third = await alice.open_stream(alice.test["Idle"], items)
        with pytest.raises(RemoteError, match="too many open streams"):
            await third.next_batch()
        assert await alice.call(alice.test["Echo"], b"z") == ALICE.address.encode() + b":z"


# ------------------------------------------------------------ GetOnlineFriends


def _users(raw: bytes) -> list[pb.UserPresence]:
    return list(pb.UsersResponse.FromString(raw).users)


async def test_get_online_friends_is_built_as_the_client_acknowledges(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        friends = [f"0x{i:040x}" for i in range(1, 251)]
        await hub.add_friendships((ALICE.address, f) for f in friends)
        now = hub.now_ms()
        for f in friends:
            # Online through another instance, so that the test can take them offline.
            hub.engine.apply_remote(Presence(f, True, Position("main", 1, 1), now), "other")
        stream = await alice.open_stream(alice.procedures[presence.GET_ONLINE_FRIENDS], _users)
        first = await stream.next_batch()
        assert [u.address for u in first] == friends[:100]
        # Friends who go offline before the client asks for a message are not in it: at most
        # the message after the one sent is built ahead (to know whether more will come).
        for f in friends[150:]:
            hub.engine.apply_remote_leave(f, "other", now)
        rest = [batch async for batch in stream]
        assert [[u.address for u in batch] for batch in rest] == [friends[100:200]]


async def test_one_get_online_friends_at_a_time_per_connection(nursery):
    async with running(nursery) as (hub, url), connect(url) as alice:
        friends = [f"0x{i:040x}" for i in range(1, 151)]
        await hub.add_friendships((ALICE.address, f) for f in friends)
        for f in friends:
            hub.inject_presence(f, Position("main", 1, 1))
        procedure = alice.procedures[presence.GET_ONLINE_FRIENDS]
        first = await alice.open_stream(procedure, _users)
        await first.next_batch()  # in progress: one more message to go
        second = await alice.open_stream(procedure, _users)
        with pytest.raises(RemoteError, match="at most 1 GetOnlineFriends at a time"):
            await second.next_batch()
        assert len([u async for batch in first for u in batch]) == 50
        # Finished: a new one is allowed.
        again = await alice.open_stream(procedure, _users)
        assert sum([len(batch) async for batch in again]) == 150
        assert hub.metrics.bad_input["too-many-streams"] == 1
