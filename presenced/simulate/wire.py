"""A virtual user's connection: WebSocket and @dcl/rpc with nothing in between.

`PresenceClient` (trio-websocket) is the general client; the load generator
does the same on the wire through this leaner path, because a generator that
costs as much CPU per update as the server it measures cannot load a server
on the same machine. Profiles of a worker on `PresenceClient` showed where
its time went: per stream item, three task switches (trio-websocket's
reader, the client's reader, the listener), a memory channel each way, an
async send with a lock for every ACK, and wsproto's generic frame machinery.

Here one reader task per connection parses frames itself, hands each stream
item to the subscriber's callback synchronously and writes the ACK with one
non-blocking `send()`; only bytes the kernel does not take wait for a
writer task, started when needed. The frames sent are the same as
`PresenceClient`'s (masked client frames, the same RPC frames in the same
order, an ACK after each item is processed, a stream cancel and a 1000 close
when a session ends), and failures surface as the same exceptions, so the
simulator's error classification is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import select
import socket
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
from presenced.client import MODULE, ConnectionEnded, RemoteError
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
from presenced.rpc.frames import MessageType, ProtocolError, pack_id
from presenced.server.ws_frames import unmask
from presenced.v1 import presence_pb2 as pb

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_RECV_SIZE = 65536
# Largest HTTP response to the upgrade request we read.
_MAX_HANDSHAKE = 16384
_ABNORMAL = 1006
_NO_STATUS = 1005
_SUBSCRIBE = "SubscribeFriendshipPresenceUpdates"
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_decode_updates = pb.SubscribeFriendshipPresenceUpdatesResponse.FromString
_decode_response = pb.PositionResponse.FromString
_U32 = struct.Struct("<I")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
# ack = true: an ACK in the 17-byte layout the server matches without protobuf.
_ACK_TAIL = b"\x40\x01"
# Masking keys only have to differ between frames (RFC 6455 §5.3 wants them
# unpredictable to defeat proxy cache poisoning, which loopback load
# generation has no use for): a seeded PRNG is far cheaper than os.urandom.
_mask_keys = random.Random(os.getpid())

# (updates, arrival time from time.monotonic()) -> None
BatchCallback = Callable[[Any, float], None]
# A stream item's payload -> the updates handed to the BatchCallback.
ItemDecoder = Callable[[bytes], Any]


def _presence_updates(payload: bytes) -> Any:
    return _decode_updates(payload).updates


class StreamEndedError(Exception):
    """The server ended a subscription stream that should run forever."""


_SHORT_HEADS = {op: [bytes((0x80 | op, 0x80 | n)) for n in range(126)]
                for op in (_OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG)}


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set). Masking is the server's unmasking: XOR."""
    n = len(payload)
    key = _mask_keys.getrandbits(32)
    if n < 126:
        head = _SHORT_HEADS[opcode][n]
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + key.to_bytes(4, "big") + unmask(key, payload)


