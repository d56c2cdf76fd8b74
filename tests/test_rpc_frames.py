"""Wire-level tests: identifiers, parsing, and hand encoders checked against protobuf."""

import random
import struct

import pytest

from presenced.rpc import wire_pb2
from presenced.rpc.frames import (
    ANY_TYPE,
    CLIENT_TO_SERVER,
    MAX_NUMBER,
    SERVER_READY_FRAME,
    SERVER_TO_CLIENT,
    MessageType,
    ProtocolError,
    encode_create_port,
    encode_create_port_response,
    encode_destroy_port,
    encode_remote_error,
    encode_request,
    encode_request_module,
    encode_request_module_response,
    encode_response,
    encode_stream_ack,
    encode_stream_message,
    encode_varint,
    match_stream_ack,
    pack_id,
    parse_frame,
    unpack_id,
)

T = MessageType
NUMBERS = [0, 1, 2, 127, 128, 0x3FFF, 0x4000, 0x00FFFFFF, 0x01000000, MAX_NUMBER]
U32S = [0, 1, 5, 255, 256, 0x7FFFFFFF, 0xFFFFFFFF]
PAYLOADS = [b"", b"\x00", b"x" * 5, b"y" * 127, b"z" * 128, b"w" * 300, b"v" * 16384, b"u" * 70000]


def h(text: str) -> bytes:
    """Hex with spaces, as the traces below write frames."""
    return bytes.fromhex(text.replace(" ", ""))


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


# --- message identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(range(16)))
@pytest.mark.parametrize("number", NUMBERS)
def test_pack_unpack_round_trip(mtype, number):
    assert unpack_id(pack_id(mtype, number)) == (mtype, number)


def test_pack_masks_out_of_range_parts():
    assert pack_id(T.REQUEST, MAX_NUMBER + 1) == pack_id(T.REQUEST, 0)
    assert pack_id(0x10 | T.RESPONSE, 7) == pack_id(T.RESPONSE, 7)


def test_unpack_ignores_bit_31():
    assert unpack_id(0x80000000 | pack_id(T.STREAM_ACK, 9)) == (T.STREAM_ACK, 9)


def test_type_prefixes_match_protocol_table():
    table = {
        T.REQUEST: 0x08000000,
        T.RESPONSE: 0x10000000,
        T.STREAM_MESSAGE: 0x18000000,
        T.STREAM_ACK: 0x20000000,
        T.CREATE_PORT: 0x28000000,
        T.CREATE_PORT_RESPONSE: 0x30000000,
        T.REQUEST_MODULE: 0x38000000,
        T.REQUEST_MODULE_RESPONSE: 0x40000000,
        T.REMOTE_ERROR_RESPONSE: 0x48000000,
        T.DESTROY_PORT: 0x50000000,
        T.SERVER_READY: 0x58000000,
    }
    for mtype, prefix in table.items():
        assert pack_id(mtype, 0) == prefix


def test_message_type_matches_generated_enum():
    for mtype in MessageType:
        assert wire_pb2.RpcMessageTypes.Value(f"RpcMessageTypes_{mtype.name}") == mtype


# --- parsing -----------------------------------------------------------------------------------


def sample_messages():
    """One populated protobuf message per non-EMPTY type."""
    m = pack_id
    return {
        T.REQUEST: wire_pb2.Request(
            message_identifier=m(T.REQUEST, 3), port_id=1, procedure_id=4, payload=b"abc"
        ),
        T.RESPONSE: wire_pb2.Response(message_identifier=m(T.RESPONSE, 3), payload=b"ok"),
        T.STREAM_MESSAGE: wire_pb2.StreamMessage(
            message_identifier=m(T.STREAM_MESSAGE, 5), port_id=2, sequence_id=3, payload=b"p"
        ),
        T.STREAM_ACK: wire_pb2.StreamMessage(
            message_identifier=m(T.STREAM_ACK, 5), port_id=2, sequence_id=3, ack=True
        ),
        T.CREATE_PORT: wire_pb2.CreatePort(
            message_identifier=m(T.CREATE_PORT, 1), port_name="social_service"
        ),
        T.CREATE_PORT_RESPONSE: wire_pb2.CreatePortResponse(
            message_identifier=m(T.CREATE_PORT_RESPONSE, 1), port_id=9
        ),
        T.REQUEST_MODULE: wire_pb2.RequestModule(
            message_identifier=m(T.REQUEST_MODULE, 2), port_id=9, module_name="SocialService"
        ),
        T.REQUEST_MODULE_RESPONSE: wire_pb2.RequestModuleResponse(
            message_identifier=m(T.REQUEST_MODULE_RESPONSE, 2),
            port_id=9,
            procedures=[wire_pb2.ModuleProcedure(procedure_id=1, procedure_name="GetFriends")],
        ),
        T.REMOTE_ERROR_RESPONSE: wire_pb2.RemoteError(
            message_identifier=m(T.REMOTE_ERROR_RESPONSE, 4), error_code=3, error_message="boom"
        ),
        T.DESTROY_PORT: wire_pb2.DestroyPort(message_identifier=m(T.DESTROY_PORT, 0), port_id=9),
        T.SERVER_READY: wire_pb2.RpcMessageHeader(message_identifier=m(T.SERVER_READY, 0)),
    }


