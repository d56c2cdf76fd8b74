"""Sans-I/O client side of one @dcl/rpc connection (our Python client, load simulator, tests).

It never acks on its own: the caller picks the moment, which is how tests reproduce the TS
(lazy), Unity (ack before the offer) and Godot (eager) timings. Malformed frames from the server
raise ``ProtocolError``.
"""

from __future__ import annotations

from typing import Any, Final

from presenced.rpc.events import (
    ClientEvent,
    ModuleLoaded,
    PortCreated,
    RemoteErrorReceived,
    ResponseReceived,
    ServerReady,
    StreamEnded,
    StreamItem,
    StreamOffered,
)
from presenced.rpc.frames import (
    MAX_NUMBER,
    SERVER_TO_CLIENT,
    MessageType,
    encode_create_port,
    encode_destroy_port,
    encode_request,
    encode_request_module,
    encode_stream_ack,
    encode_stream_message,
    parse_frame,
)

__all__ = ["RpcClientConnection"]

_STREAM_MESSAGE: Final = MessageType.STREAM_MESSAGE


class RpcClientConnection:
    """Protocol state of one connection to a server.

    Message numbers count from ``first_number`` and wrap after 0x07FFFFFF back to 1 (0 is the
    number of SERVER_READY and of TS's DESTROY_PORT).
    """

    def __init__(self, *, first_number: int = 1) -> None:
        if not 1 <= first_number <= MAX_NUMBER:
            raise ValueError("first_number must be in 1..0x07FFFFFF")
        self._number = first_number
        self._calls: dict[int, int] = {}  # number of a call in flight -> port id
        self._open_streams: set[int] = set()
        self._out: list[bytes] = []

    def _next_number(self) -> int:
        number = self._number
        self._number = number + 1 if number < MAX_NUMBER else 1
        return number

    # --- outbound ---------------------------------------------------------------------------

    def create_port(self, name: str) -> int:
        number = self._next_number()
        self._out.append(encode_create_port(number, name))
        return number

    def request_module(self, port_id: int, name: str) -> int:
        number = self._next_number()
        self._out.append(encode_request_module(number, port_id, name))
        return number

    def call(self, port_id: int, procedure_id: int, payload: bytes = b"") -> int:
        """REQUEST for a unary or server-streaming procedure; returns its number."""
        number = self._next_number()
        self._calls[number] = port_id
        self._out.append(encode_request(number, port_id, procedure_id, payload))
        return number

    def ack(self, stream_number: int, seq: int) -> None:
        """STREAM_ACK: ask for the item after ``seq`` (0 acknowledges the offer)."""
        self._out.append(encode_stream_ack(stream_number, self._calls.get(stream_number, 0), seq))

    def cancel_stream(self, stream_number: int, seq: int) -> None:
        """Client close, as TS sends it: STREAM_MESSAGE closed=true, seq = last received."""
        port_id = self._calls.pop(stream_number, 0)
        self._open_streams.discard(stream_number)
        self._out.append(encode_stream_message(stream_number, port_id, seq, closed=True))

    def destroy_port(self, port_id: int, *, fresh_number: bool = False) -> int:
        """DESTROY_PORT with number 0 like TS, or a fresh number like C#; returns the number."""
        number = self._next_number() if fresh_number else 0
        self._out.append(encode_destroy_port(number, port_id))
        for call in [n for n, p in self._calls.items() if p == port_id]:
            del self._calls[call]
            self._open_streams.discard(call)
        return number

    def send_raw(self, frame: bytes) -> None:
        """Queue arbitrary bytes: lets tests and the load simulator misbehave on purpose."""
        self._out.append(frame)

    def data_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    # --- inbound ----------------------------------------------------------------------------

    def receive_frame(self, data: bytes) -> list[ClientEvent]:
        mtype, number, msg = parse_frame(data, SERVER_TO_CLIENT)
        if mtype is _STREAM_MESSAGE:
            return [self._on_stream_message(number, msg)]
        if mtype is MessageType.RESPONSE:
            self._calls.pop(number, None)
            return [ResponseReceived(number, msg.payload)]
        if mtype is MessageType.REMOTE_ERROR_RESPONSE:
            self._calls.pop(number, None)
            self._open_streams.discard(number)
            return [RemoteErrorReceived(number, msg.error_code, msg.error_message)]
        if mtype is MessageType.CREATE_PORT_RESPONSE:
            return [PortCreated(number, msg.port_id)]
        if mtype is MessageType.REQUEST_MODULE_RESPONSE:
            procedures = {p.procedure_name: p.procedure_id for p in msg.procedures}
            return [ModuleLoaded(number, msg.port_id, procedures)]
        return [ServerReady()]  # the only type left in SERVER_TO_CLIENT

    def _on_stream_message(self, number: int, msg: Any) -> ClientEvent:
        if msg.closed:
            self._calls.pop(number, None)
            self._open_streams.discard(number)
            return StreamEnded(number, msg.sequence_id)
        if number not in self._open_streams and msg.sequence_id == 0:
            self._open_streams.add(number)
            return StreamOffered(number, msg.port_id)
        return StreamItem(number, msg.sequence_id, msg.payload)
