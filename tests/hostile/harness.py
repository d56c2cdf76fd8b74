"""The hostile-client suite's pieces: a server in-process on loopback, a canary user, and raw
attackers that speak WebSocket and RPC however they like.

The canary is what every attack is measured against: a user who heartbeats, has a friend whose
changes reach its subscription, and logs in again. `Canary.watching()` checks it over and over
while an attack runs; a check that fails, or that does not finish within CHECK_TIMEOUT_S, fails
the test. (That bound only keeps a broken server from hanging the suite: it is generous, not a
latency target; bench/hostile.py measures latencies.)
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
)

from presenced.auth.identity import Identity, login_frame
from presenced.client import PresenceClient
from presenced.engine import EngineConfig
from presenced.model import Position
from presenced.rpc.frames import (
    encode_create_port,
    encode_request,
    encode_request_module,
    encode_stream_ack,
)
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.server.hub import Hub
from presenced.store.memory import MemoryStore
from presenced.v1 import presence_pb2 as pb

# Generous bounds on one canary check and on waiting for an attacker's close: far above the
# milliseconds they take, low enough that a stalled server fails the test instead of hanging.
CHECK_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0

# Production defaults throughout; only the offline grace is short, so a closed attacker's
# friends hear of it at once. The canary heartbeats within the production rate (1/s).
SUITE_ENGINE = EngineConfig(offline_grace_ms=100)

# PresenceService's procedure ids on a fresh port, in definition order.
HEARTBEAT_ID, GET_ONLINE_FRIENDS_ID, SUBSCRIBE_ID = 1, 2, 3

_seeds = itertools.count(10_000)


def new_identity() -> Identity:
    return Identity.generate(random.Random(next(_seeds)))


def heartbeat_payload(x: int = 0, y: int = 0, realm: str = "main") -> bytes:
    return pb.PositionPayload(position=pb.Position(realm=realm, x=x, y=y)).SerializeToString()


@dataclass
class Server:
    hub: Hub
    shutdown: trio.Event
    raws: list[RawClient] = field(default_factory=list)

    async def raw(self, **kwargs: object) -> RawClient:
        """A raw attacker connected to this server, closed when the server stops."""
        client = await RawClient.connect(self.port, **kwargs)  # type: ignore[arg-type]
        self.raws.append(client)
        return client

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.hub.listen_port}/"

    @property
    def port(self) -> int:
        return self.hub.listen_port

    def client(self, identity: Identity, **kwargs: object):
        return PresenceClient.connect(self.url, identity, **kwargs)

    async def befriend(self, a: Identity | str, b: Identity | str) -> None:
        await self.hub.add_friendships([(_address(a), _address(b))])

    async def online_friends(self, who: Identity, count: int) -> list[str]:
        """`count` synthetic users, online now, all friends of `who`."""
        friends = [f"0x{random.getrandbits(160):040x}" for _ in range(count)]
        await self.hub.add_friendships([(who.address, f) for f in friends])
        for friend in friends:
            self.hub.inject_presence(friend, Position("main", 1, 1))
        return friends


def _address(who: Identity | str) -> str:
    return who if isinstance(who, str) else who.address


@asynccontextmanager
async def hostile_server(nursery: trio.Nursery, **overrides: object) -> AsyncIterator[Server]:
    """`presenced serve` in this process, on loopback ports of its own."""
    engine = overrides.pop("engine", SUITE_ENGINE)
    config = replace(ServerConfig(port=0, admin_port=0, engine=engine), **overrides)
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, store=MemoryStore(), task_status=task_status)
    )
    server = Server(hub, shutdown)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            for raw in server.raws:
                await raw.aclose()
        shutdown.set()


class Canary:
    """A user with a subscribed friend, checked while attacks run."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.me = new_identity()
        self.friend = new_identity()
        self.checks = 0
        self._login_ms = 0
        self._last_check = -math.inf

    @classmethod
    @asynccontextmanager
    async def start(cls, server: Server) -> AsyncIterator[Canary]:
        canary = cls(server)
        await server.befriend(canary.me, canary.friend)
        async with server.client(canary.me) as me, server.client(canary.friend) as friend:
            canary.client, canary.friend_client = me, friend
            async with me.subscribe() as updates:
                canary.updates = updates
                with trio.fail_after(CHECK_TIMEOUT_S):
                    await canary._until_friend(lambda u: u.status == pb.ONLINE)
                await canary.check()
                yield canary

    async def check(self) -> None:
        """One round: heartbeat answered, the friend's move delivered, a fresh login served.

        Rounds are paced to the heartbeat rate limit, which the canary, a well-behaved
        client, never exceeds.
        """
        pace = 1.0 / self.server.hub.config.engine.heartbeat_rate
        await trio.sleep_until(self._last_check + pace)
        self._last_check = trio.current_time()
        with trio.fail_after(CHECK_TIMEOUT_S):
            n = self.checks + 1
            response = await self.client.heartbeat("canary", n % 1000, 0)
            assert response.WhichOneof("response") == "position", response
            moved = await self.friend_client.heartbeat("canary", 0, n % 1000)
            assert moved.WhichOneof("response") == "position", moved
            await self._until_friend(lambda u: u.position.y == n % 1000)
            # A second connection of the canary; each login signs a fresh timestamp.
            self._login_ms = max(self._login_ms + 1, int(time.time() * 1000))
            async with self.server.client(self.me, timestamp_ms=self._login_ms) as again:
                response = await again.heartbeat("canary", n % 1000, 0)
                assert response.WhichOneof("response") == "position", response
            self.checks = n

    async def _until_friend(self, predicate) -> None:
        while True:
            batch = await self.updates.next_batch()
            assert batch is not None, "the canary's subscription ended"
            if any(u.address == self.friend.address and predicate(u) for u in batch):
                return

    @asynccontextmanager
    async def watching(self, min_checks: int = 1) -> AsyncIterator[None]:
        """Check the canary in a loop while the body runs (at least `min_checks` times)."""
        done = trio.Event()
        started = self.checks

        async def loop() -> None:
            while not done.is_set() or self.checks - started < min_checks:
                await self.check()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            try:
                yield
            finally:
                done.set()


