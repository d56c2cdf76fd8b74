"""RpcClientConnection on its own, then wired to RpcServerConnection in memory."""

import itertools

import pytest

from presenced.rpc import (
    ModuleLoaded,
    ModuleSpec,
    PortClosed,
    PortCreated,
    ProcedureSpec,
    ProtocolError,
    RemoteErrorReceived,
    ResponseReceived,
    RpcClientConnection,
    RpcServerConnection,
    ServerReady,
    StreamCancelled,
    StreamEnded,
    StreamItem,
    StreamOffered,
    StreamReady,
    StreamRequest,
    UnaryRequest,
    module_registry,
)
from presenced.rpc.frames import (
    MAX_NUMBER,
    MessageType,
    encode_create_port_response,
    encode_remote_error,
    encode_request_module_response,
    encode_response,
    encode_stream_message,
    parse_frame,
)

MODULES = module_registry(
    ModuleSpec(
        "SocialService",
        [
            ProcedureSpec("GetFriends"),
            ProcedureSpec("SubscribeToFriendConnectivityUpdates", server_streaming=True),
        ],
    )
)


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


# --- client alone -----------------------------------------------------------------------------


def test_client_frames_match_the_trace():
    client = RpcClientConnection()
    assert client.create_port("social_service") == 1
    assert client.request_module(1, "SocialService") == 2
    assert client.call(1, 1, h("0a02080a")) == 3
    assert client.call(1, 7, b"x") == 4
    assert client.call(1, 8) == 5
    client.ack(5, 0)
    client.ack(5, 1)
    client.destroy_port(1)
    assert client.data_to_send() == [
        h("0d01000028 220e") + b"social_service",
        h("0d02000038 1501000000 220d") + b"SocialService",
        h("0d03000008 1501000000 2501000000 3204 0a02080a"),
        h("0d04000008 1501000000 2507000000 3201") + b"x",
        h("0d05000008 1501000000 2508000000"),
        h("0d05000020 1501000000 4001"),
        h("0d05000020 1501000000 2501000000 4001"),
        h("0d00000050 1501000000"),
    ]
    assert client.data_to_send() == []


def test_client_cancel_matches_the_trace_variant():
    client = RpcClientConnection(first_number=10)
    assert client.call(2, 8) == 10
    client.data_to_send()
    client.cancel_stream(10, 1)
    assert client.data_to_send() == [h("0d0a000018 1502000000 2501000000 3801")]


def test_numbers_wrap_after_27_bits_and_skip_zero():
    client = RpcClientConnection(first_number=MAX_NUMBER - 1)
    assert [client.create_port("p") for _ in range(3)] == [MAX_NUMBER - 1, MAX_NUMBER, 1]
    with pytest.raises(ValueError):
        RpcClientConnection(first_number=0)


def test_destroy_port_with_a_fresh_number_like_csharp():
    client = RpcClientConnection()
    client.create_port("p")
    assert client.destroy_port(1, fresh_number=True) == 2
    [(mtype, number, msg)] = [parse_frame(f) for f in client.data_to_send()[1:]]
    assert (mtype, number, msg.port_id) == (MessageType.DESTROY_PORT, 2, 1)


def test_client_events_for_every_server_frame():
    client = RpcClientConnection()
    client.call(1, 1)  # 1
    client.call(1, 2)  # 2
    client.call(1, 2)  # 3
    frames = [
        (h("0d00000058"), ServerReady()),
        (encode_create_port_response(7, 3), PortCreated(7, 3)),
        (
            encode_request_module_response(8, 3, [(1, "A"), (2, "B")]),
            ModuleLoaded(8, 3, {"A": 1, "B": 2}),
        ),
        (encode_response(1, b"ok"), ResponseReceived(1, b"ok")),
        (encode_remote_error(9, "boom", 4), RemoteErrorReceived(9, 4, "boom")),
        (encode_stream_message(2, 1, 0), StreamOffered(2, 1)),
        (encode_stream_message(2, 1, 1, b"a"), StreamItem(2, 1, b"a")),
        (encode_stream_message(2, 1, 2, b""), StreamItem(2, 2, b"")),
        (encode_stream_message(2, 1, 2, closed=True), StreamEnded(2, 2)),
        (encode_stream_message(3, 1, 0), StreamOffered(3, 1)),
        (encode_remote_error(3, "stream failed"), RemoteErrorReceived(3, 0, "stream failed")),
    ]
    for frame, event in frames:
        assert client.receive_frame(frame) == [event]


def test_client_rejects_frames_only_a_client_sends():
    client = RpcClientConnection()
    for frame in [
        h("0d01000028 2201") + b"p",  # CREATE_PORT
        h("0d05000020 1501000000 4001"),  # STREAM_ACK
        h("0d01000008"),  # REQUEST
        b"\x00\x01",
    ]:
        with pytest.raises(ProtocolError):
            client.receive_frame(frame)


# --- client <-> server in memory --------------------------------------------------------------


