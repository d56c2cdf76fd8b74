"""The server end to end, in-process, over real WebSockets on loopback."""

from __future__ import annotations

import json
import random
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from presenced.auth.identity import Identity, login_frame
from presenced.client import ConnectionEnded, PresenceClient, RemoteError
from presenced.client import open_websocket as open_websocket_url
from presenced.engine import EngineConfig
from presenced.model import Position
from presenced.rpc import wire_pb2
from presenced.rpc.frames import (
    SERVER_READY_FRAME,
    encode_create_port,
    encode_request_module,
)
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.server.listen_queue import accept_queue
from presenced.store.base import StoreUnavailable
from presenced.store.memory import MemoryStore
from presenced.v1 import presence_pb2 as pb
from tests.support.waits import now_ms, wait_until

USERS = [Identity.generate(random.Random(i)) for i in range(4)]
ALICE, BOB, CAROL, DAVE = USERS
ONLINE = pb.ONLINE
OFFLINE = pb.OFFLINE


class Running:
    def __init__(self, hub, shutdown: trio.Event) -> None:
        self.hub = hub
        self.shutdown = shutdown
        self.url = f"ws://127.0.0.1:{hub.listen_port}/"

    def client(self, identity: Identity):
        return PresenceClient.connect(self.url, identity)


@asynccontextmanager
async def running(nursery, friendships=((ALICE, BOB), (ALICE, CAROL)), store=None,
                  **overrides):
    engine = overrides.pop("engine", EngineConfig(offline_grace_ms=100))
    config = replace(ServerConfig(port=0, admin_port=0, engine=engine), **overrides)
    store = store or MemoryStore()
    await store.load_friendships((a.address, b.address) for a, b in friendships)
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, store=store, task_status=task_status)
    )
    try:
        yield Running(hub, shutdown)
    finally:
        shutdown.set()


async def expect_close(ws, timeout: float = 5.0) -> int:
    """Read until the server closes; returns the close code."""
    with trio.fail_after(timeout):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as e:
                return e.reason.code


# ------------------------------------------------------------------- login


async def test_server_ready_is_the_first_frame_after_login(nursery):
    async with running(nursery) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(login_frame(ALICE, now_ms()).encode())  # binary, like Godot
        assert await ws.get_message() == SERVER_READY_FRAME == bytes.fromhex("0d00000058")


async def test_frames_sent_right_behind_the_login_are_processed_not_dropped(nursery):
    # Unity sends CREATE_PORT and REQUEST_MODULE without waiting for anything.
    async with running(nursery) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(login_frame(ALICE, now_ms()))  # text, like Unity
        await ws.send_message(encode_create_port(7, "social_service"))
        await ws.send_message(encode_request_module(8, 1, "PresenceService"))
        assert await ws.get_message() == SERVER_READY_FRAME
        created = wire_pb2.CreatePortResponse.FromString(await ws.get_message())
        loaded = wire_pb2.RequestModuleResponse.FromString(await ws.get_message())
        assert created.message_identifier & 0x07FFFFFF == 7
        assert loaded.message_identifier & 0x07FFFFFF == 8
        names = {p.procedure_name for p in loaded.procedures}
        assert names == {
            "PositionHeartbeat", "GetOnlineFriends", "SubscribeFriendshipPresenceUpdates"
        }


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\xff\xfe\x00garbage",
        '{"x-identity-timestamp": "1"}',
        "[]",
    ],
)
async def test_bad_login_frames_close_with_3003(nursery, frame):
    async with running(nursery) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(frame)
        assert await expect_close(ws) == 3003
    assert sum(n for (result, _), n in srv.hub.metrics.logins.items() if result == "failed") == 1


async def test_forged_signature_closes_with_3003_and_a_reason(nursery):
    async with running(nursery) as srv, open_websocket_url(srv.url) as ws:
        # Alice's chain with Bob's final signature: the signer does not match.
        a, b = json.loads(login_frame(ALICE, now_ms())), json.loads(login_frame(BOB, now_ms()))
        a["x-identity-auth-chain-2"] = b["x-identity-auth-chain-2"]
        await ws.send_message(json.dumps(a))
        with trio.fail_after(5):
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.get_message()
        assert info.value.reason.code == 3003
        assert "Unauthorized" in info.value.reason.reason