# ---------------------------------------------------------------- raw attackers


class RawClient:
    """A WebSocket client over a bare socket: sends what it likes, reads only when told."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self.eof = False

    @classmethod
    async def connect(cls, port: int, *, handshake: bool = True, rcvbuf: int | None = None
                      ) -> RawClient:
        sock = trio.socket.socket()
        if rcvbuf is not None:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        if handshake:
            await client.send_event(Request(host=f"127.0.0.1:{port}", target="/"))
            with trio.fail_after(CHECK_TIMEOUT_S):
                while not await client._accepted():
                    pass
        return client

    async def _accepted(self) -> bool:
        data = await self.stream.receive_some(65536)
        assert data, "the server closed during the handshake"
        self.ws.receive_data(data)
        return any(isinstance(e, AcceptConnection) for e in self.ws.events())

    async def send_event(self, event: object) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_until_closed(self, *events: object) -> bool:
        """Send events (messages as bytes) until the server ends the connection; whether it did."""
        try:
            for event in events:
                if isinstance(event, bytes):
                    event = BytesMessage(data=event)
                await self.stream.send_all(self.ws.send(event))
                await trio.lowlevel.checkpoint()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return False

    async def send(self, *messages: bytes) -> None:
        await self.stream.send_all(b"".join(self.ws.send(BytesMessage(data=m))
                                            for m in messages))

    async def login(self, identity: Identity) -> None:
        await self.send(login_frame(identity, int(time.time() * 1000)).encode())
        await self.read_messages(1)  # SERVER_READY

    async def open_presence_port(self, name: str = "attacker") -> None:
        """CREATE_PORT and REQUEST_MODULE, answers read (port id is the server's)."""
        await self.send(encode_create_port(1, name))
        (created,) = await self.read_messages(1)
        from presenced.rpc import wire_pb2

        self.port_id = wire_pb2.CreatePortResponse.FromString(created).port_id
        await self.send(encode_request_module(2, self.port_id, "PresenceService"))
        await self.read_messages(1)

    def request(self, number: int, procedure_id: int, payload: bytes = b"") -> bytes:
        return encode_request(number, self.port_id, procedure_id, payload)

    def ack(self, number: int, seq: int) -> bytes:
        return encode_stream_ack(number, self.port_id, seq)

    async def read_messages(self, count: int) -> list[bytes]:
        with trio.fail_after(CHECK_TIMEOUT_S):
            while len(self.messages) < count:
                if not await self._read():
                    break
        taken, self.messages = self.messages[:count], self.messages[count:]
        return taken

    async def _read(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self.messages.append(bytes(event.data))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
            elif isinstance(event, Ping):
                await self.send_event(event.response())
        return True

    async def wait_closed(self, timeout: float = CLOSE_TIMEOUT_S) -> int | None:
        """Read until the server closes; the close code (None: the socket just ended)."""
        with trio.fail_after(timeout):
            while self.close_code is None and not self.eof:
                await self._read()
        return self.close_code

    async def aclose(self) -> None:
        await self.stream.aclose()
