"""RpcServerConnection: session handling, the stream ack flow, client quirks, bad input.

Client frames are built with protobuf directly (not our encoders), so these tests also check
the server against an independent encoding.
"""

import itertools
import random
import struct

import pytest

from presenced.rpc import (
    ModuleSpec,
    PortClosed,
    ProcedureSpec,
    ProtocolError,
    RpcServerConnection,
    StreamCancelled,
    StreamNotReadyError,
    StreamReady,
    StreamRequest,
    UnaryRequest,
    module_registry,
    wire_pb2,
)
from presenced.rpc.frames import MessageType, pack_id, parse_frame

T = MessageType

SOCIAL = ModuleSpec(
    "SocialService",
    [
        ProcedureSpec("GetFriends"),
        ProcedureSpec("GetMutualFriends"),
        ProcedureSpec("GetPendingFriendshipRequests"),
        ProcedureSpec("GetSentFriendshipRequests"),
        ProcedureSpec("UpsertFriendship"),
        ProcedureSpec("SubscribeToFriendshipUpdates", server_streaming=True),
        ProcedureSpec("GetFriendshipStatus"),
        ProcedureSpec("SubscribeToFriendConnectivityUpdates", server_streaming=True),
    ],
)
PRESENCE = ModuleSpec(
    "Presence", [ProcedureSpec("Heartbeat"), ProcedureSpec("Watch", server_streaming=True)]
)
MODULES = module_registry(SOCIAL, PRESENCE)
GET_FRIENDS, SUBSCRIBE = 1, 8


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


# --- client frames, built with protobuf -------------------------------------------------------


def create_port(number, name="social_service"):
    return wire_pb2.CreatePort(
        message_identifier=pack_id(T.CREATE_PORT, number), port_name=name
    ).SerializeToString()


def request_module(number, port_id, name="SocialService"):
    return wire_pb2.RequestModule(
        message_identifier=pack_id(T.REQUEST_MODULE, number), port_id=port_id, module_name=name
    ).SerializeToString()


def request(number, port_id, procedure_id, payload=b"", client_stream=0):
    return wire_pb2.Request(
        message_identifier=pack_id(T.REQUEST, number),
        port_id=port_id,
        procedure_id=procedure_id,
        payload=payload,
        client_stream=client_stream,
    ).SerializeToString()


def ack(number, seq, port_id=1):
    return wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_ACK, number), port_id=port_id, sequence_id=seq, ack=True
    ).SerializeToString()


def close(number, seq, port_id=1, mtype=T.STREAM_MESSAGE):
    return wire_pb2.StreamMessage(
        message_identifier=pack_id(mtype, number), port_id=port_id, sequence_id=seq, closed=True
    ).SerializeToString()


def destroy_port(number, port_id):
    return wire_pb2.DestroyPort(
        message_identifier=pack_id(T.DESTROY_PORT, number), port_id=port_id
    ).SerializeToString()


# --- helpers ----------------------------------------------------------------------------------


def parsed(frames):
    return [parse_frame(f) for f in frames]


def remote_error(conn):
    """The single frame queued, which must be a RemoteError: (number, code, message)."""
    [(mtype, number, msg)] = parsed(conn.data_to_send())
    assert mtype is T.REMOTE_ERROR_RESPONSE
    return number, msg.error_code, msg.error_message


def connected(port_ids=None, modules=MODULES, **kwargs):
    """A server with port 1 (or the counter's next id) and SocialService loaded on it."""
    conn = RpcServerConnection(modules, port_ids, **kwargs)
    conn.receive_frame(create_port(1))
    [(_, _, created)] = parsed(conn.data_to_send())
    assert conn.receive_frame(request_module(2, created.port_id)) == []
    conn.data_to_send()
    return conn, created.port_id


def open_stream(conn, number=5, port_id=1, procedure_id=SUBSCRIBE, acked=True):
    events = conn.receive_frame(request(number, port_id, procedure_id))
    assert events == [
        StreamRequest(number, port_id, "SubscribeToFriendConnectivityUpdates", b"", "SocialService")
    ]
    [offer] = conn.data_to_send()
    assert offer == struct.pack("<BI", 0x0D, pack_id(T.STREAM_MESSAGE, number)) + struct.pack(
        "<BI", 0x15, port_id
    )
    if acked:
        assert conn.receive_frame(ack(number, 0, port_id)) == [StreamReady(number)]
    return number