@pytest.mark.parametrize("mtype", [t for t in MessageType if t != T.EMPTY])
def test_every_message_type_parses(mtype):
    sent = sample_messages()[mtype]
    got_type, number, msg = parse_frame(sent.SerializeToString())
    assert got_type is mtype
    assert number == unpack_id(sent.message_identifier)[1]
    assert type(msg) is type(sent)
    assert msg == sent


def test_direction_sets_partition_the_types():
    assert CLIENT_TO_SERVER | SERVER_TO_CLIENT | {T.STREAM_ACK} == ANY_TYPE
    assert CLIENT_TO_SERVER & SERVER_TO_CLIENT == {T.STREAM_MESSAGE}


@pytest.mark.parametrize("mtype", sorted(ANY_TYPE - CLIENT_TO_SERVER))
def test_type_a_client_must_not_send_is_rejected(mtype):
    frame = sample_messages()[mtype].SerializeToString()
    with pytest.raises(ProtocolError, match="unexpected"):
        parse_frame(frame, CLIENT_TO_SERVER)


@pytest.mark.parametrize("raw_type", [0, 12, 13, 14, 15])
def test_empty_and_unknown_types_are_rejected(raw_type):
    frame = b"\x0d" + u32((raw_type << 27) | 1)
    with pytest.raises(ProtocolError, match="unknown message type"):
        parse_frame(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # no header at all: EMPTY
        b"\x0d\x01\x00",  # truncated fixed32
        b"\xff\xff\xff",  # bad tag
        h("0d01000028 220e") + b"social",  # string shorter than its length
        h("0d01000028 2202 80ff"),  # port_name is not UTF-8
        h("0d01000008 32 ffffffffffffffffff01"),  # absurd length varint
        h("0d01000028") + b"\x7b" * 100_000,  # 100k nested unknown groups
    ],
)
def test_unparseable_frames_are_rejected(frame):
    with pytest.raises(ProtocolError):
        parse_frame(frame)


def test_text_frames_are_rejected_and_bytearray_is_accepted():
    with pytest.raises(ProtocolError, match="binary"):
        parse_frame("0d00000058")  # type: ignore[arg-type]
    assert parse_frame(bytearray(SERVER_READY_FRAME))[0] is T.SERVER_READY
    assert parse_frame(memoryview(SERVER_READY_FRAME))[0] is T.SERVER_READY


def test_missing_fields_read_as_defaults():
    mtype, number, msg = parse_frame(b"\x0d" + u32(pack_id(T.REQUEST, 7)))
    assert (mtype, number) == (T.REQUEST, 7)
    assert (msg.port_id, msg.procedure_id, msg.client_stream, msg.payload) == (0, 0, 0, b"")


def test_unknown_fields_are_ignored():
    frame = encode_stream_ack(5, 1, 2) + b"\x78\x05" + b"\x82\x01\x03abc"  # fields 15 and 16
    mtype, number, msg = parse_frame(frame)
    assert (mtype, number, msg.port_id, msg.sequence_id, msg.ack) == (T.STREAM_ACK, 5, 1, 2, True)


def test_header_not_first_is_found():
    # Field 1 after the others: legal protobuf, so the slow path must handle it.
    frame = h("1501000000 4001") + b"\x0d" + u32(pack_id(T.STREAM_ACK, 5))
    mtype, number, msg = parse_frame(frame)
    assert (mtype, number, msg.port_id, msg.ack) == (T.STREAM_ACK, 5, 1, True)


def test_repeated_header_last_one_wins():
    # A frame that starts like an ACK but whose last field 1 names CREATE_PORT: protobuf keeps
    # the last value, so this is a CREATE_PORT (the fast path must not trust the first one).
    frame = encode_stream_ack(5, 1, 2) + b"\x0d" + u32(pack_id(T.CREATE_PORT, 6))
    mtype, number, _ = parse_frame(frame)
    assert (mtype, number) == (T.CREATE_PORT, 6)
    assert match_stream_ack(frame) is None
    frame = encode_stream_ack(5, 1, 2) + b"\x0d" + u32(pack_id(T.RESPONSE, 6))
    with pytest.raises(ProtocolError):
        parse_frame(frame, CLIENT_TO_SERVER)


