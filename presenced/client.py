"""A Python client for presenced, over a real WebSocket.

Used by the CLI, the load simulator and the tests. It logs in with an
AuthChain, opens one port, loads `PresenceService` and offers the three
RPCs. Streams are acknowledged lazily, when the caller takes the next item,
as the TypeScript `@dcl/rpc` client does, so a slow consumer really is slow
from the server's point of view.

    async with PresenceClient.connect(url, identity) as client:
        await client.heartbeat("main", 10, 20)
        friends = await client.get_online_friends()
        async with client.subscribe() as updates:
            async for batch in updates:
                ...
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from presenced.auth.identity import Identity, login_frame
from presenced.errors import leaf_exceptions
from presenced.rpc.client import RpcClientConnection
from presenced.rpc.events import (
    ModuleLoaded,
    PortCreated,
    RemoteErrorReceived,
    ResponseReceived,
    ServerReady,
    StreamEnded,
    StreamItem,
    StreamOffered,
)
from presenced.services.presence import (
    GET_ONLINE_FRIENDS,
    MODULE_NAME,
    POSITION_HEARTBEAT,
    SUBSCRIBE,
)
from presenced.v1 import presence_pb2 as pb


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    connect_timeout: float = 10.0,
    disconnect_timeout: float = 5.0,
    local_address: str | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client connection to `url` (ws:// or wss://) that always releases
    its socket.

    `trio_websocket.open_websocket_url` owns its TCP stream, and when the *server* starts
    the closing handshake, trio-websocket 0.12's client waits for the server's TCP close
    and then never closes its socket (its `aclose()` returns early once a close reason is
    set): a load generator churning through connections would leak one descriptor each. So
    this opens the stream itself and hands it to `wrap_client_stream` (trio-websocket's
    public API), and closes the stream, which it owns, in every case.

    `local_address` binds the client socket to that source address (e.g. 127.0.0.2): one
    source address only has ~28k ephemeral ports, so a load generator spreads its
    connections over several.

    Keeps `open_websocket_url`'s contract: HandshakeError for any failure to connect
    (ConnectionTimeout past `connect_timeout`), the body's own exception unwrapped from the
    nursery's group.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    secure = parts.scheme == "wss"
    default_port = 443 if secure else 80
    port = parts.port or default_port
    host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    stream: trio.abc.Stream | None = None
    ws: WebSocketConnection | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    tcp = await trio.open_tcp_stream(
                        parts.hostname, port, local_address=local_address
                    )
                    stream = tcp
                    if secure:
                        stream = trio.SSLStream(tcp, ssl.create_default_context(),
                                                server_hostname=parts.hostname)
                    ws = await wrap_client_stream(nursery, stream, host_header, resource)
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            except (OSError, trio.BrokenResourceError) as e:
                raise HandshakeError from e
            try:
                yield ws
            finally:
                with trio.move_on_after(disconnect_timeout) as scope:
                    scope.shield = True
                    await ws.aclose()
    except BaseExceptionGroup as group:
        # One failure (the body's, or the reader's rejection of the
        # handshake) is raised as itself, as trio-websocket does.
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            context = exc.__context__
            try:
                raise exc
            finally:
                # Keep the exception's own context, not the group it came in.
                exc.__context__ = context
                del exc, context
        raise
    finally:
        if stream is not None:
            with trio.move_on_after(disconnect_timeout) as scope:
                scope.shield = True
                await _close_stream(stream)


async def _close_stream(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SSLStream):
        # No TLS goodbye: the WebSocket closing handshake is over, or never came.
        await stream.transport_stream.aclose()
    else:
        await stream.aclose()


def _decode_users(payload: bytes) -> list[pb.UserPresence]:
    return list(pb.UsersResponse.FromString(payload).users)


def _decode_updates(payload: bytes) -> list[pb.UserPresence]:
    return list(pb.SubscribeFriendshipPresenceUpdatesResponse.FromString(payload).updates)


class RemoteError(Exception):
    """The server answered a call with a RemoteError."""


class ConnectionEnded(Exception):
    """The connection closed while a call was waiting; `code` is the close code."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed ({code}: {reason or 'no reason'})")
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class _Call:
    done: trio.Event
    result: object = None