class Wire:
    """Moves frames between the two cores until both are quiet; records every event."""

    def __init__(self, port_ids=None):
        self.client = RpcClientConnection()
        self.server = RpcServerConnection(MODULES, port_ids)
        self.client_events = []
        self.server_events = []
        self.frames = 0

    def pump(self):
        moved = True
        while moved:
            moved = False
            for frame in self.client.data_to_send():
                self.server_events += self.server.receive_frame(frame)
                self.frames += 1
                moved = True
            for frame in self.server.data_to_send():
                self.client_events += self.client.receive_frame(frame)
                self.frames += 1
                moved = True

    def take(self):
        client_events, server_events = self.client_events, self.server_events
        self.client_events, self.server_events = [], []
        return client_events, server_events

    def setup(self):
        self.server.server_ready()
        self.client.create_port("social_service")
        self.pump()
        [ready, created] = self.take()[0]
        assert ready == ServerReady()
        self.client.request_module(created.port_id, "SocialService")
        self.pump()
        [loaded] = self.take()[0]
        return created.port_id, dict(loaded.procedures)


def test_unary_call_end_to_end():
    wire = Wire()
    port_id, procedures = wire.setup()
    number = wire.client.call(port_id, procedures["GetFriends"], b"page 1")
    wire.pump()
    client_events, server_events = wire.take()
    assert client_events == []
    assert server_events == [
        UnaryRequest(number, port_id, "GetFriends", b"page 1", "SocialService")
    ]
    wire.server.respond(number, b"friends")
    wire.pump()
    assert wire.take() == ([ResponseReceived(number, b"friends")], [])


def test_unary_failure_end_to_end():
    wire = Wire()
    port_id, procedures = wire.setup()
    number = wire.client.call(port_id, procedures["GetFriends"])
    wire.pump()
    wire.take()
    wire.server.fail(number, "not today")
    wire.pump()
    assert wire.take() == ([RemoteErrorReceived(number, 0, "not today")], [])


def test_stream_to_completion_with_lazy_acks():
    """TS timing: the consumer acks each frame when it wants the next one."""
    wire = Wire()
    port_id, procedures = wire.setup()
    updates = [b"alice online", b"", b"bob away", b"x" * 5000]
    number = wire.client.call(port_id, procedures["SubscribeToFriendConnectivityUpdates"])
    wire.pump()
    client_events, server_events = wire.take()
    assert server_events == [
        StreamRequest(number, port_id, "SubscribeToFriendConnectivityUpdates", b"", "SocialService")
    ]
    assert client_events == [StreamOffered(number, port_id)]

    received = []
    pending = list(updates)
    wire.client.ack(number, 0)
    while True:
        wire.pump()
        client_events, server_events = wire.take()
        for event in server_events:
            assert event == StreamReady(number)
            if pending:
                assert wire.server.stream_send(number, pending.pop(0))
            else:
                assert wire.server.stream_close(number)
        ended = False
        for event in client_events:
            if isinstance(event, StreamItem):
                received.append(event.payload)
                wire.client.ack(number, event.seq)
            else:
                assert event == StreamEnded(number, len(updates))
                ended = True
        if ended:
            break
    assert received == updates
    assert wire.server.stream_ids() == []
    assert wire.server.stray_frames == 0


def test_stream_cancelled_by_the_client_end_to_end():
    wire = Wire()
    port_id, procedures = wire.setup()
    number = wire.client.call(port_id, procedures["SubscribeToFriendConnectivityUpdates"])
    wire.pump()
    wire.take()
    wire.client.ack(number, 0)
    wire.pump()
    wire.take()
    wire.server.stream_send(number, b"one")
    wire.pump()
    assert wire.take()[0] == [StreamItem(number, 1, b"one")]
    wire.client.cancel_stream(number, 1)
    wire.pump()
    assert wire.take() == ([], [StreamCancelled(number)])
    assert wire.server.stream_send(number, b"too late") is False


def test_unity_and_godot_timings_end_to_end():
    wire = Wire()
    port_id, procedures = wire.setup()
    subscribe = procedures["SubscribeToFriendConnectivityUpdates"]
    # Unity: the REQUEST and the ACK for seq 0 leave together, before any offer is seen.
    unity = wire.client.call(port_id, subscribe)
    wire.client.ack(unity, 0)
    # Godot: ack every item as it arrives, counting locally.
    godot = wire.client.call(port_id, subscribe)
    wire.pump()
    client_events, server_events = wire.take()
    assert StreamReady(unity) in server_events
    assert StreamOffered(godot, port_id) in client_events
    wire.client.ack(godot, 0)
    wire.pump()
    assert wire.take()[1] == [StreamReady(godot)]
    counter = 0
    for k in range(3):
        wire.server.stream_send(godot, b"%d" % k)
        wire.pump()
        for event in wire.take()[0]:
            counter += 1
            assert event == StreamItem(godot, counter, b"%d" % k)
            wire.client.ack(godot, counter)
        wire.pump()
        assert wire.take()[1] == [StreamReady(godot)]
    # Godot never cancels: the port's end takes both streams with it.
    wire.client.destroy_port(port_id)
    wire.pump()
    assert wire.take() == ([], [PortClosed(port_id, (unity, godot))])


def test_two_clients_share_the_port_counter():
    counter = itertools.count(1)
    first, second = Wire(counter), Wire(counter)
    assert first.setup()[0] == 1
    assert second.setup()[0] == 2
