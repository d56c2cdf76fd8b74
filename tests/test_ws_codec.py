"""presenced.ws.codec: both roles against each other and against wsproto, without I/O."""

from __future__ import annotations

import random

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from presenced.closes import Close
from presenced.ws.codec import (
    CloseReceived,
    Codec,
    ConnectionLost,
    ConnectionState,
    Failed,
    Pong,
)

LIMIT = 1000


def pair() -> tuple[Codec, Codec]:
    return Codec(client=False, max_message_bytes=LIMIT), Codec(client=True,
                                                                max_message_bytes=LIMIT)


def dribble(codec: Codec, data: bytes, rng: random.Random | None = None) -> list:
    """Feed `data` in random small pieces; all events."""
    rng = rng or random.Random(len(data))
    events: list = []
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, 7, 50, 4000])
        events += codec.receive(data[pos : pos + size])
        pos += size
    return events


@pytest.mark.parametrize("sender_is_client", [True, False])
def test_messages_of_every_kind_cross_between_the_roles_in_any_chunking(sender_is_client):
    server, client = pair()
    sender, receiver = (client, server) if sender_is_client else (server, client)
    payloads: list[bytes | str] = [b"", b"x", bytes(125), bytes(126), bytes(LIMIT), "",
                                   "héllo wörld", "z" * 500]
    data = b"".join(sender.binary(p) if isinstance(p, bytes) else sender.text(p)
                    for p in payloads)
    data += sender.binaries([b"a", b"b" * 300])
    for seed in range(20):
        fresh = Codec(client=receiver.client, max_message_bytes=LIMIT)
        assert dribble(fresh, data, random.Random(seed)) == [*payloads, b"a", b"b" * 300]


def test_client_frames_are_masked_and_server_frames_are_not():
    server, client = pair()
    assert client.binary(b"abc")[1] & 0x80
    assert not server.binary(b"abc")[1] & 0x80
    # And each side's wsproto agrees with that.
    ws_server = Connection(ConnectionType.SERVER)
    ws_server.receive_data(client.binary(b"abc") + client.text("t"))
    assert [e.data for e in ws_server.events()] == [b"abc", "t"]
    ws_client = Connection(ConnectionType.CLIENT)
    ws_client.receive_data(server.binary(b"abc") + server.ping(b"p"))
    events = list(ws_client.events())
    assert events[0].data == b"abc" and isinstance(events[1], Ping)


def test_fragmented_messages_with_a_ping_inside_are_joined_and_the_ping_answered():
    peer = Connection(ConnectionType.CLIENT)
    data = (peer.send(BytesMessage(data=b"one-", message_finished=False))
            + peer.send(Ping(payload=b"mid"))
            + peer.send(BytesMessage(data=b"two", message_finished=True))
            + peer.send(TextMessage(data="t1-", message_finished=False))
            + peer.send(TextMessage(data="t2", message_finished=True))
            + peer.send(BytesMessage(data=b"plain")))
    server = Codec(client=False, max_message_bytes=LIMIT)
    assert dribble(server, data) == [b"one-two", "t1-t2", b"plain"]
    peer.receive_data(server.take_outgoing())
    assert [type(e).__name__ for e in peer.events()] == ["Pong"]


def test_a_ping_is_answered_and_a_pong_reported():
    server, client = pair()
    assert client.receive(server.ping(b"are you there")) == []
    pong = client.take_outgoing()
    assert [(type(e), e.payload) for e in server.receive(pong)] == [(Pong, b"are you there")]
    with pytest.raises(ValueError):
        server.ping(bytes(126))


@pytest.mark.parametrize("closer_is_client", [True, False])
def test_a_close_in_either_direction_completes_the_handshake(closer_is_client):
    server, client = pair()
    closer, other = (client, server) if closer_is_client else (server, client)
    frame = closer.close(4000, "bye")
    assert closer.state is ConnectionState.LOCAL_CLOSING
    assert closer.binary(b"too late") == b"" and closer.close() == b""
    events = other.receive(frame)
    assert [(type(e), e.code, e.reason) for e in events] == [(CloseReceived, 4000, "bye")]
    assert other.state is ConnectionState.CLOSED
    answer = other.take_outgoing()
    assert answer
    events = closer.receive(answer)
    assert [(type(e), e.code) for e in events] == [(CloseReceived, 4000)]
    assert closer.state is ConnectionState.CLOSED
    assert closer.receive(b"anything") == [] and closer.receive_eof() == []