# --- session basics ---------------------------------------------------------------------------


def test_server_ready_is_exact_bytes():
    conn = RpcServerConnection(MODULES)
    conn.server_ready()
    assert conn.data_to_send() == [h("0d00000058")]
    assert conn.data_to_send() == []


def test_create_port_answers_with_same_number_and_new_port_id():
    conn = RpcServerConnection(MODULES)
    assert conn.receive_frame(create_port(17)) == []
    assert conn.receive_frame(create_port(18, "other")) == []
    frames = parsed(conn.data_to_send())
    assert [(t, n, m.port_id) for t, n, m in frames] == [
        (T.CREATE_PORT_RESPONSE, 17, 1),
        (T.CREATE_PORT_RESPONSE, 18, 2),
    ]
    assert conn.port_ids() == [1, 2]


def test_request_module_lists_procedures_in_order():
    conn = RpcServerConnection(MODULES)
    conn.receive_frame(create_port(1))
    conn.data_to_send()
    assert conn.receive_frame(request_module(2, 1)) == []
    [(mtype, number, msg)] = parsed(conn.data_to_send())
    assert (mtype, number, msg.port_id) == (T.REQUEST_MODULE_RESPONSE, 2, 1)
    assert [(p.procedure_id, p.procedure_name) for p in msg.procedures] == [
        (i, p.name) for i, p in enumerate(SOCIAL.procedures, 1)
    ]


def test_second_module_on_a_port_continues_ids_and_reload_is_stable():
    conn, port_id = connected()
    conn.receive_frame(request_module(3, port_id, "Presence"))
    [(_, _, msg)] = parsed(conn.data_to_send())
    assert [(p.procedure_id, p.procedure_name) for p in msg.procedures] == [
        (9, "Heartbeat"),
        (10, "Watch"),
    ]
    conn.receive_frame(request_module(4, port_id, "SocialService"))
    [(_, number, again)] = parsed(conn.data_to_send())
    assert number == 4
    assert [p.procedure_id for p in again.procedures] == list(range(1, 9))
    assert conn.receive_frame(request(5, port_id, 9, b"hb")) == [
        UnaryRequest(5, port_id, "Heartbeat", b"hb", "Presence")
    ]


def test_unknown_module_is_a_remote_error():
    conn = RpcServerConnection(MODULES)
    conn.receive_frame(create_port(1, "social_service"))
    conn.data_to_send()
    conn.receive_frame(request_module(2, 1, "Nope"))
    assert remote_error(conn) == (2, 3, "Module Nope is not available for port social_service (1)")


def test_request_module_on_unknown_port_is_a_remote_error():
    conn = RpcServerConnection(MODULES)
    assert conn.receive_frame(request_module(2, 42)) == []
    assert remote_error(conn) == (2, 2, "invalid portId")


def test_request_on_unknown_port_is_a_remote_error():
    conn, _ = connected()
    assert conn.receive_frame(request(3, 99, GET_FRIENDS)) == []
    assert remote_error(conn) == (3, 2, "invalid portId")


def test_request_for_unknown_procedure_is_a_remote_error():
    conn, port_id = connected()
    assert conn.receive_frame(request(3, port_id, 99)) == []
    assert remote_error(conn) == (3, 4, "procedureId 99 is missing in social_service (1)")
    # A port without modules has no procedures at all.
    conn.receive_frame(create_port(4))
    conn.data_to_send()
    conn.receive_frame(request(5, 2, 1))
    assert remote_error(conn)[1] == 4


def test_client_streaming_request_is_refused():
    conn, port_id = connected()
    assert conn.receive_frame(request(3, port_id, SUBSCRIBE, client_stream=4)) == []
    number, _, message = remote_error(conn)
    assert number == 3 and "not supported" in message
    assert conn.stream_ids() == []


# --- unary calls ------------------------------------------------------------------------------


