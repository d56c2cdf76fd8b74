"""Wire frames of the @dcl/rpc protocol: message identifiers, parsing and encoding.

One RPC message travels in one binary WebSocket message, with no length prefix. Parsing goes
through the generated protobuf classes (they already implement proto3's defaults and
unknown-field rules); the frames a server sends for every delivered update are encoded by hand
because building protobuf objects costs several microseconds per frame. The hand encoders
produce exactly the bytes protobuf-python would (fields in number order, default values left
out), which the tests check against ``wire_pb2``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Final

from google.protobuf.message import DecodeError, Message

from presenced.closes import Close
from presenced.rpc import wire_pb2

__all__ = [
    "ANY_TYPE",
    "CLIENT_TO_SERVER",
    "MAX_NUMBER",
    "SERVER_READY_FRAME",
    "SERVER_TO_CLIENT",
    "VARINT_BELOW_128",
    "ErrorCode",
    "MessageType",
    "ProtocolError",
    "encode_create_port",
    "encode_create_port_response",
    "encode_destroy_port",
    "encode_remote_error",
    "encode_request",
    "encode_request_module",
    "encode_request_module_response",
    "encode_response",
    "encode_stream_ack",
    "encode_stream_message",
    "encode_varint",
    "match_stream_ack",
    "pack_id",
    "parse_frame",
    "stream_body",
    "stream_prefix",
    "unpack_id",
]


class MessageType(IntEnum):
    """``RpcMessageTypes`` without the ``RpcMessageTypes_`` prefix of the .proto names."""

    EMPTY = 0
    REQUEST = 1
    RESPONSE = 2
    STREAM_MESSAGE = 3
    STREAM_ACK = 4
    CREATE_PORT = 5
    CREATE_PORT_RESPONSE = 6
    REQUEST_MODULE = 7
    REQUEST_MODULE_RESPONSE = 8
    REMOTE_ERROR_RESPONSE = 9
    DESTROY_PORT = 10
    SERVER_READY = 11


class ErrorCode(IntEnum):
    """``RemoteError.error_code`` values. Clients only show the message, never the code.

    0 is what the TypeScript server sends for everything; the others are the Rust server's
    codes for protocol-level failures, which we use because they cost nothing and help logs.
    """

    APPLICATION = 0
    PROTOCOL_ERROR = 1
    PORT_NOT_FOUND = 2
    MODULE_NOT_FOUND = 3
    PROCEDURE_NOT_FOUND = 4


#: Largest message number: the identifier keeps 27 bits for it.
MAX_NUMBER: Final[int] = 0x07FFFFFF


class ProtocolError(Exception):
    """A frame that cannot be parsed or must not come from this peer.

    The connection cannot continue after one: close the WebSocket with ``close_code``.
    """

    close_code: int = Close.PROTOCOL_ERROR.code

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason


def pack_id(message_type: int, number: int) -> int:
    """Build ``message_identifier`` from a message type and a message number."""
    return ((message_type & 0xF) << 27) | (number & MAX_NUMBER)


def unpack_id(message_identifier: int) -> tuple[int, int]:
    """Split ``message_identifier`` into (type, number).

    The type is a plain int because bits 27..30 can hold 12..15, which name no type.
    """
    return (message_identifier >> 27) & 0xF, message_identifier & MAX_NUMBER


# --- parsing -----------------------------------------------------------------------------------

_CLASSES: Final[dict[int, type[Message]]] = {
    MessageType.REQUEST: wire_pb2.Request,
    MessageType.RESPONSE: wire_pb2.Response,
    MessageType.STREAM_MESSAGE: wire_pb2.StreamMessage,
    MessageType.STREAM_ACK: wire_pb2.StreamMessage,
    MessageType.CREATE_PORT: wire_pb2.CreatePort,
    MessageType.CREATE_PORT_RESPONSE: wire_pb2.CreatePortResponse,
    MessageType.REQUEST_MODULE: wire_pb2.RequestModule,
    MessageType.REQUEST_MODULE_RESPONSE: wire_pb2.RequestModuleResponse,
    MessageType.REMOTE_ERROR_RESPONSE: wire_pb2.RemoteError,
    MessageType.DESTROY_PORT: wire_pb2.DestroyPort,
    MessageType.SERVER_READY: wire_pb2.RpcMessageHeader,
}
# Indexing a tuple is much cheaper than calling MessageType(n) for every frame.
_TYPE_BY_INT: Final[tuple[MessageType | None, ...]] = tuple(
    MessageType(t) if t in _CLASSES else None for t in range(16)
)

ANY_TYPE: Final[frozenset[MessageType]] = frozenset(MessageType(t) for t in _CLASSES)
#: What a server accepts; anything else from a client closes the transport in the TS server.
CLIENT_TO_SERVER: Final[frozenset[MessageType]] = frozenset(
    {
        MessageType.REQUEST,
        MessageType.STREAM_MESSAGE,
        MessageType.STREAM_ACK,
        MessageType.CREATE_PORT,
        MessageType.REQUEST_MODULE,
        MessageType.DESTROY_PORT,
    }
)
#: What a client accepts. STREAM_ACK would only come for client streams, which we never open.
SERVER_TO_CLIENT: Final[frozenset[MessageType]] = frozenset(
    {
        MessageType.RESPONSE,
        MessageType.STREAM_MESSAGE,
        MessageType.CREATE_PORT_RESPONSE,
        MessageType.REQUEST_MODULE_RESPONSE,
        MessageType.REMOTE_ERROR_RESPONSE,
        MessageType.SERVER_READY,
    }
)

_U32: Final = struct.Struct("<I")
_unpack_u32 = _U32.unpack_from
_pack_u32 = _U32.pack


def parse_frame(
    data: bytes, accept: frozenset[MessageType] = ANY_TYPE
) -> tuple[MessageType, int, Message]:
    """Decode one frame into (type, number, typed protobuf message).

    Raises ``ProtocolError`` if the frame is not protobuf, names EMPTY or an unknown type, or
    names a type outside ``accept``. Missing fields read as defaults, unknown fields are
    ignored.
    """
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise ProtocolError(f"expected a binary frame, got {type(data).__name__}")
        data = bytes(data)
    # The protocol says: decode RpcMessageHeader, then decode again as the named type. Every
    # message has the same field 1, so decoding straight as the type named by a leading field 1
    # yields the same header value whenever that value is also the last field 1 in the frame
    # (protobuf keeps the last one). Checking that saves one protobuf decode per frame; frames
    # where it fails (no leading field 1, repeated field 1, body invalid for the guessed type)
    # take the literal two-step path.
    if len(data) >= 5 and data[0] == 0x0D:
        ident = _unpack_u32(data, 1)[0]
        cls = _CLASSES.get((ident >> 27) & 0xF)
        if cls is not None:
            try:
                msg = cls.FromString(data)
            except DecodeError:
                msg = None
            if msg is not None and msg.message_identifier == ident:
                return _checked(ident, msg, accept)
    try:
        ident = wire_pb2.RpcMessageHeader.FromString(data).message_identifier
    except DecodeError as exc:
        raise ProtocolError(f"unparseable frame: {exc}") from None
    cls = _CLASSES.get((ident >> 27) & 0xF)
    if cls is None:
        raise ProtocolError(f"unknown message type {(ident >> 27) & 0xF}")
    try:
        msg = cls.FromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"unparseable {cls.__name__}: {exc}") from None
    return _checked(ident, msg, accept)


def _checked(
    ident: int, msg: Message, accept: frozenset[MessageType]
) -> tuple[MessageType, int, Message]:
    mtype = _TYPE_BY_INT[(ident >> 27) & 0xF]
    if mtype not in accept:
        raise ProtocolError(f"unexpected {mtype.name} from peer")
    return mtype, ident & MAX_NUMBER, msg


# 0d <id> 15 <port_id> 25 <sequence_id> 40 01: how TS, C# and Rust all encode STREAM_ACK k>0.
_ACK_LAYOUT: Final = struct.Struct("<BIBIBIH")
_unpack_ack = _ACK_LAYOUT.unpack_from
_STREAM_ACK_TYPE: Final = int(MessageType.STREAM_ACK)


def match_stream_ack(data: bytes) -> tuple[int, int] | None:
    """(number, sequence_id) if ``data`` is a STREAM_ACK in the canonical 17-byte layout.

    A server receives one ack per delivered item, so this skips protobuf for the common shape.
    For bytes it matches, ``parse_frame`` gives the same values; anything else returns None and
    must go through ``parse_frame``.
    """
    if len(data) != 17 or type(data) is not bytes:
        return None
    t_id, ident, t_port, _port, t_seq, seq, ack = _unpack_ack(data)
    if (
        t_id == 0x0D
        and t_port == 0x15
        and t_seq == 0x25
        and ack == 0x0140
        and (ident >> 27) & 0xF == _STREAM_ACK_TYPE
    ):
        return ident & MAX_NUMBER, seq
    return None


# --- encoding ----------------------------------------------------------------------------------

#: Varints of 0..127 (one byte each), indexable without a function call on the hot path.
VARINT_BELOW_128: Final[tuple[bytes, ...]] = tuple(bytes((i,)) for i in range(128))


def encode_varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (protobuf lengths)."""
    if value < 0x80:
        return VARINT_BELOW_128[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Tags are (field_number << 3) | wire_type: 5 = fixed32, 2 = length-delimited, 0 = varint.
_TAG_ID: Final = b"\x0d"  # field 1, fixed32
_TAG_F2_FIXED: Final = b"\x15"  # field 2, fixed32: port_id / error_code
_TAG_F4_FIXED: Final = b"\x25"  # field 4, fixed32: sequence_id / procedure_id
_TAG_F6_BYTES: Final = b"\x32"  # field 6, bytes: payload
_CLOSED_TRUE: Final = b"\x38\x01"  # field 7 = true
_ACK_TRUE: Final = b"\x40\x01"  # field 8 = true

_STREAM_PREFIX: Final = pack_id(MessageType.STREAM_MESSAGE, 0)
_ACK_PREFIX: Final = pack_id(MessageType.STREAM_ACK, 0)
_RESPONSE_PREFIX: Final = pack_id(MessageType.RESPONSE, 0)

#: SERVER_READY always carries number 0: exactly ``0d 00 00 00 58``.
SERVER_READY_FRAME: Final[bytes] = _TAG_ID + _pack_u32(pack_id(MessageType.SERVER_READY, 0))


def stream_prefix(message_identifier: int, port_id: int) -> bytes:
    """Fields 1 and 2 of a StreamMessage: constant for the whole life of a stream.

    It is also, on its own, the complete stream "offer" (seq 0, no payload, flags false).
    """
    head = _TAG_ID + _pack_u32(message_identifier)
    return head + _TAG_F2_FIXED + _pack_u32(port_id) if port_id else head


def stream_body(prefix: bytes, sequence_id: int, payload: bytes, closed: bool, ack: bool) -> bytes:
    """A StreamMessage whose fields 1 and 2 are already encoded in ``prefix``."""
    parts = [prefix]
    if sequence_id:
        parts.append(_TAG_F4_FIXED + _pack_u32(sequence_id))
    if payload:
        parts.append(_TAG_F6_BYTES + encode_varint(len(payload)))
        parts.append(payload)
    if closed:
        parts.append(_CLOSED_TRUE)
    if ack:
        parts.append(_ACK_TRUE)
    return b"".join(parts)


def encode_stream_message(
    number: int, port_id: int, sequence_id: int, payload: bytes = b"", closed: bool = False
) -> bytes:
    """STREAM_MESSAGE frame (server items, the offer, and either side's close)."""
    prefix = stream_prefix(_STREAM_PREFIX | (number & MAX_NUMBER), port_id)
    return stream_body(prefix, sequence_id, payload, closed, False)


def encode_stream_ack(number: int, port_id: int, sequence_id: int) -> bytes:
    """STREAM_ACK frame (StreamMessage layout with ack=true), sent by clients."""
    prefix = stream_prefix(_ACK_PREFIX | (number & MAX_NUMBER), port_id)
    return stream_body(prefix, sequence_id, b"", False, True)


def encode_response(number: int, payload: bytes) -> bytes:
    """RESPONSE frame for a unary call."""
    head = _TAG_ID + _pack_u32(_RESPONSE_PREFIX | (number & MAX_NUMBER))
    if not payload:
        return head
    return b"".join((head, _TAG_F6_BYTES, encode_varint(len(payload)), payload))


# Frames below are rare (once per port, call or error): plain protobuf is fast enough.


def encode_remote_error(number: int, message: str, code: int = 0) -> bytes:
    """REMOTE_ERROR_RESPONSE frame."""
    return wire_pb2.RemoteError(
        message_identifier=pack_id(MessageType.REMOTE_ERROR_RESPONSE, number),
        error_code=code,
        error_message=message,
    ).SerializeToString()


def encode_create_port_response(number: int, port_id: int) -> bytes:
    """CREATE_PORT_RESPONSE frame."""
    return wire_pb2.CreatePortResponse(
        message_identifier=pack_id(MessageType.CREATE_PORT_RESPONSE, number), port_id=port_id
    ).SerializeToString()


def encode_request_module_response(
    number: int, port_id: int, procedures: Iterable[tuple[int, str]]
) -> bytes:
    """REQUEST_MODULE_RESPONSE frame; ``procedures`` are (procedure_id, name) pairs."""
    return wire_pb2.RequestModuleResponse(
        message_identifier=pack_id(MessageType.REQUEST_MODULE_RESPONSE, number),
        port_id=port_id,
        procedures=[
            wire_pb2.ModuleProcedure(procedure_id=pid, procedure_name=name)
            for pid, name in procedures
        ],
    ).SerializeToString()


def encode_create_port(number: int, port_name: str) -> bytes:
    """CREATE_PORT frame (client side)."""
    return wire_pb2.CreatePort(
        message_identifier=pack_id(MessageType.CREATE_PORT, number), port_name=port_name
    ).SerializeToString()


def encode_request_module(number: int, port_id: int, module_name: str) -> bytes:
    """REQUEST_MODULE frame (client side)."""
    return wire_pb2.RequestModule(
        message_identifier=pack_id(MessageType.REQUEST_MODULE, number),
        port_id=port_id,
        module_name=module_name,
    ).SerializeToString()


def encode_request(
    number: int, port_id: int, procedure_id: int, payload: bytes = b"", client_stream: int = 0
) -> bytes:
    """REQUEST frame (client side)."""
    return wire_pb2.Request(
        message_identifier=pack_id(MessageType.REQUEST, number),
        port_id=port_id,
        procedure_id=procedure_id,
        client_stream=client_stream,
        payload=payload,
    ).SerializeToString()


def encode_destroy_port(number: int, port_id: int) -> bytes:
    """DESTROY_PORT frame (client side; TS sends number 0, C# a fresh number)."""
    return wire_pb2.DestroyPort(
        message_identifier=pack_id(MessageType.DESTROY_PORT, number), port_id=port_id
    ).SerializeToString()
