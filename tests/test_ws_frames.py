"""presenced.ws.frames: the splitter plus wsproto read exactly what wsproto alone reads."""

from __future__ import annotations

import random

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import Opcode

from presenced.ws.frames import InboundFrames, binary_frame, masked_frame, unmask

LIMIT = 1000


def client_frames(events: list[Event]) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(e) for e in events)


def server_frames(events: list[Event]) -> bytes:
    server = Connection(ConnectionType.SERVER)
    return b"".join(server.send(e) for e in events)


# The role of the reading side: the server reads a client's masked frames,
# the client a server's unmasked ones.
READER = {"server": ConnectionType.SERVER, "client": ConnectionType.CLIENT}


def raw_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
              masked: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, (0x80 if masked else 0) | n))
    else:
        head = bytes((b0, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def wsproto_alone(stream: bytes, chunks: list[int], role: str = "server") -> list[tuple]:
    server = Connection(READER[role])
    out: list[tuple] = []
    pos = 0
    for size in chunks:
        server.receive_data(stream[pos : pos + size])
        pos += size
        out += summarize(server.events())
    return merge(out)


def split_then_wsproto(stream: bytes, chunks: list[int],
                       role: str = "server") -> tuple[list[tuple], int]:
    server = Connection(READER[role])
    frames = InboundFrames(LIMIT, masked=role == "server")
    frames.synced()
    out: list[tuple] = []
    fast = 0
    pos = 0
    for size in chunks:
        messages, through = frames.feed(stream[pos : pos + size])
        pos += size
        fast += len(messages)
        out += [("bytes", m) for m in messages]
        if through:
            server.receive_data(through)
            out += summarize(server.events())
    return merge(out), fast


def summarize(events) -> list[tuple]:
    out: list[tuple] = []
    for e in events:
        if isinstance(e, Message):
            kind = "bytes" if isinstance(e, BytesMessage) else "text"
            out.append((kind, e.data, e.message_finished))
        elif isinstance(e, CloseConnection):
            out.append(("close", e.code))
        elif isinstance(e, Ping | Pong):
            out.append((type(e).__name__, bytes(e.payload)))
        else:
            out.append((type(e).__name__,))
    return out


def merge(items: list[tuple]) -> list[tuple]:
    """Whole messages: wsproto may split one message's data across events."""
    out: list[tuple] = []
    partial: dict[str, list] = {}
    for item in items:
        if item[0] in ("bytes", "text") and len(item) == 3:
            kind, data, finished = item
            partial.setdefault(kind, []).append(data)
            if finished:
                joined = (b"" if kind == "bytes" else "").join(partial.pop(kind))
                out.append((kind, joined))
        else:
            out.append(item)
    return out


def random_chunks(total: int, rng: random.Random) -> list[int]:
    chunks = []
    left = total
    while left:
        size = min(left, rng.choice([1, 2, 3, 5, 7, 13, 40, 200, 5000]))
        chunks.append(size)
        left -= size
    return chunks


def mixed_stream(rng: random.Random, role: str = "server") -> bytes:
    events: list[Event] = []
    for _ in range(rng.randrange(5, 40)):
        kind = rng.random()
        if kind < 0.6:
            events.append(BytesMessage(data=rng.randbytes(rng.choice([0, 1, 17, 125, 126, 900]))))
        elif kind < 0.7:
            events.append(TextMessage(data="héllo" * rng.randrange(0, 30)))
        elif kind < 0.8:
            events.append(Ping(payload=rng.randbytes(rng.randrange(0, 10))))
        elif kind < 0.9:
            events.append(Pong(payload=b"p"))
        else:
            # A fragmented binary message with a ping in the middle.
            events.append(BytesMessage(data=b"frag-1", message_finished=False))
            events.append(Ping(payload=b"mid"))
            events.append(BytesMessage(data=b"frag-2", message_finished=True))
    events.append(CloseConnection(code=1000))
    return client_frames(events) if role == "server" else server_frames(events)


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize("seed", range(200))
def test_any_chunking_of_a_mixed_stream_reads_the_same_as_wsproto(seed, role):
    rng = random.Random(seed)
    stream = mixed_stream(rng, role)
    chunks = random_chunks(len(stream), rng)
    expected = wsproto_alone(stream, chunks, role)
    got, fast = split_then_wsproto(stream, chunks, role)
    assert got == expected


def test_a_client_reads_a_servers_binary_frames_itself_and_leaves_masked_ones():
    stream = server_frames([BytesMessage(data=bytes([i]) * i) for i in range(200)])
    got, fast = split_then_wsproto(stream, random_chunks(len(stream), random.Random(2)),
                                   "client")
    assert fast == 200
    assert got == [("bytes", bytes([i]) * i) for i in range(200)]
    # A masked frame from a server is wsproto's to refuse.
    frames = InboundFrames(LIMIT, masked=False)
    frames.synced()
    masked = raw_frame(0x2, b"abc")
    assert frames.feed(masked) == ([], masked)


def test_the_splitter_knows_when_wsproto_is_between_messages():
    frames = InboundFrames(LIMIT)
    frames.synced()
    assert frames.between_messages
    frames.feed(raw_frame(0x2, b"part", fin=False))
    assert not frames.between_messages
    frames.feed(raw_frame(0x9, b"ping in the middle"))
    assert not frames.between_messages
    frames.feed(raw_frame(0x0, b"end"))
    assert frames.between_messages
    big = raw_frame(0x2, bytes(LIMIT + 10))
    frames.feed(big[:50])
    assert not frames.between_messages
    frames.feed(big[50:])
    assert frames.between_messages


def test_plain_binary_messages_never_reach_wsproto():
    stream = client_frames([BytesMessage(data=bytes([i]) * i) for i in range(200)])
    got, fast = split_then_wsproto(stream, random_chunks(len(stream), random.Random(1)))
    assert fast == 200
    assert got == [("bytes", bytes([i]) * i) for i in range(200)]


@pytest.mark.parametrize(
    "frame, why",
    [
        (raw_frame(0x2, b"abc", masked=False), "unmasked"),
        (raw_frame(0x2, b"abc", rsv=0x40), "rsv1"),
        (raw_frame(0x2, bytes(LIMIT + 1)), "oversized"),
        (raw_frame(0x0, b"abc"), "continuation without a start"),
        (raw_frame(0x1, b"\xff\xfe"), "invalid utf-8 text"),
        (raw_frame(0x3, b"abc"), "reserved opcode"),
    ],
)
def test_unusual_frames_go_to_wsproto_and_so_does_what_follows(frame, why):
    after = raw_frame(0x2, b"after")
    frames = InboundFrames(LIMIT)
    frames.synced()
    messages, through = frames.feed(frame + after)
    assert messages == [], why
    assert through == frame + after


def test_a_large_frame_passes_through_in_pieces_and_reading_resumes_after_it():
    frames = InboundFrames(LIMIT)
    frames.synced()
    big = raw_frame(0x2, bytes(5000))
    small = raw_frame(0x2, b"small")
    assert frames.feed(big[:100]) == ([], big[:100])
    # The rest of the big frame, and (in order behind it) the small one.
    assert frames.feed(big[100:] + small) == ([], big[100:] + small)
    # The next feed starts at a frame boundary again.
    assert frames.feed(small) == ([b"small"], b"")


def test_nothing_is_read_before_it_is_synced():
    frames = InboundFrames(LIMIT)
    data = raw_frame(0x2, b"x")
    assert frames.feed(data) == ([], data)
    frames.synced()
    assert frames.feed(data) == ([b"x"], b"")


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 124, 125, 126, 127, 128, 129, 1000])
def test_unmask_matches_the_byte_by_byte_definition(n):
    payload = random.Random(n).randbytes(n)
    key = 0xA1B2C3D4
    kb = key.to_bytes(4, "big")
    assert unmask(key, payload) == bytes(b ^ kb[i % 4] for i, b in enumerate(payload))


def test_opcode_names_used_here_are_wsprotos():
    assert Opcode.BINARY == 0x2 and Opcode.CONTINUATION == 0x0 and Opcode.PING == 0x9


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_binary_frame_is_what_wsproto_writes(n):
    server = Connection(ConnectionType.SERVER)
    payload = random.Random(n).randbytes(n)
    assert binary_frame(payload) == server.send(BytesMessage(data=payload))


def test_release_hands_back_a_held_partial_frame_and_stops_reading():
    frames = InboundFrames(LIMIT)
    frames.synced()
    frame = raw_frame(0x2, b"held back")
    assert frames.feed(frame[:5]) == ([], b"")
    assert frames.release() == frame[:5]
    assert not frames.in_sync
    assert frames.feed(frame[5:]) == ([], frame[5:])


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536])
def test_masked_client_frames_read_back_through_wsproto(n):
    server = Connection(ConnectionType.SERVER)
    payload = random.Random(n).randbytes(n)
    server.receive_data(masked_frame(0x2, payload, 0x5A5AA5A5 ^ n))
    assert merge(summarize(server.events())) == [("bytes", payload)]