def test_unary_request_and_response():
    conn, port_id = connected()
    events = conn.receive_frame(request(3, port_id, GET_FRIENDS, h("0a02080a")))
    assert events == [UnaryRequest(3, port_id, "GetFriends", h("0a02080a"), "SocialService")]
    assert conn.respond(3, b"result") is True
    assert conn.data_to_send() == [h("0d03000010 3206") + b"result"]
    assert conn.respond(3, b"again") is False  # answered already
    assert conn.data_to_send() == []


def test_unary_failure_and_unknown_numbers():
    conn, port_id = connected()
    conn.receive_frame(request(4, port_id, 7))
    assert conn.fail(4, "boom") is True
    assert conn.data_to_send() == [h("0d04000048 1a04") + b"boom"]
    assert conn.fail(4, "boom") is False
    assert conn.respond(12345, b"x") is False
    assert conn.fail(12345, "x") is False
    assert conn.data_to_send() == []


def test_empty_response_payload_is_omitted():
    conn, port_id = connected()
    conn.receive_frame(request(3, port_id, GET_FRIENDS))
    conn.respond(3, b"")
    assert conn.data_to_send() == [h("0d03000010")]


def test_duplicate_call_number_is_refused():
    conn, port_id = connected()
    conn.receive_frame(request(3, port_id, GET_FRIENDS))
    assert conn.receive_frame(request(3, port_id, GET_FRIENDS)) == []
    assert remote_error(conn) == (3, 0, "message number 3 is already in use")
    open_stream(conn, 5)
    assert conn.receive_frame(request(5, port_id, SUBSCRIBE)) == []
    assert remote_error(conn)[0] == 5
    assert conn.stream_can_send(5)  # the original stream is untouched


# --- streams ----------------------------------------------------------------------------------


def test_full_stream_ack_flow():
    conn, port_id = connected()
    n = open_stream(conn, 5, port_id, acked=False)
    assert not conn.stream_can_send(n)
    assert conn.receive_frame(ack(n, 0)) == [StreamReady(n)]
    assert conn.stream_can_send(n)

    assert conn.stream_send(n, b"u" * 0x11) is True
    assert not conn.stream_can_send(n)
    [item1] = conn.data_to_send()
    assert item1 == h("0d05000018 1501000000 2501000000 3211") + b"u" * 0x11
    with pytest.raises(StreamNotReadyError):
        conn.stream_send(n, b"too early")

    assert conn.receive_frame(ack(n, 1)) == [StreamReady(n)]
    conn.stream_send(n, b"v" * 0x13)
    [item2] = conn.data_to_send()
    assert item2 == h("0d05000018 1501000000 2502000000 3213") + b"v" * 0x13
    assert conn.receive_frame(ack(n, 2)) == [StreamReady(n)]

    assert conn.stream_close(n) is True
    assert conn.data_to_send() == [h("0d05000018 1501000000 2502000000 3801")]
    assert conn.stream_ids() == []
    assert conn.stream_close(n) is False


def test_stream_item_with_empty_payload_and_close_without_items():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"")
    assert conn.data_to_send() == [h("0d05000018 1501000000 2501000000")]
    conn.receive_frame(ack(n, 1))
    m = open_stream(conn, 6)
    conn.stream_close(m)  # closed straight after the offer: seq 0 is omitted
    assert conn.data_to_send() == [h("0d06000018 1501000000 3801")]


def test_stream_large_payload_uses_multibyte_length():
    conn, _ = connected()
    n = open_stream(conn)
    payload = bytes(range(256)) * 40
    conn.stream_send(n, payload)
    [frame] = conn.data_to_send()
    expected = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_MESSAGE, n), port_id=1, sequence_id=1, payload=payload
    ).SerializeToString()
    assert frame == expected


def test_client_cancel_with_closed_stream_message():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"item")
    conn.data_to_send()
    assert conn.receive_frame(ack(n, 1)) == [StreamReady(n)]
    assert conn.receive_frame(close(n, 1)) == [StreamCancelled(n)]
    assert conn.stream_ids() == []
    # Whatever the application was about to do with the stream is now a harmless no-op.
    assert conn.stream_can_send(n) is False
    assert conn.stream_send(n, b"late") is False
    assert conn.stream_close(n) is False
    assert conn.stream_fail(n, "late") is False
    assert conn.fail(n, "late") is False
    assert conn.data_to_send() == []