async def test_stale_timestamp_closes_with_3003(nursery):
    async with running(nursery) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(login_frame(ALICE, now_ms() - 10 * 60 * 1000))
        assert await expect_close(ws) == 3003


async def test_silence_closes_with_3004(nursery):
    async with running(nursery, auth_timeout_s=0.2) as srv, open_websocket_url(srv.url) as ws:
        assert await expect_close(ws) == 3004
    assert srv.hub.metrics.logins["failed", "timeout"] == 1


# ------------------------------------------------------------ presence RPCs


async def test_heartbeat_get_online_friends_and_live_updates(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice:
        async with alice.subscribe() as updates:
            async with srv.client(BOB) as bob:
                (first,) = await updates.next_batch()
                assert (first.address, first.status) == (BOB.address, ONLINE)
                response = await bob.heartbeat("main", 10, -20)
                assert response.WhichOneof("response") == "position"
                (moved,) = await updates.next_batch()
                assert (moved.position.realm, moved.position.x, moved.position.y) == (
                    "main", 10, -20
                )
                friends = await bob.get_online_friends()
                assert [f.address for f in friends] == [ALICE.address]
                assert friends[0].last_seen_ms > 0
            (gone,) = await updates.next_batch()
            assert (gone.address, gone.status) == (BOB.address, OFFLINE)
    # Online, moved, offline: each timed from its change (the offline from
    # the end of the grace, not from Bob's last heartbeat).
    latency = srv.hub.metrics.notify_latency
    assert latency.count == 3
    assert latency.total < 1.0


async def test_unchanged_heartbeat_tells_nobody(nursery):
    async with running(nursery, engine=EngineConfig(heartbeat_rate=100, heartbeat_burst=10)) as srv:
        async with srv.client(ALICE) as alice, srv.client(BOB) as bob:
            await bob.heartbeat("main", 1, 1)
            async with alice.subscribe() as updates:
                (snapshot,) = await updates.next_batch()
                assert snapshot.position.x == 1
                await bob.heartbeat("main", 1, 1)
                await bob.heartbeat("main", 2, 1)
                (moved,) = await updates.next_batch()
                assert moved.position.x == 2  # the unchanged one produced nothing


async def test_heartbeat_errors_are_typed(nursery, mock_clock):
    # The server's clock follows trio's: jumping the mock clock refills the rate limiter.
    async with running(nursery, engine=EngineConfig(heartbeat_burst=1)) as srv:
        async with srv.client(BOB) as bob:
            assert (await bob.heartbeat("", 0, 0)).WhichOneof("response") == "bad_request"
            mock_clock.jump(1.0)
            assert (await bob.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
            limited = await bob.heartbeat("main", 1, 0)
            assert limited.WhichOneof("response") == "too_many_requests"
            assert 0 < limited.too_many_requests.retry_after_ms <= 1000
            too_far = Position("main", 5000, 0)
            mock_clock.jump(1.0)
            r = await bob.heartbeat(too_far.realm, too_far.x, too_far.y)
            assert r.WhichOneof("response") == "bad_request"
            assert "x outside" in r.bad_request.message


async def test_invalid_protobuf_payload_is_a_remote_error_not_a_disconnect(nursery):
    async with running(nursery) as srv, srv.client(BOB) as bob:
        with pytest.raises(RemoteError, match="invalid payload"):
            await bob.heartbeat_raw(b"\x0a\xff\xff\xff")
        assert (await bob.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.bad_input["invalid-payload"] == 1


async def test_get_online_friends_streams_batches_of_at_most_100(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice:
        friends = [f"0x{i:040x}" for i in range(1, 251)]
        await srv.hub.add_friendships((ALICE.address, f) for f in friends)
        for f in friends:
            srv.hub.inject_presence(f, Position("main", 1, 1))
        stream = await alice.open_stream(
            alice.procedures["GetOnlineFriends"],
            lambda raw: list(pb.UsersResponse.FromString(raw).users),
        )
        sizes = [len(batch) async for batch in stream]
        assert sizes == [100, 100, 50]


async def test_second_subscription_ends_the_first(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice:
        async with alice.subscribe() as first:
            async with alice.subscribe() as second:
                assert await first.next_batch() is None  # closed by the server
                async with srv.client(BOB):
                    (online,) = await second.next_batch()
                    assert online.address == BOB.address


async def test_runtime_friendship_changes_reach_subscriptions(nursery):
    async with running(nursery, friendships=()) as srv:
        async with srv.client(ALICE) as alice, srv.client(DAVE) as dave:
            await dave.heartbeat("main", 3, 3)
            async with alice.subscribe() as updates:
                await srv.hub.add_friendships([(ALICE.address, DAVE.address)])
                (added,) = await updates.next_batch()
                assert (added.address, added.status, added.position.x) == (DAVE.address, ONLINE, 3)
                await srv.hub.remove_friendships([(DAVE.address, ALICE.address)])
                (removed,) = await updates.next_batch()
                assert (removed.address, removed.status) == (DAVE.address, OFFLINE)


# ------------------------------------------------------- bad input, overload


async def test_oversized_frame_closes_with_1009_and_spares_others(nursery):
    async with running(nursery, max_frame_bytes=1024) as srv, srv.client(ALICE) as alice:
        async with alice.subscribe() as updates:
            async with srv.client(BOB) as bob:
                await updates.next_batch()
                await bob.ws.send_message(b"\x00" * 5000)
                with pytest.raises(ConnectionEnded) as info:
                    with trio.fail_after(5):
                        await bob.heartbeat("main", 1, 1)
                assert info.value.code == 1009
            (gone,) = await updates.next_batch()
            assert gone.status == OFFLINE
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.bad_input["oversized"] == 1


async def test_a_heartbeat_flood_closes_that_connection_with_1008_only(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice:
        async with alice.subscribe() as updates, srv.client(BOB) as bob:
            await updates.next_batch()
            payload = pb.PositionPayload(position=pb.Position(realm="r", x=1, y=1))
            # Hundreds of heartbeats without waiting for answers: far over 1 a second.
            for _ in range(300):
                bob._rpc.call(bob.port_id, bob.procedures["PositionHeartbeat"],
                              payload.SerializeToString())
            with pytest.raises(ConnectionEnded) as info:
                with trio.fail_after(5):
                    await bob.heartbeat("main", 1, 1)
            assert (info.value.code, info.value.reason) == (
                1008, "too many heartbeats: heartbeats far over the limit of 1 per second")
            # Friends hear that Bob went offline, as after any other close.
            with trio.fail_after(5):
                while not any(u.address == BOB.address and u.status == OFFLINE
                              for u in await updates.next_batch()):
                    pass
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.disconnects["heartbeat-flood"] == 1


async def test_a_message_flood_closes_that_connection_with_1008_only(nursery):
    async with running(nursery, max_messages_per_s=100, message_burst=200) as srv, \
            srv.client(ALICE) as alice, srv.client(BOB) as bob:
        # Frames that change nothing (DESTROY_PORT of no port) but must each be read.
        for _ in range(400):
            bob._rpc.destroy_port(999, fresh_number=True)
        with pytest.raises(ConnectionEnded) as info:
            with trio.fail_after(5):
                await bob.heartbeat("main", 1, 1)
        assert (info.value.code, info.value.reason) == (1008, "too many messages")
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.disconnects["flood"] == 1


async def test_unparseable_rpc_frame_closes_that_connection_with_1002_only(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice, srv.client(BOB) as bob:
        await bob.ws.send_message(b"\x0d\x00\x00\x00\x78garbage")  # message type 15
        with pytest.raises(ConnectionEnded) as info:
            with trio.fail_after(5):
                await bob.heartbeat("main", 1, 1)
        assert info.value.code == 1002
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.bad_input["protocol-error"] == 1


async def test_a_handler_exception_is_contained(nursery, monkeypatch):
    async with running(nursery) as srv, srv.client(ALICE) as alice, srv.client(BOB) as bob:
        def boom(*args):
            raise RuntimeError("boom")

        monkeypatch.setattr(srv.hub.engine, "heartbeat", boom)
        with pytest.raises(RemoteError, match="internal error"):
            await bob.heartbeat("main", 1, 1)
        monkeypatch.undo()
        assert (await bob.heartbeat("main", 1, 1)).WhichOneof("response") == "position"
        assert (await alice.heartbeat("main", 1, 1)).WhichOneof("response") == "position"
    assert srv.hub.metrics.handler_errors == 1


async def test_subscriber_that_stops_acking_is_disconnected_without_delaying_others(nursery):
    engine = EngineConfig(heartbeat_rate=1000, heartbeat_burst=1000)
    async with running(
        nursery, friendships=((ALICE, BOB), (CAROL, BOB)), engine=engine,
        ping_interval_s=0.1, stuck_timeout_s=0.3,
    ) as srv, srv.client(ALICE) as alice, srv.client(CAROL) as carol:
        async with alice.subscribe() as stuck, carol.subscribe() as healthy:
            async with srv.client(BOB) as bob:
                await stuck.next_batch()  # and then never asks for more
                await healthy.next_batch()
                for x in range(20):
                    await bob.heartbeat("main", x, 0)
                    (update,) = await healthy.next_batch()
                    assert update.position.x == x
                await wait_until(lambda: srv.hub.metrics.disconnects["slow-consumer"] == 1)
                with pytest.raises(ConnectionEnded) as info:
                    await stuck.next_batch()
                assert info.value.code == 1008
                await bob.heartbeat("main", 99, 0)
                (update,) = await healthy.next_batch()
                assert update.position.x == 99


async def test_updates_a_cancelled_stream_never_sent_are_counted_as_dropped(nursery):
    engine = EngineConfig(heartbeat_rate=1000, heartbeat_burst=1000)
    async with running(nursery, friendships=((ALICE, BOB),), engine=engine) as srv, \
            srv.client(BOB) as bob, srv.client(ALICE) as alice:
        await bob.heartbeat("main", 0, 0)
        async with alice.subscribe() as sub:
            await sub.next_batch()  # the snapshot, never acknowledged
            await bob.heartbeat("main", 1, 0)  # waits in the stream's mailbox
            assert srv.hub.metrics.updates_dropped == 0
            await sub.cancel()
            await wait_until(lambda: srv.hub.metrics.updates_dropped == 1)
        # The connection lives on.
        assert (await alice.heartbeat("main", 2, 0)).WhichOneof("response") == "position"


async def test_a_client_that_stops_answering_pings_is_closed(nursery):
    # A raw WebSocket client that completes the handshake and the login,
    # then never reads again: the server's keepalive must give up on it.
    async with running(nursery, ping_interval_s=0.1, ping_timeout_s=0.2) as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.hub.listen_port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
        with trio.fail_after(5):
            while True:
                ws.receive_data(await stream.receive_some(65536))
                if any(isinstance(e, AcceptConnection) for e in ws.events()):
                    break
        await stream.send_all(ws.send(BytesMessage(login_frame(BOB, now_ms()).encode())))
        await wait_until(lambda: srv.hub.engine.session_count == 1)
        await wait_until(lambda: srv.hub.engine.session_count == 0)
        assert srv.hub.metrics.disconnects["ping-timeout"] == 1
        await stream.aclose()


async def test_shutdown_closes_connections_with_1001(nursery):
    async with running(nursery) as srv, srv.client(ALICE) as alice:
        srv.shutdown.set()
        with pytest.raises(ConnectionEnded) as info:
            with trio.fail_after(5):
                async with alice.subscribe() as updates:
                    await updates.next_batch()
                    await updates.next_batch()
        assert info.value.code == 1001


async def test_clients_vanishing_during_the_handshake_do_not_hurt_the_server(nursery):
    # A reset right after the upgrade request used to escape the handler and,
    # through trio-websocket's nursery, take every connection down with it.
    import socket
    import struct

    async with running(nursery) as srv:
        request = (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        for _ in range(50):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", srv.hub.listen_port))
            await sock.send(request)
            # SO_LINGER 0: close with a reset, as a vanished client would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await trio.sleep(0.2)
        async with srv.client(ALICE) as alice:
            assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"


async def test_an_error_while_accepting_is_contained(nursery, monkeypatch):
    import presenced.server.app as app_module
    from presenced.server.connection import Connection

    async with running(nursery) as srv, srv.client(ALICE) as alice:
        def broken(*args):
            raise OSError(107, "Transport endpoint is not connected")

        # Before the handshake: the socket is closed at once.
        monkeypatch.setattr(app_module, "Connection", broken)
        with pytest.raises((HandshakeError, ConnectionEnded)):
            async with PresenceClient.connect(srv.url, BOB, connect_timeout=2):
                pass
        monkeypatch.undo()
        # In a handler: that connection is closed with 1011.
        monkeypatch.setattr(Connection, "on_open", broken)
        with pytest.raises(ConnectionEnded) as info:
            async with srv.client(BOB):
                pass
        assert info.value.code == 1011
        monkeypatch.undo()
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
        async with srv.client(BOB) as bob:
            assert (await bob.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.handler_errors == 1


async def test_a_closed_connection_is_freed_without_the_garbage_collector(nursery):
    """No reference cycle keeps a finished connection alive until a GC pass.

    The server runs with high GC thresholds, so a cycle would hold every
    closed connection's buffers and state for a long time.
    """
    import gc
    import weakref

    async with running(nursery) as srv:
        gc.collect()
        gc.disable()
        try:
            async with srv.client(ALICE) as alice:
                await alice.heartbeat("r", 1, 1)
                async with alice.subscribe():
                    conn = next(iter(srv.hub.live))
                    ref = weakref.ref(conn)
                    transport_ref = weakref.ref(conn.transport)
                    session_ref = weakref.ref(conn.session)
                    del conn
            await wait_until(lambda: not srv.hub.live)
            await wait_until(
                lambda: ref() is None and transport_ref() is None and session_ref() is None)
        finally:
            gc.enable()


# ------------------------------------------------- the login's friend set from the store


class GatedStore(MemoryStore):
    """A store whose friend sets are never cached and are read only once `gate` is set, as
    with Redis; `down` makes the read fail as an unreachable Redis does."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.reads = 0
        self.down = False

    def cached_friends(self, address):
        return None

    async def friends_of(self, address):
        self.reads += 1
        await self.gate.wait()
        if self.down:
            raise StoreUnavailable("redis is down")
        return await super().friends_of(address)


async def test_frames_behind_the_login_wait_for_the_friend_set(nursery):
    store = GatedStore()
    async with running(nursery, store=store) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(login_frame(ALICE, now_ms()))
        await ws.send_message(encode_create_port(7, "social_service"))
        await ws.send_message(encode_request_module(8, 1, "PresenceService"))
        await wait_until(lambda: store.reads == 1)
        assert srv.hub.admission.pending == 1 and not srv.hub.connections
        store.gate.set()
        assert await ws.get_message() == SERVER_READY_FRAME
        created = wire_pb2.CreatePortResponse.FromString(await ws.get_message())
        loaded = wire_pb2.RequestModuleResponse.FromString(await ws.get_message())
        assert created.message_identifier & 0x07FFFFFF == 7
        assert loaded.message_identifier & 0x07FFFFFF == 8
        assert srv.hub.admission.pending == 0 and srv.hub.admission.logged_in == 1
    assert srv.hub.metrics.logins["ok", ""] == 1


async def test_a_login_while_the_store_is_unreachable_closes_with_1013(nursery):
    store = GatedStore()
    store.down = True
    store.gate.set()
    async with running(nursery, store=store) as srv, open_websocket_url(srv.url) as ws:
        await ws.send_message(login_frame(ALICE, now_ms()))
        assert await expect_close(ws) == 1013
    assert srv.hub.metrics.logins["failed", "store"] == 1
    assert srv.hub.admission.pending == 0 and srv.hub.admission.logged_in == 0


# ------------------------------------------------ connection caps (issue 14 item 4)


async def connect_silently(port: int, count: int) -> list:
    """Sockets (the standard library's, non-blocking) that connect and never send a byte."""
    from presenced.ws.transport import open_socket

    return [await open_socket("127.0.0.1", port) for _ in range(count)]


async def healthz(hub) -> int:
    import httpx

    async with httpx.AsyncClient(trust_env=False) as http:
        return (await http.get(f"http://127.0.0.1:{hub.admin_port}/healthz")).status_code


async def test_silent_sockets_past_the_per_address_limit_are_closed_and_others_served(nursery):
    async with running(nursery, max_pending_logins_per_address=4) as srv:
        admission = srv.hub.admission
        admission.limits = replace(admission.limits, grace_s=0.2)
        silent = await connect_silently(srv.hub.listen_port, 6)
        # Upgraded to WebSocket, then silent.
        upgraded = await connect_silently(srv.hub.listen_port, 4)
        for sock in upgraded:
            sock.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        # Past the grace, the source (127.0.0.1) keeps 4 sockets awaiting login; the rest go.
        await wait_until(lambda: srv.hub.metrics.disconnects["login-limit"] == 6)
        assert admission.pending == 4
        # The same address logs in meanwhile (its socket is young), the admin endpoint answers.
        async with srv.client(BOB) as bob:
            assert (await bob.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
        assert await healthz(srv.hub) == 200
        # Those closed before the upgrade see the end of the stream; after it, a 1013.
        ended = [sock for sock in silent + upgraded if _closed_by_server(sock)]
        assert len(ended) == 6
        for sock in silent + upgraded:
            sock.close()


def _closed_by_server(sock) -> bool:
    """Whether the server closed `sock` (reads what it sent, without waiting)."""
    import socket

    data = b""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            # A WebSocket close frame with 1013 comes before the end of an upgraded socket.
            return not data.startswith(b"HTTP/1.1 101") or b"\x88" in data
        data += chunk


async def test_silent_sockets_get_the_login_timeout(nursery):
    async with running(nursery, auth_timeout_s=0.3) as srv:
        silent = await connect_silently(srv.hub.listen_port, 3)
        await wait_until(lambda: srv.hub.admission.pending == 3)
        await wait_until(lambda: srv.hub.admission.pending == 0)
        assert srv.hub.admission.sockets == 0 and not srv.hub.live
        for sock in silent:
            sock.close()


async def test_at_the_limit_of_sockets_awaiting_login_clients_wait_in_the_backlog(nursery):
    async with running(nursery, max_pending_logins=3) as srv:
        hub = srv.hub
        silent = await connect_silently(hub.listen_port, 3)
        await wait_until(lambda: hub.admission.pending == 3)
        logged_in = trio.Event()

        async def log_in() -> None:
            async with srv.client(BOB) as bob:
                await bob.heartbeat("main", 0, 0)
                logged_in.set()

        async with trio.open_nursery() as clients:
            clients.start_soon(log_in)
            await trio.testing.wait_all_tasks_blocked()
            # Connected (the kernel's backlog) but not accepted: the accept loop waits, and
            # says so (a metric, the listen queue, one log line).
            assert not logged_in.is_set() and hub.admission.pending == 3
            assert await healthz(hub) == 200
            assert hub.metrics.accept_pauses == {"awaiting_login": 1}
            [listener] = hub.listeners
            waiting, limit = accept_queue(listener)
            assert waiting == 1 and limit > 0
            silent[0].close()
            with trio.fail_after(5):
                await logged_in.wait()
            assert hub.metrics.accept_paused_s["awaiting_login"] > 0
            assert accept_queue(listener)[0] == 0
        for sock in silent[1:]:
            sock.close()


async def test_past_max_connections_a_login_is_refused_with_1013(nursery):
    async with running(nursery, max_connections=1) as srv, srv.client(ALICE) as alice:
        with pytest.raises(ConnectionEnded) as info:
            async with srv.client(BOB):
                pass
        assert info.value.code == 1013
        assert (await alice.heartbeat("main", 0, 0)).WhichOneof("response") == "position"
    assert srv.hub.metrics.disconnects["full"] == 1


def test_the_default_caps_come_from_the_descriptor_limit():
    from presenced.server.admission import fd_reserve
    from presenced.server.hub import open_files_limit, server_limits

    limits = server_limits(ServerConfig())
    assert limits.sockets == open_files_limit() - fd_reserve(0)
    assert limits.logged_in == limits.sockets
    assert limits.pending == min(16384, limits.sockets)
    assert limits.pending_per_source == 64
    redis = server_limits(ServerConfig(redis_url="redis://127.0.0.1:1/0"), nofile=20_000)
    assert redis.sockets == 20_000 - fd_reserve(16)
    explicit = server_limits(ServerConfig(max_connections=100, max_pending_logins=10,
                                          max_pending_logins_per_address=2), nofile=20_000)
    assert (explicit.logged_in, explicit.pending, explicit.pending_per_source) == (100, 10, 2)