def test_random_bytes_raise_only_protocol_error():
    rng = random.Random(1234)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 40))
        try:
            mtype, number, _msg = parse_frame(data)
        except ProtocolError:
            continue
        assert mtype in ANY_TYPE
        assert 0 <= number <= MAX_NUMBER


# --- encoders ----------------------------------------------------------------------------------


def test_server_ready_bytes():
    assert SERVER_READY_FRAME == h("0d00000058")
    assert (
        SERVER_READY_FRAME
        == wire_pb2.RpcMessageHeader(
            message_identifier=pack_id(T.SERVER_READY, 0)
        ).SerializeToString()
    )


def test_varint_matches_protobuf_length_prefix():
    assert encode_varint(0) == b"\x00"
    for n in [1, 127, 128, 300, 16383, 16384, 2097151, 2097152, 70000]:
        pb = wire_pb2.Response(message_identifier=pack_id(T.RESPONSE, 1), payload=b"a" * n)
        serialized = pb.SerializeToString()
        # 0d <4 bytes> 32 <varint n> <n bytes>
        assert serialized[6 : len(serialized) - n] == encode_varint(n)


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("port_id", [0, 1, 0xFFFFFFFF])
@pytest.mark.parametrize("seq", [0, 1, 2, 0xFFFFFFFF])
@pytest.mark.parametrize("payload", [b"", b"\x00", b"x" * 128])
@pytest.mark.parametrize("closed", [False, True])
def test_encode_stream_message_equals_protobuf(number, port_id, seq, payload, closed):
    expected = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_MESSAGE, number),
        port_id=port_id,
        sequence_id=seq,
        payload=payload,
        closed=closed,
    ).SerializeToString()
    assert encode_stream_message(number, port_id, seq, payload, closed) == expected


@pytest.mark.parametrize("payload", PAYLOADS)
def test_encode_stream_message_payload_sizes(payload):
    expected = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_MESSAGE, 77), port_id=3, sequence_id=9, payload=payload
    ).SerializeToString()
    assert encode_stream_message(77, 3, 9, payload) == expected


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_encode_response_equals_protobuf(number, payload):
    expected = wire_pb2.Response(
        message_identifier=pack_id(T.RESPONSE, number), payload=payload
    ).SerializeToString()
    assert encode_response(number, payload) == expected


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("port_id", U32S)
@pytest.mark.parametrize("seq", U32S)
def test_encode_stream_ack_equals_protobuf(number, port_id, seq):
    expected = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_ACK, number), port_id=port_id, sequence_id=seq, ack=True
    ).SerializeToString()
    assert encode_stream_ack(number, port_id, seq) == expected


def test_cold_encoders_round_trip():
    cases = [
        (encode_remote_error(4, "boom", 2), T.REMOTE_ERROR_RESPONSE, 4),
        (encode_create_port_response(1, 7), T.CREATE_PORT_RESPONSE, 1),
        (encode_request_module_response(2, 7, [(1, "A"), (2, "B")]), T.REQUEST_MODULE_RESPONSE, 2),
        (encode_create_port(1, "p"), T.CREATE_PORT, 1),
        (encode_request_module(2, 7, "M"), T.REQUEST_MODULE, 2),
        (encode_request(3, 7, 1, b"x", client_stream=9), T.REQUEST, 3),
        (encode_destroy_port(0, 7), T.DESTROY_PORT, 0),
    ]
    for frame, mtype, number in cases:
        assert parse_frame(frame)[:2] == (mtype, number)
    msg = parse_frame(encode_request_module_response(2, 7, [(1, "A"), (2, "B")]))[2]
    assert [(p.procedure_id, p.procedure_name) for p in msg.procedures] == [(1, "A"), (2, "B")]


# --- the STREAM_ACK fast path ------------------------------------------------------------------


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("seq", [1, 2, 0x7FFFFFFF, 0xFFFFFFFF])
def test_match_stream_ack_canonical(number, seq):
    frame = encode_stream_ack(number, 1, seq)
    assert len(frame) == 17
    assert match_stream_ack(frame) == (number, seq)
    _, parsed_number, msg = parse_frame(frame)
    assert (parsed_number, msg.sequence_id) == (number, seq)