def test_client_cancel_before_the_offer_is_acked():
    conn, _ = connected()
    n = open_stream(conn, acked=False)
    assert conn.receive_frame(close(n, 0)) == [StreamCancelled(n)]


@pytest.mark.parametrize("seq", [0, 1, 7, 1000])
def test_any_close_cancels_whatever_its_seq(seq):
    # The TS server (@dcl/rpc src/server.ts) honours a client close only while it waits for
    # that exact ack, dropping closes sent at other moments; we take every close as a cancel.
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"item")  # waiting for ack 1
    assert conn.receive_frame(close(n, seq)) == [StreamCancelled(n)]


def test_close_flag_on_a_stream_ack_also_cancels():
    conn, _ = connected()
    n = open_stream(conn)
    assert conn.receive_frame(close(n, 0, mtype=T.STREAM_ACK)) == [StreamCancelled(n)]


def test_stream_fail_sends_remote_error_with_stream_number():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"x")
    conn.data_to_send()
    assert conn.stream_fail(n, "gone", 0) is True
    assert remote_error(conn) == (n, 0, "gone")
    assert conn.stream_ids() == []


def test_fail_on_a_stream_number_fails_the_stream():
    conn, _ = connected()
    n = open_stream(conn)
    assert conn.fail(n, "nope") is True
    assert remote_error(conn) == (n, 0, "nope")


def test_stream_send_on_unknown_stream_returns_false():
    conn, _ = connected()
    assert conn.stream_send(999, b"x") is False
    assert conn.stream_can_send(999) is False


def test_concurrent_streams_are_independent():
    conn, _ = connected()
    a = open_stream(conn, 5)
    b = open_stream(conn, 6)
    conn.stream_send(a, b"a1")
    assert conn.stream_can_send(b)
    conn.stream_send(b, b"b1")
    assert conn.receive_frame(ack(b, 1)) == [StreamReady(b)]
    assert not conn.stream_can_send(a)
    assert conn.receive_frame(close(a, 1)) == [StreamCancelled(a)]
    assert conn.stream_ids() == [b]


# --- client quirks ----------------------------------------------------------------------------


def test_quirk_a_unity_ack_before_the_offer_was_sent():
    # Unity may send ACK 0 before the offer reaches it (even before our writer flushed it).
    # The core registered the stream when it read the REQUEST, so the ack always matches.
    conn, port_id = connected()
    assert conn.receive_frame(request(5, port_id, SUBSCRIBE))[0].stream_id == 5
    assert conn.receive_frame(ack(5, 0)) == [StreamReady(5)]
    [offer] = conn.data_to_send()  # flushed only now
    assert offer == h("0d05000018 1501000000")
    assert conn.stream_send(5, b"first")


def test_quirk_a_ack_for_a_stream_not_yet_known_is_ignored():
    conn, port_id = connected()
    assert conn.receive_frame(ack(5, 0)) == []
    assert conn.stray_frames == 1
    assert conn.data_to_send() == []
    # The stream still works once its REQUEST arrives.
    open_stream(conn, 5, port_id)


def test_quirk_b_godot_eager_acks_with_a_local_counter():
    conn, _ = connected()
    n = open_stream(conn, acked=False)
    godot_counter = 0
    assert conn.receive_frame(ack(n, godot_counter)) == [StreamReady(n)]  # on the offer
    for k in range(1, 6):
        conn.stream_send(n, b"item %d" % k)
        godot_counter += 1
        assert conn.receive_frame(ack(n, godot_counter)) == [StreamReady(n)]
    assert conn.stray_frames == 0


