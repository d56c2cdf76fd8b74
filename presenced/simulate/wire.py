"""A virtual user's connection: presenced's WebSocket layer and @dcl/rpc, nothing between.

`PresenceClient` (trio-websocket) is the general client; the load generator
does the same on the wire through this leaner path, because a generator that
costs as much CPU per update as the server it measures cannot load a server
on the same machine. Profiles of a worker on `PresenceClient` showed where
its time went: per stream item, three task switches (trio-websocket's
reader, the client's reader, the listener), a memory channel each way, an
async send with a lock for every ACK, and wsproto's generic frame machinery.

Here each connection is a `presenced.ws` transport in the client role: read
by the run's one poller task (no reader task per connection), each stream
item handed to the subscriber's callback synchronously and its ACK written
with one non-blocking `send()`; only bytes the kernel does not take wait
for a writer task, started when needed. wss:// is TLS in memory inside the
transport (`ssl.SSLObject`), on the same poller. The frames sent are the same as
`PresenceClient`'s (masked client frames, the same RPC frames in the same
order, an ACK after each item is processed, a stream cancel and a 1000 close
when a session ends), and failures surface as the same exceptions, so the
simulator's error classification is unchanged.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from outcome import Value
from trio_websocket import ConnectionTimeout, HandshakeError

from presenced.auth.identity import Identity, login_frame
from presenced.client import ConnectionEnded, RemoteError
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
from presenced.rpc.frames import MessageType, pack_id
from presenced.services.presence import MODULE_NAME, POSITION_HEARTBEAT, SUBSCRIBE
from presenced.v1 import presence_pb2 as pb
from presenced.ws.handshake import UpgradeRequest
from presenced.ws.poller import current_poller
from presenced.ws.transport import Transport, connect, open_socket

# What one connection may receive in one message, and queue for sending
# (the generator reads and writes far less: these only bound a broken peer).
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_QUEUE_LIMIT_BYTES = 16 * 1024 * 1024
_ABNORMAL = 1006
_decode_updates = pb.SubscribeFriendshipPresenceUpdatesResponse.FromString
_decode_response = pb.PositionResponse.FromString
_U32 = struct.Struct("<I")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
# ack = true: an ACK in the 17-byte layout the server matches without protobuf.
_ACK_TAIL = b"\x40\x01"

# (updates, arrival time from time.monotonic()) -> None
BatchCallback = Callable[[Any, float], None]
# A stream item's payload -> the updates handed to the BatchCallback.
ItemDecoder = Callable[[bytes], Any]


def _presence_updates(payload: bytes) -> Any:
    return _decode_updates(payload).updates


class StreamEndedError(Exception):
    """The server ended a subscription stream that should run forever."""


class WireClient:
    """One logged-in connection; see the module docstring. Use `connect()`.

    It is its transport's handler (`on_open`, `on_message`, `on_pong`,
    `on_closed`), called from the poller's task.
    """

    def __init__(self) -> None:
        self._transport: Transport | None = None
        self._rpc = RpcClientConnection()
        self._nursery: trio.Nursery | None = None
        # Call number -> the task waiting for its answer.
        self._calls: dict[int, trio.lowlevel.Task] = {}
        # Set when the handshake is over, accepted or not.
        self._handshaken = trio.Event()
        self._ready = trio.Event()
        self._closed: ConnectionEnded | None = None
        # What ended the connection from the reading side (raised by connect()).
        self._failure: BaseException | None = None
        self._sent_close = False
        self.port_id = 0
        self.procedures: dict[str, int] = {}
        self._stream_number: int | None = None
        self._stream_ended = False
        self._last_seq = 0
        self._on_batch: BatchCallback | None = None
        self._decode_items: ItemDecoder = _presence_updates
        self._item_head: bytes | None = None
        self._ack_head = b""

    # ------------------------------------------------------------ connecting

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        identity: Identity,
        *,
        local_address: str | None = None,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 5.0,
        port_name: str = "presenced-client",
    ) -> AsyncIterator[WireClient]:
        """Connect, log in and load the presence module (as `PresenceClient.connect`).

        Raises what `PresenceClient.connect` would: `HandshakeError` (or its
        `ConnectionTimeout`) when the WebSocket cannot be opened,
        `trio.TooSlowError` when the login takes too long, `ConnectionEnded`
        with the server's close code, `RemoteError`, `ProtocolError`.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        tls = ssl.create_default_context() if parts.scheme == "wss" else None
        default_port = 443 if tls else 80
        port = parts.port or default_port
        host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
        resource = parts.path or "/"
        if parts.query:
            resource += "?" + parts.query
        client = cls()
        try:
            try:
                with trio.fail_after(connect_timeout):
                    sock = await open_socket(parts.hostname, port, local_address=local_address)
                    client._transport = connect(
                        sock, current_poller(), client, host=host_header, resource=resource,
                        spawn=client._spawn, max_message_bytes=_MAX_MESSAGE_BYTES,
                        queue_limit_bytes=_QUEUE_LIMIT_BYTES, close_timeout_s=disconnect_timeout,
                        ssl_context=tls, server_hostname=parts.hostname)
                    await client._handshaken.wait()
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            except OSError as e:
                raise HandshakeError from e
            transport = client._transport
            if not transport.opened:
                error = transport.handshake_error
                if error is not None:
                    raise HandshakeError(str(error)) from error
                assert client._closed is not None
                raise HandshakeError(client._closed.reason)
            async with trio.open_nursery() as nursery:
                client._nursery = nursery
                transport.send_text(login_frame(identity, identity.login_timestamp_ms()))
                with trio.fail_after(connect_timeout):
                    await client._ready.wait()
                    if client._closed is not None:
                        raise client._closed
                    await client._open_port(port_name)
                try:
                    yield client
                finally:
                    with trio.move_on_after(disconnect_timeout) as scope:
                        scope.shield = True
                        await client._close()
                    nursery.cancel_scope.cancel()
            if client._failure is not None:
                raise client._failure
        except BaseExceptionGroup as group:
            # One failure (the body's, or the reader's) is raised as itself.
            leaves = leaf_exceptions(group)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
        finally:
            client._abort()

    def _spawn(self, task: Callable[[], Any]) -> None:
        # The transport's writer and closing timer run in the connection's
        # nursery (none yet during the handshake, whose request fits the
        # socket's buffer).
        if self._nursery is not None:
            self._nursery.start_soon(task)

    async def _open_port(self, port_name: str) -> None:
        created = await self._request(self._rpc.create_port(port_name))
        assert isinstance(created, PortCreated)
        self.port_id = created.port_id
        loaded = await self._request(self._rpc.request_module(self.port_id, MODULE_NAME))
        assert isinstance(loaded, ModuleLoaded)
        self.procedures = dict(loaded.procedures)

    # ------------------------------------------------------------------ RPCs

    async def heartbeat_raw(self, payload: bytes) -> pb.PositionResponse:
        number = self._rpc.call(self.port_id, self.procedures[POSITION_HEARTBEAT], payload)
        result = await self._request(number)
        assert isinstance(result, ResponseReceived)
        return _decode_response(result.payload)

    async def load_module(self, name: str) -> dict[str, int]:
        """Load another module on this connection's port: its procedure ids by name."""
        loaded = await self._request(self._rpc.request_module(self.port_id, name))
        assert isinstance(loaded, ModuleLoaded)
        return dict(loaded.procedures)

    def subscribe(self, on_batch: BatchCallback, procedure: int | None = None,
                  decode: ItemDecoder | None = None) -> None:
        """Subscribe to friends' updates: `on_batch(updates, arrival)` runs for each
        stream item, in the reader, and the item is acknowledged when it returns.

        By default the stream is PresenceService's subscription; another
        server stream is `procedure` (an id from `load_module`) with `decode`
        turning each item's payload into what `on_batch` gets.

        The stream ending, a remote error on it, or the server closing the
        connection then fails the whole connection (the `async with` raises),
        as a listener task awaiting the next item would.
        """
        self._on_batch = on_batch
        if decode is not None:
            self._decode_items = decode
        if procedure is None:
            procedure = self.procedures[SUBSCRIBE]
        number = self._stream_number = self._rpc.call(self.port_id, procedure)
        port = _pack_u32(self.port_id)
        # Fields 1 to 4's tag of this stream's items, and of our ACKs.
        self._item_head = (b"\x0d" + _pack_u32(pack_id(MessageType.STREAM_MESSAGE, number))
                           + b"\x15" + port + b"\x25")
        self._ack_head = (b"\x0d" + _pack_u32(pack_id(MessageType.STREAM_ACK, number))
                          + b"\x15" + port + b"\x25")
        self._flush()

    async def _request(self, number: int) -> object:
        # The caller's task parks itself and the reader reschedules it with
        # the answer: no Event per call.
        self._flush()
        calls = self._calls
        calls[number] = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            calls.pop(number, None)
            return trio.lowlevel.Abort.SUCCEEDED

        result = await trio.lowlevel.wait_task_rescheduled(abort)
        if isinstance(result, RemoteErrorReceived):
            raise RemoteError(result.message)
        if isinstance(result, ConnectionEnded):
            raise result
        return result

    # ------------------------------------------------------------ frames out

    def _flush(self) -> None:
        if self._closed is not None:
            raise self._closed
        frames = self._rpc.data_to_send()
        if frames and not self._sent_close:
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        if not (transport.send_binary(frames[0]) if len(frames) == 1
                else transport.send_binaries(frames)):
            raise ConnectionEnded(_ABNORMAL, "send queue full: the server does not read")

    # ------------------------------------------------------------- frames in

    def on_open(self, request: UpgradeRequest | None) -> None:
        self._handshaken.set()

    def on_pong(self, payload: bytes) -> None:
        pass

    def on_message(self, message: bytes | str) -> None:
        if self._failure is not None:
            return  # ending: connect() raises the failure
        # Text frames carry the same RPC bytes (clients may send either).
        try:
            self._on_message(message if type(message) is bytes
                             else message.encode())  # type: ignore[union-attr]
        except Exception as e:
            self._fail(e)

    def on_closed(self, code: int, reason: str) -> None:
        self._handshaken.set()
        self._end(code, reason or None, by_server=not self._sent_close)

    def _on_message(self, data: bytes) -> None:
        stream = self._stream_number
        head = self._item_head
        if head is not None and data.startswith(head):
            # A stream item in the layout the server writes (`stream_body`):
            # read without protobuf; anything else takes the general path.
            n = data[16] if len(data) > 17 and data[15] == 0x32 else 0x80
            if n < 0x80 and len(data) == 17 + n and self._on_batch is not None:
                seq = _unpack_u32(data, 11)[0]
                self._last_seq = seq
                self._on_batch(self._decode_items(data[17:]), time.monotonic())
                if not self._transport.send_binary(  # type: ignore[union-attr]
                        self._ack_head + _pack_u32(seq) + _ACK_TAIL):
                    raise ConnectionEnded(_ABNORMAL, "send queue full: the server does not read")
                return
        for event in self._rpc.receive_frame(data):
            kind = type(event)
            if kind is StreamItem:
                if event.number == stream and self._on_batch is not None:
                    self._last_seq = event.seq
                    self._on_batch(self._decode_items(event.payload), time.monotonic())
                    self._rpc.ack(stream, event.seq)
                    self._flush()
            elif kind is StreamOffered:
                if event.number == stream and self._on_batch is not None:
                    self._rpc.ack(stream, 0)
                    self._flush()
            elif kind is ServerReady:
                self._ready.set()
            elif kind is StreamEnded:
                if event.number == stream and not self._stream_ended:
                    self._stream_ended = True
                    raise StreamEndedError("the server ended the subscription stream")
            elif kind is RemoteErrorReceived and event.number == stream:
                if not self._stream_ended:
                    self._stream_ended = True
                    raise RemoteError(event.message)
            else:
                task = self._calls.pop(event.number, None)  # type: ignore[union-attr]
                if task is not None:
                    trio.lowlevel.reschedule(task, Value(event))

    # ------------------------------------------------------------ the end

    def drop(self) -> None:
        """Lose the connection as a network failure would: no close frame, no stream
        cancel; the socket just closes and the server sees the TCP connection end."""
        self._end(_ABNORMAL, "dropped by the client", by_server=False)
        self._abort()

    def _end(self, code: int | None, reason: str | None, by_server: bool) -> None:
        """Nothing more will be read: wake every waiting call with the close."""
        if self._closed is None:
            self._closed = ConnectionEnded(code, reason)
        calls, self._calls = self._calls, {}
        for task in calls.values():
            trio.lowlevel.reschedule(task, Value(self._closed))
        self._ready.set()
        if by_server and self._stream_number is not None and not self._stream_ended:
            # A listener waiting for the next item would fail with the close.
            self._fail(self._closed)

    def _fail(self, e: BaseException) -> None:
        """End the connection with `e`, raised from `connect()` (the body is cancelled)."""
        if self._failure is None:
            self._failure = e
        if self._closed is None:
            self._closed = ConnectionEnded(_ABNORMAL, f"{type(e).__name__}: {e}")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _close(self) -> None:
        """Cancel the subscription and close with 1000, then wait for the server's close."""
        transport = self._transport
        assert transport is not None
        if self._failure is not None:
            return  # dropped at once by _abort
        if self._closed is None and not self._sent_close:
            if self._stream_number is not None and not self._stream_ended:
                self._stream_ended = True
                self._rpc.cancel_stream(self._stream_number, self._last_seq)
                self._flush()
            self._on_batch = None
            self._sent_close = True
            transport.close(1000)
        await transport.wait_closed()

    def _abort(self) -> None:
        transport = self._transport
        if transport is not None:
            # Our end needs no report: the handler is forgotten first.
            transport.detach()
            transport.abort()


__all__ = ["BatchCallback", "ItemDecoder", "StreamEndedError", "WireClient"]