def test_match_stream_ack_rejects_other_shapes():
    assert match_stream_ack(encode_stream_ack(5, 1, 0)) is None  # seq 0: 12 bytes
    assert match_stream_ack(encode_stream_ack(5, 0, 3)) is None  # port 0: 12 bytes
    assert match_stream_ack(encode_stream_message(5, 1, 3, b"ab")) is None  # 17 bytes, no ack
    closed_and_acked = h("0d05000020 1501000000 2501000000 3801")  # 17 bytes, closed not ack
    assert match_stream_ack(closed_and_acked) is None
    wrong_type = b"\x0d" + u32(pack_id(T.STREAM_MESSAGE, 5)) + h("1501000000 2503000000 4001")
    assert match_stream_ack(wrong_type) is None
    assert match_stream_ack(bytearray(encode_stream_ack(5, 1, 3))) is None  # slow path is fine


def test_match_stream_ack_agrees_with_parse_frame_on_random_frames():
    rng = random.Random(99)
    base = bytearray(encode_stream_ack(5, 1, 3))
    for _ in range(5000):
        frame = bytearray(base)
        for _ in range(rng.randrange(1, 3)):
            frame[rng.randrange(17)] = rng.randrange(256)
        frame = bytes(frame)
        fast = match_stream_ack(frame)
        if fast is None:
            continue
        mtype, number, msg = parse_frame(frame)
        assert mtype is T.STREAM_ACK
        assert fast == (number, msg.sequence_id)


# --- a trace of the real TS server and client (@dcl/rpc 1.1.2) ------------------------------------


def test_trace_client_frames_parse():
    mtype, number, msg = parse_frame(h("0d01000028 220e") + b"social_service")
    assert (mtype, number, msg.port_name) == (T.CREATE_PORT, 1, "social_service")

    mtype, number, msg = parse_frame(h("0d02000038 1501000000 220d") + b"SocialService")
    assert (mtype, number, msg.port_id, msg.module_name) == (
        T.REQUEST_MODULE,
        2,
        1,
        "SocialService",
    )

    mtype, number, msg = parse_frame(h("0d03000008 1501000000 2501000000 3204 0a02080a"))
    assert (mtype, number, msg.port_id, msg.procedure_id) == (T.REQUEST, 3, 1, 1)
    assert (msg.client_stream, msg.payload) == (0, h("0a02080a"))

    mtype, number, msg = parse_frame(h("0d05000008 1501000000 2508000000"))
    assert (mtype, number, msg.procedure_id, msg.payload) == (T.REQUEST, 5, 8, b"")

    mtype, number, msg = parse_frame(h("0d05000020 1501000000 4001"))
    assert (mtype, number, msg.port_id, msg.sequence_id, msg.ack) == (T.STREAM_ACK, 5, 1, 0, True)

    mtype, number, msg = parse_frame(h("0d05000020 1501000000 2501000000 4001"))
    assert (mtype, number, msg.sequence_id, msg.ack) == (T.STREAM_ACK, 5, 1, True)

    mtype, number, msg = parse_frame(h("0d00000050 1501000000"))
    assert (mtype, number, msg.port_id) == (T.DESTROY_PORT, 0, 1)

    mtype, number, msg = parse_frame(h("0d0a000018 1502000000 2501000000 3801"))
    assert (mtype, number, msg.port_id, msg.sequence_id) == (T.STREAM_MESSAGE, 10, 2, 1)
    assert (msg.closed, msg.ack) == (True, False)


def test_trace_server_frames_parse():
    mtype, number, msg = parse_frame(h("0d01000030 1501000000"))
    assert (mtype, number, msg.port_id) == (T.CREATE_PORT_RESPONSE, 1, 1)
    mtype, number, msg = parse_frame(h("0d04000048 1a04") + b"boom")
    assert (mtype, number, msg.error_code, msg.error_message) == (
        T.REMOTE_ERROR_RESPONSE,
        4,
        0,
        "boom",
    )
    mtype, number, msg = parse_frame(h("0d05000018 1501000000 2502000000 3801"))
    assert (mtype, number, msg.sequence_id, msg.closed) == (T.STREAM_MESSAGE, 5, 2, True)


def test_trace_server_frames_from_encoders():
    assert encode_create_port_response(1, 1) == h("0d01000030 1501000000")
    assert encode_remote_error(4, "boom") == h("0d04000048 1a04") + b"boom"
    assert encode_stream_message(5, 1, 0) == h("0d05000018 1501000000")
    assert encode_stream_message(5, 1, 2, closed=True) == h("0d05000018 1501000000 2502000000 3801")
    item = encode_stream_message(5, 1, 1, b"u" * 0x11)
    assert item.startswith(h("0d05000018 1501000000 2501000000 3211"))
    assert encode_stream_message(10, 2, 1, closed=True)[5:] == h("1502000000 2501000000 3801")