def test_quirk_b_acks_ahead_grant_credit_once():
    conn, _ = connected()
    n = open_stream(conn)  # ready after ack 0
    # A counter one ahead: an ack for 1 before item 1 was sent changes nothing.
    assert conn.receive_frame(ack(n, 1)) == []
    conn.stream_send(n, b"one")
    with pytest.raises(StreamNotReadyError):
        conn.stream_send(n, b"two")
    # ack >= last sent grants credit.
    assert conn.receive_frame(ack(n, 2)) == [StreamReady(n)]
    conn.stream_send(n, b"two")


def test_quirk_b_stale_and_duplicate_acks_are_ignored():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"1")
    assert conn.receive_frame(ack(n, 1)) == [StreamReady(n)]
    conn.stream_send(n, b"2")
    assert conn.receive_frame(ack(n, 1)) == []  # older than the last sent (2)
    assert conn.receive_frame(ack(n, 0)) == []
    assert not conn.stream_can_send(n)
    assert conn.receive_frame(ack(n, 2)) == [StreamReady(n)]
    assert conn.receive_frame(ack(n, 2)) == []  # duplicate
    assert conn.stray_frames == 3
    conn.stream_send(n, b"3")


def test_quirk_c_streams_live_until_the_port_is_destroyed():
    conn, port_id = connected()
    a = open_stream(conn, 5)
    b = open_stream(conn, 6)
    conn.receive_frame(request(7, port_id, GET_FRIENDS))
    assert conn.receive_frame(destroy_port(0, port_id)) == [PortClosed(port_id, (a, b))]
    assert conn.data_to_send() == []  # no reply to DESTROY_PORT
    assert conn.stream_ids() == [] and conn.port_ids() == []
    assert conn.stream_send(a, b"x") is False
    assert conn.respond(7, b"late") is False  # the pending call went with its port
    assert conn.receive_frame(ack(a, 0)) == []
    assert conn.receive_frame(request(8, port_id, GET_FRIENDS)) == []
    assert remote_error(conn) == (8, 2, "invalid portId")


def test_quirk_c_streams_live_until_the_connection_closes():
    conn, port_id = connected()
    a = open_stream(conn, 5)
    b = open_stream(conn, 6, acked=False)
    conn.receive_frame(request(7, port_id, GET_FRIENDS))
    assert sorted(conn.close()) == [a, b]
    assert conn.closed
    assert conn.close() == []
    assert conn.stream_send(a, b"x") is False
    assert conn.stream_close(b) is False
    assert conn.respond(7, b"x") is False
    assert conn.receive_frame(ack(a, 0)) == []
    assert conn.receive_frame(b"garbage after close") == []
    assert conn.data_to_send() == []


def test_quirk_d_stray_frames_are_counted_and_ignored():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"x")
    conn.receive_frame(ack(n, 1))
    conn.stream_close(n)
    conn.data_to_send()
    # C# answers our close with a close of its own; acks for finished/unknown streams too.
    assert conn.receive_frame(close(n, 1)) == []
    assert conn.receive_frame(ack(n, 1)) == []
    assert conn.receive_frame(ack(4242, 3)) == []
    assert conn.receive_frame(close(4242, 0)) == []
    assert conn.stray_frames == 4
    assert conn.data_to_send() == []


def test_client_stream_data_is_stray():
    conn, _ = connected()
    n = open_stream(conn)
    data = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_MESSAGE, n), port_id=1, sequence_id=1, payload=b"d"
    ).SerializeToString()
    assert conn.receive_frame(data) == []
    assert conn.stray_frames == 1
    assert conn.stream_can_send(n)


def test_stream_message_with_ack_flag_counts_as_ack():
    # The TS server resolves its ack waiter on STREAM_MESSAGE too and looks at the flag.
    conn, _ = connected()
    n = open_stream(conn, acked=False)
    frame = wire_pb2.StreamMessage(
        message_identifier=pack_id(T.STREAM_MESSAGE, n), port_id=1, ack=True
    ).SerializeToString()
    assert conn.receive_frame(frame) == [StreamReady(n)]


def test_ack_in_non_canonical_layout_takes_the_slow_path():
    conn, _ = connected()
    n = open_stream(conn)
    conn.stream_send(n, b"x")
    # ack flag before sequence_id: legal protobuf, not the 17-byte layout clients use.
    frame = h("0d05000020 1501000000 4001 2501000000")
    assert conn.receive_frame(frame) == [StreamReady(n)]