def test_messages_arriving_after_our_close_are_dropped_but_the_answer_is_read():
    server, client = pair()
    frame = client.binary(b"late")
    held = frame[:3]  # the splitter holds back a partial frame
    assert server.receive(held) == []
    server.close()
    events = server.receive(frame[3:] + client.binary(b"later") + client.close(1000))
    assert [type(e) for e in events] == [CloseReceived]


@pytest.mark.parametrize("how", ["one frame", "fragments", "text", "partial frame"])
def test_an_oversized_message_fails_the_connection_with_1009(how):
    peer = Connection(ConnectionType.CLIENT)
    if how == "one frame":
        data = peer.send(BytesMessage(data=bytes(LIMIT + 1)))
    elif how == "fragments":
        data = b"".join(peer.send(BytesMessage(data=bytes(300), message_finished=False))
                        for _ in range(4))
    elif how == "text":
        data = peer.send(TextMessage(data="é" * (LIMIT // 2 + 1)))
    else:
        # Only the header and a little of a huge frame: refused before it is all here.
        data = peer.send(BytesMessage(data=bytes(10_000_000)))[:5000]
    server = Codec(client=False, max_message_bytes=LIMIT)
    events = dribble(server, data)
    assert [type(e) for e in events] == [Failed]
    assert events[0].close is Close.MESSAGE_TOO_BIG and events[0].code == 1009
    assert server.failed and server.receive(b"more") == []
    peer.receive_data(server.take_outgoing())
    (close,) = list(peer.events())
    assert isinstance(close, CloseConnection) and close.code == 1009


@pytest.mark.parametrize("frame, why", [
    (b"\x83\x80abcd", "reserved opcode"),
    (b"\x82\x03abc", "unmasked frame from a client"),
    (b"\xc2\x80abcd", "RSV1 without an extension"),
    (b"\x80\x80abcd", "continuation without a start"),
    (b"\x81\x82abcd" + bytes(b ^ k for b, k in zip(b"\xff\xfe", b"ab", strict=True)), "bad UTF-8"),
    (b"\x89\xfe\x00\x80abcd" + bytes(128), "oversized ping"),
    (b"\x88\x81abcd" + b"\x00", "close with one byte"),
])
def test_protocol_errors_fail_the_connection_with_1002(frame, why):
    server = Codec(client=False, max_message_bytes=LIMIT)
    events = server.receive(frame + Codec(client=True, max_message_bytes=LIMIT).binary(b"x"))
    assert [type(e) for e in events] == [Failed], why
    assert events[0].code == 1002, why
    peer = Connection(ConnectionType.CLIENT)
    peer.receive_data(server.take_outgoing())
    (close,) = list(peer.events())
    assert close.code == 1002 and close.reason.startswith("protocol error"), why


def test_a_client_refuses_a_masked_frame_from_the_server():
    client = Codec(client=True, max_message_bytes=LIMIT)
    masked = Codec(client=True, max_message_bytes=LIMIT).binary(b"x")
    assert [e.code for e in client.receive(masked)] == [1002]


def test_truncated_input_is_held_until_complete_and_eof_is_a_lost_connection():
    server, client = pair()
    frame = client.binary(b"hello")
    assert server.receive(frame[:4]) == []
    assert server.receive(frame[4:]) == [b"hello"]
    assert server.receive(client.binary(b"cut")[:3]) == []
    assert [type(e) for e in server.receive_eof()] == [ConnectionLost]
    assert server.state is ConnectionState.CLOSED


def test_the_close_reason_is_cut_to_fit_a_close_frame():
    server, client = pair()
    events = client.receive(server.close(4001, "x" * 300))
    assert events[0].code == 4001 and len(events[0].reason.encode()) <= 123


def test_wsproto_is_only_created_when_a_frame_needs_it():
    server, client = pair()
    for _ in range(10):
        assert server.receive(client.binary(b"ping-free")) == [b"ping-free"]
        client.receive(server.binary(b"answer"))
    assert server._ws is None and client._ws is None