class _Poller:
    """Reads every plain connection of one trio run: one epoll set, one task.

    A reader task per connection costs a trio wake-up and an `epoll_ctl` per
    frame (trio re-arms a one-shot registration on every wait). Connections
    registered here once, level-triggered, are served in batches from a
    single system task that wakes when the epoll set itself is readable.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._conns: dict[int, WireClient] = {}

    @classmethod
    def current(cls) -> _Poller:
        try:
            return _POLLER.get()
        except LookupError:
            poller = cls()
            _POLLER.set(poller)
            trio.lowlevel.spawn_system_task(poller._run, name="presenced-simulate-poller")
            return poller

    def add(self, conn: WireClient, fd: int) -> None:
        self._conns[fd] = conn
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self._conns.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    async def _run(self) -> None:
        epoll = self._epoll
        conns = self._conns
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, 1024):
                    conn = conns.get(fd)
                    if conn is not None:
                        conn._on_readable()
        finally:
            epoll.close()


_POLLER: trio.lowlevel.RunVar[_Poller] = trio.lowlevel.RunVar("presenced_simulate_poller")


class WireClient:
    """One logged-in connection; see the module docstring. Use `connect()`."""

    def __init__(self, sock: socket.socket | None, stream: trio.abc.Stream | None) -> None:
        # Plain ws:// keeps the socket itself (non-blocking sends, reads by the
        # poller); wss:// goes through a trio TLS stream, a reader task and the
        # writer task.
        self._sock = sock
        self._fd = sock.fileno() if sock is not None else -1
        self._stream = stream
        self._poller: _Poller | None = None
        self._rpc = RpcClientConnection()
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._pending = bytearray()
        self._writing = False
        self._nursery: trio.Nursery | None = None
        # Call number -> the task waiting for its answer.
        self._calls: dict[int, trio.lowlevel.Task] = {}
        self._ready = trio.Event()
        self._closed: ConnectionEnded | None = None
        # What ended the connection from the reading side (raised by connect()).
        self._failure: BaseException | None = None
        # Set once nothing more will be read (close frame, EOF or failure).
        self._finished = trio.Event()
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
        tls = parts.scheme == "wss"
        if tls and local_address is not None:
            raise ValueError(f"a source address needs a ws:// URL, got {url!r}")
        default_port = 443 if tls else 80
        port = parts.port or default_port
        host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
        resource = parts.path or "/"
        if parts.query:
            resource += "?" + parts.query
        client: WireClient | None = None
        try:
            try:
                with trio.fail_after(connect_timeout):
                    if tls:
                        stream = await trio.open_ssl_over_tcp_stream(
                            parts.hostname, port, ssl_context=ssl.create_default_context())
                        client = cls(None, stream)
                    else:
                        client = cls(await _open_socket(parts.hostname, port, local_address),
                                     None)
                    await client._handshake(host_header, resource)
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            except (OSError, trio.BrokenResourceError) as e:
                raise HandshakeError from e
            async with trio.open_nursery() as nursery:
                client._nursery = nursery
                if client._sock is not None:
                    client._poller = _Poller.current()
                    client._poller.add(client, client._fd)
                    if client._buf:
                        client._parse()
                else:
                    nursery.start_soon(client._reader)
                client._send_frame(_OP_TEXT, login_frame(
                    identity, int(time.time() * 1000)).encode())
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
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client._abort()

    async def _handshake(self, host: str, resource: str) -> None:
        key = base64.b64encode(os.urandom(16))
        request = (f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        await self._write_now(request)
        buf = self._buf
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HANDSHAKE:
                raise HandshakeError("oversized handshake response")
            data = await self._recv()
            if not data:
                raise HandshakeError("connection closed during the handshake")
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            raise HandshakeError(f"handshake refused: {lines[0]}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise HandshakeError("bad Sec-WebSocket-Accept")
        buf.clear()
        buf += rest

    async def _open_port(self, port_name: str) -> None:
        created = await self._request(self._rpc.create_port(port_name))
        assert isinstance(created, PortCreated)
        self.port_id = created.port_id
        loaded = await self._request(self._rpc.request_module(self.port_id, MODULE))
        assert isinstance(loaded, ModuleLoaded)
        self.procedures = dict(loaded.procedures)

    # ------------------------------------------------------------------ RPCs

    async def heartbeat_raw(self, payload: bytes) -> pb.PositionResponse:
        number = self._rpc.call(self.port_id, self.procedures["PositionHeartbeat"], payload)
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
            procedure = self.procedures[_SUBSCRIBE]
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
        for frame in self._rpc.data_to_send():
            self._send_frame(_OP_BINARY, frame)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        # Nothing may follow our close frame (RFC 6455 §5.5.1).
        if not self._sent_close:
            self._send(_frame(opcode, payload))

    async def _write_now(self, data: bytes) -> None:
        """Before the reader runs (the handshake): write everything, waiting if needed."""
        if self._sock is None:
            assert self._stream is not None
            await self._stream.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)

    def _send(self, data: bytes) -> None:
        """Write now if the kernel takes it, else queue for the writer task."""
        pending = self._pending
        sock = self._sock
        if not pending and sock is not None:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # The peer is gone: reading will notice and end the connection.
                return
            if sent == len(data):
                return
            data = data[sent:]
        pending += data
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._write_pending)

    async def _write_pending(self) -> None:
        pending = self._pending
        try:
            while pending:
                chunk = bytes(pending)
                pending.clear()
                if self._sock is not None:
                    view = memoryview(chunk)
                    while view:
                        await trio.lowlevel.wait_writable(self._sock)
                        try:
                            view = view[self._sock.send(view):]
                        except BlockingIOError:
                            continue
                else:
                    assert self._stream is not None
                    await self._stream.send_all(chunk)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # reading notices and ends the connection
        finally:
            self._writing = False

    # ------------------------------------------------------------- frames in

    async def _recv(self) -> bytes:
        """Only for the handshake and TLS; plain connections are read by the poller."""
        sock = self._sock
        if sock is None:
            assert self._stream is not None
            return await self._stream.receive_some(_RECV_SIZE)
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(_RECV_SIZE)
            except BlockingIOError:
                continue

    async def _reader(self) -> None:
        """TLS connections' reads (the poller serves plain ones)."""
        try:
            if self._buf:
                self._parse()
            while self._closed is None:
                try:
                    data = await self._recv()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self._on_data(data)
        except Exception as e:
            self._fail(e)

    def _on_readable(self) -> None:
        """The poller saw data (or EOF) on the socket."""
        try:
            try:
                data = self._sock.recv(_RECV_SIZE)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self._on_data(data)
        except Exception as e:
            self._fail(e)

    def _on_data(self, data: bytes) -> None:
        if not data:
            self._end(_ABNORMAL, "connection lost", by_server=not self._sent_close)
            return
        buf = self._buf
        # Nearly every read is exactly one small binary frame.
        if not buf and data[0] == 0x82 and data[1] < 126 and len(data) == data[1] + 2:
            self._on_message(data[2:])
            return
        buf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        while self._closed is None:
            n = len(buf)
            if n < 2:
                return
            b1 = buf[1]
            length = b1 & 0x7F
            start = 2
            if length == 126:
                if n < 4:
                    return
                length = int.from_bytes(buf[2:4], "big")
                start = 4
            elif length == 127:
                if n < 10:
                    return
                length = int.from_bytes(buf[2:10], "big")
                start = 10
            if b1 & 0x80:
                raise ProtocolError("the server sent a masked frame")
            end = start + length
            if n < end:
                return
            b0 = buf[0]
            payload = bytes(buf[start:end])
            del buf[:end]
            opcode = b0 & 0x0F
            if opcode == _OP_BINARY and b0 & 0x80:
                self._on_message(payload)
            elif opcode >= _OP_CLOSE:
                self._on_control(opcode, payload)
            else:
                self._on_fragment(opcode, bool(b0 & 0x80), payload)

    def _on_fragment(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode != _OP_CONT:
            self._fragments = []
        self._fragments.append(payload)
        if fin:
            message = b"".join(self._fragments)
            self._fragments = []
            # Text frames carry the same RPC bytes (clients may send either).
            self._on_message(message)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            self._send_frame(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            if len(payload) >= 2:
                code = int.from_bytes(payload[:2], "big")
                reason = payload[2:].decode(errors="replace") or None
            else:
                code, reason = _NO_STATUS, None
            by_server = not self._sent_close
            if by_server:
                # Echo the code, as wsproto answers a close.
                self._send_frame(_OP_CLOSE, payload[:2])
                self._sent_close = True
            self._end(code, reason, by_server)

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
                self._send_frame(_OP_BINARY, self._ack_head + _pack_u32(seq) + _ACK_TAIL)
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
        sock = self._sock
        if sock is not None:
            self._sock = None
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _stop_reading(self) -> None:
        if self._poller is not None:
            self._poller.remove(self._fd)
            self._poller = None
        self._finished.set()

    def _end(self, code: int | None, reason: str | None, by_server: bool) -> None:
        """Nothing more will be read: wake every waiting call with the close."""
        if self._closed is None:
            self._closed = ConnectionEnded(code, reason)
        self._stop_reading()
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
        self._stop_reading()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _close(self) -> None:
        """Cancel the subscription and close with 1000, then wait for the server's close."""
        if self._closed is None and not self._sent_close:
            if self._stream_number is not None and not self._stream_ended:
                self._stream_ended = True
                self._rpc.cancel_stream(self._stream_number, self._last_seq)
                self._flush()
            self._on_batch = None
            self._send_frame(_OP_CLOSE, (1000).to_bytes(2, "big"))
            self._sent_close = True
        await self._finished.wait()

    async def _abort(self) -> None:
        self._stop_reading()
        sock = self._sock
        if sock is not None:
            self._sock = None
            trio.lowlevel.notify_closing(sock)
            sock.close()
        elif self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.aclose_forcefully(stream)


async def _open_socket(host: str, port: int, local_address: str | None) -> socket.socket:
    """A connected non-blocking TCP socket (bound to `local_address` if given)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if local_address is not None:
        family = socket.AF_INET6 if ":" in local_address else socket.AF_INET
        infos = [i for i in infos if i[0] == family] or infos
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address is not None:
            # Leave the port to connect(), which may reuse one already taken for
            # another destination: a bind() alone would reserve a whole port.
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local_address, 0))
        err = sock.connect_ex(address)
        if err not in (0, 115):  # EINPROGRESS
            raise OSError(err, os.strerror(err))
        if err:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock


__all__ = ["BatchCallback", "ItemDecoder", "StreamEndedError", "WireClient"]