# --- ports ------------------------------------------------------------------------------------


def test_destroy_port_unknown_is_ignored_and_csharp_number_accepted():
    conn, port_id = connected()
    assert conn.receive_frame(destroy_port(0, 77)) == []
    assert conn.stray_frames == 1
    assert conn.receive_frame(destroy_port(9, port_id)) == [PortClosed(port_id, ())]
    assert conn.data_to_send() == []


def test_two_ports_on_one_connection():
    conn = RpcServerConnection(MODULES)
    conn.receive_frame(create_port(1, "a"))
    conn.receive_frame(create_port(2, "b"))
    conn.receive_frame(request_module(3, 1, "SocialService"))
    conn.receive_frame(request_module(4, 2, "Presence"))
    conn.data_to_send()
    [ev_a] = conn.receive_frame(request(5, 1, SUBSCRIBE))
    [ev_b] = conn.receive_frame(request(6, 2, 2))
    assert (ev_a.port_id, ev_a.procedure, ev_b.port_id, ev_b.procedure) == (
        1,
        "SubscribeToFriendConnectivityUpdates",
        2,
        "Watch",
    )
    offers = conn.data_to_send()
    assert offers == [h("0d05000018 1501000000"), h("0d06000018 1502000000")]
    # Procedure ids are per port: id 8 does not exist on port 2.
    conn.receive_frame(request(7, 2, SUBSCRIBE))
    assert remote_error(conn)[1] == 4
    assert conn.receive_frame(destroy_port(0, 1)) == [PortClosed(1, (5,))]
    assert conn.stream_ids() == [6]


def test_shared_port_id_counter_across_connections():
    counter = itertools.count(1)
    first = RpcServerConnection(MODULES, counter)
    second = RpcServerConnection(MODULES, counter)
    first.receive_frame(create_port(1))
    second.receive_frame(create_port(1))
    first.receive_frame(create_port(2))
    assert [m.port_id for _, _, m in parsed(first.data_to_send())] == [1, 3]
    assert [m.port_id for _, _, m in parsed(second.data_to_send())] == [2]
    # Port 1 belongs to the first connection only.
    second.receive_frame(request_module(3, 1))
    assert remote_error(second) == (3, 2, "invalid portId")


def test_port_ids_from_a_callable():
    ids = iter([100, 200])
    conn = RpcServerConnection(MODULES, lambda: next(ids))
    conn.receive_frame(create_port(1))
    conn.receive_frame(create_port(2))
    assert [m.port_id for _, _, m in parsed(conn.data_to_send())] == [100, 200]


def test_port_and_stream_limits():
    conn = RpcServerConnection(MODULES, max_ports=1, max_streams=2)
    conn.receive_frame(create_port(1))
    conn.receive_frame(create_port(2))
    frames = parsed(conn.data_to_send())
    assert [t for t, _, _ in frames] == [T.CREATE_PORT_RESPONSE, T.REMOTE_ERROR_RESPONSE]
    conn.receive_frame(request_module(3, 1))
    conn.data_to_send()
    open_stream(conn, 5)
    open_stream(conn, 6)
    assert conn.receive_frame(request(7, 1, SUBSCRIBE)) == []
    assert remote_error(conn)[2] == "too many open streams on this connection"
    conn.receive_frame(close(5, 0))
    open_stream(conn, 8)


def test_defaults_bound_what_one_client_makes_the_server_hold():
    # Real clients open one port named in about 15 characters and a handful of streams.
    conn = RpcServerConnection(MODULES)
    for n in range(1, 10):
        conn.receive_frame(create_port(n))
    frames = parsed(conn.data_to_send())
    assert [t for t, _, _ in frames] == [T.CREATE_PORT_RESPONSE] * 8 + [T.REMOTE_ERROR_RESPONSE]
    conn = RpcServerConnection(MODULES)
    conn.receive_frame(create_port(1, "x" * 129))
    assert remote_error(conn)[2] == "port name too long"
    conn.receive_frame(create_port(2, "é" * 64))  # 128 bytes of UTF-8: accepted
    assert parsed(conn.data_to_send())[0][0] == T.CREATE_PORT_RESPONSE