class Subscription:
    """Batches of `UserPresence` updates from one server stream.

    Each batch is acknowledged when the next one is requested, so the server
    holds (and coalesces) updates while the caller is busy.
    """

    def __init__(
        self, client: PresenceClient, number: int, decode: Callable[[bytes], Any]
    ) -> None:
        self._client = client
        self.number = number
        self._decode = decode
        self._send, self._receive = trio.open_memory_channel[object](math.inf)
        self._last_seq: int | None = None
        self.ended = False

    def _push(self, event: object) -> None:
        self._send.send_nowait(event)

    async def next_batch(self) -> Any:
        """The next item, decoded (a list of users for the presence streams), or None when
        the server ended the stream."""
        client = self._client
        if self.ended:
            return None
        if self._last_seq is not None:
            client._rpc.ack(self.number, self._last_seq)
            await client._flush()
        while True:
            event = await self._receive.receive()
            if isinstance(event, StreamOffered):
                self._last_seq = 0
                client._rpc.ack(self.number, 0)
                await client._flush()
            elif isinstance(event, StreamItem):
                self._last_seq = event.seq
                return self._decode(event.payload)
            elif isinstance(event, StreamEnded):
                self.ended = True
                return None
            elif isinstance(event, RemoteErrorReceived):
                self.ended = True
                raise RemoteError(event.message)
            elif isinstance(event, ConnectionEnded):
                self.ended = True
                raise event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        batch = await self.next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch

    async def cancel(self) -> None:
        if not self.ended and self._client._closed is None:
            self.ended = True
            self._client._rpc.cancel_stream(self.number, self._last_seq or 0)
            await self._client._flush()
        self._client._streams.pop(self.number, None)


class PresenceClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._rpc = RpcClientConnection()
        self._calls: dict[int, _Call] = {}
        self._streams: dict[int, Subscription] = {}
        self._ready = trio.Event()
        self._closed: ConnectionEnded | None = None
        self.port_id = 0
        self.procedures: dict[str, int] = {}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        identity: Identity,
        *,
        timestamp_ms: int | None = None,
        port_name: str = "presenced-client",
        connect_timeout: float = 10.0,
        local_address: str | None = None,
    ) -> AsyncIterator[PresenceClient]:
        """Connect, log in and load the presence module.

        `local_address` binds the socket to that source address (see
        `open_websocket`).
        """
        if timestamp_ms is None:
            timestamp_ms = identity.login_timestamp_ms()
        try:
            async with open_websocket(
                url, connect_timeout=connect_timeout, local_address=local_address
            ) as ws:
                client = cls(ws)
                try:
                    await ws.send_message(login_frame(identity, timestamp_ms))
                except ConnectionClosed as e:
                    # Closed right after the upgrade: the same error as a close after it.
                    client._end(e)
                    raise client._closed from None  # type: ignore[misc]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client._read)
                    with trio.fail_after(connect_timeout):
                        await client._ready.wait()
                        if client._closed is not None:
                            raise client._closed
                        await client._open_port(port_name)
                    yield client
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Callers want the one error (a refused login, a closed
            # connection), not the nursery's wrapping of it.
            leaves = leaf_exceptions(group)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise

    # ------------------------------------------------------------------- RPCs

    async def heartbeat(self, realm: str, x: int, y: int) -> pb.PositionResponse:
        payload = pb.PositionPayload(position=pb.Position(realm=realm, x=x, y=y))
        return await self.heartbeat_raw(payload.SerializeToString())

    async def heartbeat_raw(self, payload: bytes) -> pb.PositionResponse:
        raw = await self.call(self.procedures[POSITION_HEARTBEAT], payload)
        return pb.PositionResponse.FromString(raw)

    async def get_online_friends(self) -> list[pb.UserPresence]:
        users: list[pb.UserPresence] = []
        stream = await self._stream(GET_ONLINE_FRIENDS, _decode_users)
        async for batch in stream:
            users.extend(batch)
        return users

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        stream = await self._stream(SUBSCRIBE, _decode_updates)
        try:
            yield stream
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await stream.cancel()
                except (ConnectionClosed, ConnectionEnded):
                    pass  # nothing to cancel on a closed connection

    async def close(self, code: int = 1000) -> None:
        await self.ws.aclose(code)

    # ------------------------------------------------- any module (generic)

    async def load_module(self, name: str) -> dict[str, int]:
        """Load another module on this client's port: its procedure ids by name."""
        loaded = await self._request(self._rpc.request_module(self.port_id, name))
        assert isinstance(loaded, ModuleLoaded)
        return dict(loaded.procedures)

    async def call(self, procedure_id: int, payload: bytes = b"") -> bytes:
        """A unary call; the response's payload (raises RemoteError)."""
        result = await self._request(self._rpc.call(self.port_id, procedure_id, payload))
        assert isinstance(result, ResponseReceived)
        return result.payload

    async def open_stream(
        self, procedure_id: int, decode: Callable[[bytes], Any], payload: bytes = b""
    ) -> Subscription:
        """A server stream whose items are `decode(payload)`; acknowledged as they are read."""
        number = self._rpc.call(self.port_id, procedure_id, payload)
        stream = Subscription(self, number, decode)
        self._streams[number] = stream
        await self._flush()
        return stream

    # -------------------------------------------------------------- plumbing

    async def _open_port(self, port_name: str) -> None:
        created = await self._request(self._rpc.create_port(port_name))
        assert isinstance(created, PortCreated)
        self.port_id = created.port_id
        self.procedures = await self.load_module(MODULE_NAME)

    async def _stream(self, procedure: str, decode: Callable[[bytes], Any]) -> Subscription:
        return await self.open_stream(self.procedures[procedure], decode)

    async def _request(self, number: int) -> object:
        call = self._calls[number] = _Call(trio.Event())
        await self._flush()
        await call.done.wait()
        result = call.result
        if isinstance(result, RemoteErrorReceived):
            raise RemoteError(result.message)
        if isinstance(result, ConnectionEnded):
            raise result
        return result

    async def _flush(self) -> None:
        if self._closed is not None:
            raise self._closed
        for frame in self._rpc.data_to_send():
            try:
                await self.ws.send_message(frame)
            except ConnectionClosed as e:
                self._end(e)
                raise self._closed from None  # type: ignore[misc]

    def _end(self, e: ConnectionClosed) -> None:
        if self._closed is None:
            reason = e.reason
            self._closed = ConnectionEnded(
                reason.code if reason else None, reason.reason if reason else None
            )
        for call in self._calls.values():
            call.result = self._closed
            call.done.set()
        self._calls.clear()
        for stream in self._streams.values():
            stream._push(self._closed)
        self._ready.set()

    async def _read(self) -> None:
        while True:
            try:
                data = await self.ws.get_message()
            except ConnectionClosed as e:
                self._end(e)
                return
            if isinstance(data, str):
                data = data.encode()
            for event in self._rpc.receive_frame(data):
                if isinstance(event, ServerReady):
                    self._ready.set()
                elif isinstance(event, (StreamOffered, StreamItem, StreamEnded)):
                    stream = self._streams.get(event.number)
                    if stream is not None:
                        stream._push(event)
                elif isinstance(event, RemoteErrorReceived) and event.number in self._streams:
                    self._streams[event.number]._push(event)
                else:
                    call = self._calls.pop(event.number, None)  # type: ignore[union-attr]
                    if call is not None:
                        call.result = event
                        call.done.set()


__all__ = [
    "ConnectionEnded", "PresenceClient", "RemoteError", "Subscription", "open_websocket",
]
