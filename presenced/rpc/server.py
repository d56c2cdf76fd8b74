"""Sans-I/O server side of one @dcl/rpc connection.

Feed every inbound binary WebSocket message to ``receive_frame`` and act on the returned
events; call the sending methods when the application has answers or stream items; write out
whatever ``data_to_send`` returns, one frame per WebSocket binary message. Ports, module
loading and the stream ack handshake are handled here, so the application only sees calls to
run and stream credit.

Protocol violations (unparseable frames, EMPTY/unknown types, types only a server sends) are
raised as ``ProtocolError`` rather than returned as events: forgetting to handle an exception
still ends the connection, whereas a forgotten event would leave a broken peer connected. A
violating frame changes no state, so ``close()`` still reports every live stream afterwards.
Everything else a client can get wrong is answered with a RemoteError or ignored.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Final

from presenced.rpc import wire_pb2
from presenced.rpc.events import (
    PortClosed,
    ServerEvent,
    StreamCancelled,
    StreamReady,
    StreamRequest,
    UnaryRequest,
)
from presenced.rpc.frames import (
    CLIENT_TO_SERVER,
    SERVER_READY_FRAME,
    VARINT_BELOW_128,
    ErrorCode,
    MessageType,
    encode_create_port_response,
    encode_remote_error,
    encode_request_module_response,
    encode_response,
    encode_varint,
    match_stream_ack,
    pack_id,
    parse_frame,
    stream_prefix,
)
from presenced.rpc.modules import ModuleSpec, ProcedureSpec

__all__ = ["RpcServerConnection", "StreamNotReadyError"]

_STREAM_MESSAGE: Final = MessageType.STREAM_MESSAGE
_STREAM_ACK: Final = MessageType.STREAM_ACK
_REQUEST: Final = MessageType.REQUEST
_CREATE_PORT: Final = MessageType.CREATE_PORT
_REQUEST_MODULE: Final = MessageType.REQUEST_MODULE
_SEQ_THEN_PAYLOAD_TAG: Final = struct.Struct("<BIB").pack  # 0x25 <seq> 0x32
_SEQ_TAG: Final = struct.Struct("<BI").pack  # 0x25 <seq>
_CLOSED_TRUE: Final = b"\x38\x01"


class StreamNotReadyError(RuntimeError):
    """``stream_send`` on a live stream whose last frame the client has not acked yet."""


class _Stream:
    __slots__ = ("port_id", "prefix", "seq", "ready", "ready_event", "end")

    def __init__(self, stream_id: int, port_id: int, prefix: bytes) -> None:
        self.port_id = port_id
        # Fields 1 and 2 never change during a stream, so they are encoded once.
        self.prefix = prefix
        self.seq = 0  # last sequence id sent; the offer is 0
        self.ready = False
        # Events are immutable, so one instance serves every ack (saves ~1 us per ack).
        self.ready_event = StreamReady(stream_id)
        # The closed or RemoteError frame of a stream ended before its offer was acked: held
        # back until that ack (see RpcServerConnection._end_stream).
        self.end: bytes | None = None


class _Port:
    __slots__ = ("port_id", "name", "modules", "procedures")

    def __init__(self, port_id: int, name: str) -> None:
        self.port_id = port_id
        self.name = name
        self.modules: dict[str, tuple[tuple[int, str], ...]] = {}
        self.procedures: dict[int, tuple[str, ProcedureSpec]] = {}


class RpcServerConnection:
    """Protocol state of one client connection.

    ``port_ids`` hands out port ids; pass one shared ``itertools.count(1)`` (or any callable
    returning ints) to number ports across connections like the TS server does. By default each
    connection counts from 1. ``max_ports``, ``max_port_name_bytes`` and ``max_streams`` bound
    what one client can make the server hold; real clients open one port with a name of about
    15 characters and a handful of streams. Past a bound the request gets a RemoteError.
    """

    stray_frames: int
    """Stream frames and DESTROY_PORTs that changed nothing (unknown or finished stream or
    port, duplicate or stale ack, client-stream data). Normal in small numbers."""

    def __init__(
        self,
        modules: Mapping[str, ModuleSpec],
        port_ids: Iterator[int] | Callable[[], int] | None = None,
        *,
        max_ports: int = 8,
        max_port_name_bytes: int = 128,
        max_streams: int = 32,
    ) -> None:
        self._modules: Mapping[str, ModuleSpec] = modules
        if port_ids is None:
            port_ids = itertools.count(1)
        self._next_port_id: Callable[[], int] = (
            partial(next, port_ids) if isinstance(port_ids, Iterator) else port_ids
        )
        self._max_ports = max_ports
        self._max_port_name_bytes = max_port_name_bytes
        self._max_streams = max_streams
        self._ports: dict[int, _Port] = {}
        self._streams: dict[int, _Stream] = {}
        self._unary: dict[int, int] = {}  # pending unary call number -> port id
        self._out: list[bytes] = []
        self._closed = False
        self.stray_frames = 0

    # --- inspection -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def stream_ids(self) -> list[int]:
        """Live streams, in creation order."""
        return [sid for sid, stream in self._streams.items() if stream.end is None]

    def port_ids(self) -> list[int]:
        """Open ports, in creation order."""
        return list(self._ports)

    # --- inbound ----------------------------------------------------------------------------

    def receive_frame(self, data: bytes) -> list[ServerEvent]:
        """Handle one inbound binary message. Raises ``ProtocolError`` on a violation."""
        if self._closed:
            return []
        ack = match_stream_ack(data)
        if ack is not None:
            # The hot path: one ack per delivered stream item, decoded without protobuf.
            return self._on_ack(ack[0], ack[1])
        mtype, number, msg = parse_frame(data, CLIENT_TO_SERVER)
        if mtype is _STREAM_ACK or mtype is _STREAM_MESSAGE:
            if msg.closed:
                return self._on_client_close(number)
            if mtype is _STREAM_MESSAGE and not msg.ack:
                # Client-stream data: we never accept client streams, so nobody wants it.
                self.stray_frames += 1
                return []
            return self._on_ack(number, msg.sequence_id)
        if mtype is _REQUEST:
            return self._on_request(number, msg)
        if mtype is _CREATE_PORT:
            return self._on_create_port(number, msg)
        if mtype is _REQUEST_MODULE:
            return self._on_request_module(number, msg)
        return self._on_destroy_port(number, msg)  # the last type in CLIENT_TO_SERVER

    def _on_ack(self, number: int, seq: int) -> list[ServerEvent]:
        stream = self._streams.get(number)
        if stream is None or stream.ready or seq < stream.seq:
            # Godot acks on receipt with its own counter, so duplicates and stale acks are
            # normal; any ack at or past the last sequence sent is all the credit we need.
            self.stray_frames += 1
            return []
        if stream.end is not None:
            del self._streams[number]
            self._out.append(stream.end)
            return []
        stream.ready = True
        return [stream.ready_event]

    def _on_client_close(self, number: int) -> list[ServerEvent]:
        # Any close cancels, whatever its seq and type: the TS server only honours a close that
        # matches the ack it is waiting for, which silently drops closes sent at other moments.
        stream = self._streams.pop(number, None)
        if stream is None:
            self.stray_frames += 1  # e.g. C# echoing our own close back
            return []
        if stream.end is not None:
            return []  # the application had already ended it
        return [StreamCancelled(number)]

    def _on_create_port(self, number: int, msg: wire_pb2.CreatePort) -> list[ServerEvent]:
        if len(self._ports) >= self._max_ports:
            return self._error(number, "too many ports on this connection", ErrorCode.APPLICATION)
        if len(msg.port_name.encode()) > self._max_port_name_bytes:
            return self._error(number, "port name too long", ErrorCode.APPLICATION)
        port_id = self._next_port_id()
        self._ports[port_id] = _Port(port_id, msg.port_name)
        self._out.append(encode_create_port_response(number, port_id))
        return []

    def _on_request_module(self, number: int, msg: wire_pb2.RequestModule) -> list[ServerEvent]:
        port = self._ports.get(msg.port_id)
        if port is None:
            return self._error(number, "invalid portId", ErrorCode.PORT_NOT_FOUND)
        name = msg.module_name
        table = port.modules.get(name)
        if table is None:
            spec = self._modules.get(name)
            if spec is None:
                return self._error(
                    number,
                    f"Module {name} is not available for port {port.name} ({port.port_id})",
                    ErrorCode.MODULE_NOT_FOUND,
                )
            # Ids continue across the modules of one port (as in the TS server) because a
            # REQUEST names only port and procedure id.
            base = len(port.procedures)
            table = tuple((base + i, p.name) for i, p in enumerate(spec.procedures, 1))
            for (procedure_id, _), procedure in zip(table, spec.procedures, strict=True):
                port.procedures[procedure_id] = (name, procedure)
            port.modules[name] = table
        self._out.append(encode_request_module_response(number, port.port_id, table))
        return []

    def _on_request(self, number: int, msg: wire_pb2.Request) -> list[ServerEvent]:
        port = self._ports.get(msg.port_id)
        if port is None:
            return self._error(number, "invalid portId", ErrorCode.PORT_NOT_FOUND)
        if msg.client_stream:
            return self._error(
                number, "client streaming is not supported", ErrorCode.PROTOCOL_ERROR
            )
        entry = port.procedures.get(msg.procedure_id)
        if entry is None:
            return self._error(
                number,
                f"procedureId {msg.procedure_id} is missing in {port.name} ({port.port_id})",
                ErrorCode.PROCEDURE_NOT_FOUND,
            )
        if number in self._streams or number in self._unary:
            # Replies are matched by number only; a second call with a live number could
            # never be told apart from the first.
            return self._error(number, f"message number {number} is already in use")
        module, procedure = entry
        if procedure.server_streaming:
            if len(self._streams) >= self._max_streams:
                return self._error(number, "too many open streams on this connection")
            prefix = stream_prefix(pack_id(_STREAM_MESSAGE, number), port.port_id)
            self._streams[number] = _Stream(number, port.port_id, prefix)
            # Queue the offer now, before the next inbound frame is read: a Unity client may
            # ack seq 0 before it has seen the offer, and that ack must find the stream.
            self._out.append(prefix)
            return [StreamRequest(number, port.port_id, procedure.name, msg.payload, module)]
        self._unary[number] = port.port_id
        return [UnaryRequest(number, port.port_id, procedure.name, msg.payload, module)]

    def _on_destroy_port(self, number: int, msg: wire_pb2.DestroyPort) -> list[ServerEvent]:
        port_id = msg.port_id
        if self._ports.pop(port_id, None) is None:
            self.stray_frames += 1
            return []
        stream_ids = tuple(sid for sid, s in self._streams.items() if s.port_id == port_id)
        for sid in stream_ids:
            del self._streams[sid]
        for call in [n for n, p in self._unary.items() if p == port_id]:
            del self._unary[call]
        return [PortClosed(port_id, stream_ids)]

    def _error(self, number: int, message: str, code: int = 0) -> list[ServerEvent]:
        self._out.append(encode_remote_error(number, message, code))
        return []

    # --- outbound ---------------------------------------------------------------------------

    def server_ready(self) -> None:
        """Queue SERVER_READY; send it first (the Rust client requires it)."""
        self._out.append(SERVER_READY_FRAME)

    def respond(self, number: int, payload: bytes) -> bool:
        """Answer a pending unary call. False (nothing sent) if it is no longer pending."""
        if self._unary.pop(number, None) is None:
            return False
        self._out.append(encode_response(number, payload))
        return True

    def fail(self, number: int, message: str, code: int = 0) -> bool:
        """RemoteError for a pending unary call or a live stream; False if neither."""
        if self._unary.pop(number, None) is not None:
            self._out.append(encode_remote_error(number, message, code))
            return True
        return self.stream_fail(number, message, code)

    def stream_can_send(self, stream_id: int) -> bool:
        """True if the stream is live and the client acked the last frame."""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.ready

    def stream_send(self, stream_id: int, payload: bytes) -> bool:
        """Send the next item. False if the stream is gone (cancelled, closed, port destroyed).

        Raises ``StreamNotReadyError`` if the stream is live but its last frame is unacked:
        that is a bug in the caller, not a race with the client.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        if not stream.ready:
            if stream.end is not None:
                return False
            raise StreamNotReadyError(f"stream {stream_id} is waiting for an ack")
        seq = stream.seq + 1
        stream.seq = seq
        stream.ready = False
        if payload:
            n = len(payload)
            self._out.append(
                b"".join(
                    (
                        stream.prefix,
                        _SEQ_THEN_PAYLOAD_TAG(0x25, seq, 0x32),
                        VARINT_BELOW_128[n] if n < 0x80 else encode_varint(n),
                        payload,
                    )
                )
            )
        else:
            self._out.append(stream.prefix + _SEQ_TAG(0x25, seq))
        return True

    def stream_close(self, stream_id: int) -> bool:
        """End the stream normally: closed=true carrying the last sequence id sent."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end is not None:
            return False
        if stream.seq:
            frame = stream.prefix + _SEQ_TAG(0x25, stream.seq) + _CLOSED_TRUE
        else:
            frame = stream.prefix + _CLOSED_TRUE
        self._end_stream(stream_id, stream, frame)
        return True

    def stream_fail(self, stream_id: int, message: str, code: int = 0) -> bool:
        """End the stream with a RemoteError carrying the stream's number."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end is not None:
            return False
        self._end_stream(stream_id, stream, encode_remote_error(stream_id, message, code))
        return True

    def _end_stream(self, stream_id: int, stream: _Stream, frame: bytes) -> None:
        if stream.seq == 0 and not stream.ready:
            # Nothing may follow the offer until the client acks it (the TS server never sends
            # anything there): @dcl/rpc 1.1.2 starts listening for a stream's frames only after
            # it has processed the offer, so a close or error handled in the same event-loop
            # turn is dropped and the client's iterator hangs. The ack releases the frame.
            stream.end = frame
        else:
            del self._streams[stream_id]
            self._out.append(frame)

    def data_to_send(self) -> list[bytes]:
        """Frames queued since the last call, in order; each is one binary WebSocket message."""
        out = self._out
        self._out = []
        return out

    def close(self) -> list[int]:
        """The connection ended: forget everything and return the streams that were live.

        Afterwards inbound frames are ignored and sending methods return False. Frames queued
        before the call stay in ``data_to_send``.
        """
        if self._closed:
            return []
        self._closed = True
        live = list(self._streams)
        self._streams.clear()
        self._ports.clear()
        self._unary.clear()
        return live