# --- protocol violations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x0d\x01\x00\x00\x00",  # type 0 (EMPTY)
        b"\x0d" + struct.pack("<I", (12 << 27) | 1),
        b"\x0d" + struct.pack("<I", (15 << 27) | 1),
        b"\x0d\x01",  # truncated header
        h("0d01000008 1501"),  # truncated fixed32 after a valid header
        h("0d01000028 2202 80ff"),  # valid CREATE_PORT header, body not UTF-8
        h("0d01000008 320a 0102"),  # valid REQUEST header, payload shorter than its length
        h("0d00000058"),  # SERVER_READY from a client
        h("0d03000010 3201 00"),  # RESPONSE from a client
        h("0d01000030 1501000000"),  # CREATE_PORT_RESPONSE from a client
        h("ffffffff"),
    ],
)
def test_bad_frames_raise_protocol_error_and_change_nothing(frame):
    conn, _ = connected()
    n = open_stream(conn)
    with pytest.raises(ProtocolError) as info:
        conn.receive_frame(frame)
    assert info.value.close_code == 1002
    assert conn.data_to_send() == []
    assert conn.stream_ids() == [n] and conn.stream_can_send(n)
    assert conn.close() == [n]


def test_text_frame_is_a_violation():
    conn = RpcServerConnection(MODULES)
    with pytest.raises(ProtocolError):
        conn.receive_frame("hello")  # type: ignore[arg-type]


def test_random_bytes_never_raise_anything_but_protocol_error():
    rng = random.Random(2024)
    conn, port_id = connected()
    open_stream(conn, 5, port_id)
    valid = [
        create_port(1),
        request_module(2, port_id),
        request(3, port_id, GET_FRIENDS, b"abc"),
        request(4, port_id, SUBSCRIBE),
        ack(5, 0),
        ack(5, 1),
        close(5, 1),
        destroy_port(0, port_id),
    ]
    accepted = 0
    for i in range(4000):
        if i % 2:
            data = rng.randbytes(rng.randrange(0, 48))
        else:
            # Mutated valid frames reach much deeper into the parser than pure noise.
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                op = rng.randrange(3)
                if op == 0 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op == 1 and data:
                    del data[rng.randrange(len(data)) :]
                else:
                    data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            data = bytes(data)
        try:
            events = conn.receive_frame(data)
        except ProtocolError:
            continue
        accepted += 1
        assert isinstance(events, list)
        for frame in conn.data_to_send():
            parse_frame(frame)  # everything the server says must itself be well-formed
    assert accepted > 100


# --- a trace of the real TS server and client (@dcl/rpc 1.1.2), server side byte for byte ---------


def test_server_reproduces_its_side_of_the_trace():
    conn = RpcServerConnection(MODULES)
    conn.server_ready()
    assert conn.data_to_send() == [h("0d00000058")]

    conn.receive_frame(h("0d01000028 220e") + b"social_service")
    assert conn.data_to_send() == [h("0d01000030 1501000000")]

    conn.receive_frame(h("0d02000038 1501000000 220d") + b"SocialService")
    [module_response] = conn.data_to_send()
    assert module_response.startswith(
        h("0d02000040 1501000000 2a11 0d01000000 120a")
        + b"GetFriends"
        + h("2a17 0d02000000 1210")
        + b"GetMutualFriends"
    )

    events = conn.receive_frame(h("0d03000008 1501000000 2501000000 3204 0a02080a"))
    assert events == [UnaryRequest(3, 1, "GetFriends", h("0a02080a"), "SocialService")]
    friends = h("0a0a0a05") + b"0xabc" + h("1201") + b"n" + h("120408011001")
    conn.respond(3, friends)
    [response] = conn.data_to_send()
    assert response == h("0d03000010 3212") + friends
    assert response.startswith(h("0d03000010 3212 0a0a0a053078616263"))

    conn.receive_frame(h("0d04000008 1501000000 2507000000 3207") + bytes(7))
    conn.fail(4, "boom")
    assert conn.data_to_send() == [h("0d04000048 1a04") + b"boom"]

    [stream_request] = conn.receive_frame(h("0d05000008 1501000000 2508000000"))
    assert stream_request.stream_id == 5 and stream_request.payload == b""
    assert conn.data_to_send() == [h("0d05000018 1501000000")]
    assert conn.receive_frame(h("0d05000020 1501000000 4001")) == [StreamReady(5)]
    update1 = bytes(range(0x11))
    conn.stream_send(5, update1)
    assert conn.data_to_send() == [h("0d05000018 1501000000 2501000000 3211") + update1]
    assert conn.receive_frame(h("0d05000020 1501000000 2501000000 4001")) == [StreamReady(5)]
    update2 = bytes(range(0x13))
    conn.stream_send(5, update2)
    assert conn.data_to_send() == [h("0d05000018 1501000000 2502000000 3213") + update2]
    assert conn.receive_frame(h("0d05000020 1501000000 2502000000 4001")) == [StreamReady(5)]
    conn.stream_close(5)
    assert conn.data_to_send() == [h("0d05000018 1501000000 2502000000 3801")]

    assert conn.receive_frame(h("0d00000050 1501000000")) == [PortClosed(1, ())]
    assert conn.data_to_send() == []


def test_trace_client_cancel_variant_on_a_second_connection():
    counter = itertools.count(1)
    RpcServerConnection(MODULES, counter).receive_frame(create_port(1))  # takes port 1
    conn = RpcServerConnection(MODULES, counter)
    conn.receive_frame(create_port(8))
    conn.receive_frame(request_module(9, 2))
    conn.data_to_send()
    conn.receive_frame(request(10, 2, SUBSCRIBE))
    assert conn.data_to_send() == [h("0d0a000018 1502000000")]
    conn.receive_frame(ack(10, 0, port_id=2))
    conn.stream_send(10, b"update")
    conn.data_to_send()
    assert conn.receive_frame(h("0d0a000018 1502000000 2501000000 3801")) == [StreamCancelled(10)]
    assert conn.data_to_send() == []


# --- nothing follows an offer before its ack (@dcl/rpc 1.1.2 interop) --------------------------
# The TS client starts listening for a stream's frames only after it has processed the offer; a
# close or RemoteError arriving in the same event-loop turn was dropped and its iterator hung
# (seen with the real npm client: a second subscription right behind the first, and a stream
# request with an invalid payload). The TS server never sends anything there; neither do we.


@pytest.mark.parametrize("end", ["close", "fail"])
def test_ending_a_stream_before_its_offer_is_acked_waits_for_the_ack(end):
    conn, _ = connected()
    n = open_stream(conn, acked=False)
    if end == "close":
        assert conn.stream_close(n) is True
        expected = [h("0d05000018 1501000000 3801")]
    else:
        assert conn.stream_fail(n, "bad payload") is True
        expected = [h("0d05000048 1a0b") + b"bad payload"]
    assert conn.data_to_send() == []  # held back
    assert conn.stream_ids() == []  # already ended for the application
    assert conn.stream_close(n) is False
    assert conn.stream_fail(n, "again") is False
    assert conn.stream_send(n, b"late") is False
    assert conn.receive_frame(ack(n, 0)) == []  # no StreamReady for an ended stream
    assert conn.data_to_send() == expected
    assert conn.receive_frame(ack(n, 0)) == []
    assert conn.data_to_send() == []


def test_a_stream_ended_before_its_ack_can_still_be_cancelled_silently():
    conn, _ = connected()
    n = open_stream(conn, acked=False)
    conn.stream_close(n)
    assert conn.receive_frame(close(n, 0)) == []  # no StreamCancelled: the app ended it
    assert conn.receive_frame(ack(n, 0)) == []
    assert conn.data_to_send() == []


def test_an_early_ack_lets_the_end_go_at_once():
    # Unity may ack seq 0 before the offer is even sent; then nothing is held.
    conn, _ = connected()
    n = open_stream(conn)  # acked
    conn.stream_close(n)
    assert conn.data_to_send() == [h("0d05000018 1501000000 3801")]
