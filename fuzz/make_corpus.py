"""Writes the seed inputs of fuzz/corpus/ (run from the repository root):

    python -m fuzz.make_corpus

Seeds are what real clients send (a login of each shape, a whole RPC session, a mixed
WebSocket stream) and the refusals the server must keep making (forged, expired, stale logins;
frames past each bound), so the fuzzer starts deep inside the code instead of at its first
`if`. Files are named by content hash; the script only adds. Inputs the fuzzer found that
broke an invariant are added here by hand, under a name that says what they are.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from fuzz.targets import NOW_MS
from presenced.auth.identity import Identity, login_frame, login_headers
from presenced.rpc.frames import (
    encode_create_port,
    encode_destroy_port,
    encode_request,
    encode_request_module,
    encode_stream_ack,
    encode_stream_message,
)

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


# ------------------------------------------------------------------------------ rpc


def chunk(data: bytes) -> bytes:
    assert len(data) < 255, "seed frames are short"
    return bytes((len(data),)) + data


def frame(data: bytes) -> bytes:
    return b"\x00" + chunk(data)


def rpc_seeds() -> list[bytes]:
    session = b"".join([
        frame(encode_create_port(1, "social_service")),
        frame(encode_request_module(2, 1, "PresenceService")),
        frame(encode_request(3, 1, 1, b"\x0a\x08\x0a\x04main\x10\x02\x18\x04")),
        b"\x03" + chunk(b"\x0a\x02ok"),  # answer the heartbeat
        frame(encode_request(4, 1, 2)),  # GetOnlineFriends
        frame(encode_stream_ack(4, 1, 0)),
        b"\x04" + chunk(b"\x0a\x05users"),
        frame(encode_stream_ack(4, 1, 1)),
        b"\x05\x01",  # close it
        frame(encode_request(5, 1, 3)),  # subscribe
        frame(encode_stream_ack(5, 1, 0)),
        b"\x04" + chunk(b"\x0a\x03upd"),
        frame(encode_stream_message(5, 1, 1, closed=True)),  # client cancels
        frame(encode_request_module(6, 1, "Other")),
        frame(encode_request(7, 1, 4)),
        frame(encode_destroy_port(0, 1)),
        b"\x07",
    ])
    bounds = b"".join(
        [frame(encode_create_port(i, "p" * (i * 5))) for i in range(1, 6)]
        + [frame(encode_request_module(10, 2, "PresenceService"))]
        + [frame(encode_request(20 + i, 2, 2)) for i in range(6)]
        + [frame(encode_request(20, 2, 2)), frame(encode_request(40, 2, 1, client_stream=1))]
        + [frame(encode_request(41, 9, 1)), frame(encode_request(42, 2, 99))]
        + [frame(encode_request_module(43, 2, "Missing"))]
    )
    garbage = b"".join([
        frame(b"\x0d\x00\x00\x00\x78garbage"),  # message type 15
        frame(b"\x0d\x00\x00\x00\x00"),  # EMPTY
        frame(b"\x0d\x00\x00\x00\x10"),  # RESPONSE, a server's
        frame(b"\xff\xff\xff"),
        frame(b""),
    ])
    client_side = b"".join([
        b"\x06" + chunk(b"\x0d\x00\x00\x00\x58"),  # SERVER_READY
        b"\x06" + chunk(b"\x0d\x01\x00\x00\x18\x15\x01\x00\x00\x00\x25\x01\x00\x00\x00"),
    ])
    return [session, bounds, garbage, client_side, session + bounds]


# ------------------------------------------------------------------------ ws_frames


def ws_stream(events: list[Event]) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(e) for e in events)


def ws_seeds() -> list[bytes]:
    rng = random.Random(14)
    seeds = []
    messages = [BytesMessage(data=rng.randbytes(n)) for n in (0, 1, 17, 125, 126, 150, 300)]
    for cuts in ([], [1], [3, 7], [64, 2, 5, 13]):
        head = bytes((len(cuts), *cuts, 255))
        seeds.append(head + ws_stream(messages))
    mixed = [
        BytesMessage(data=b"a" * 20), TextMessage(data="héllo"), Ping(payload=b"p"),
        BytesMessage(data=b"frag-1", message_finished=False), Ping(payload=b"mid"),
        BytesMessage(data=b"frag-2", message_finished=True), Pong(payload=b"q"),
        BytesMessage(data=b"x" * 250), CloseConnection(code=1000),
    ]
    seeds.append(bytes((2, 5, 11, 3)) + ws_stream(mixed) + ws_stream(messages[:3]))
    # Unmasked, RSV1, reserved opcode, continuation without a start.
    odd = b"\x82\x03abc" + b"\xc2\x83\x01\x02\x03\x04abc" + b"\x83\x80\x00\x00\x00\x00"
    seeds.append(bytes((1, 9, 255)) + odd + ws_stream(messages[:2]))
    seeds.append(bytes((1, 4, 1)) + b"\x80\x83\x01\x02\x03\x04abc" + ws_stream(messages[:2]))
    return seeds


# ---------------------------------------------------------------------------- login


def login_seeds() -> list[bytes]:
    expiration = datetime(2100, 1, 1, tzinfo=UTC)
    alice = Identity.generate(random.Random(1), expiration=expiration)
    bob = Identity.generate(random.Random(2), expiration=expiration)
    expired = Identity.generate(random.Random(3), expiration=datetime(2020, 1, 1, tzinfo=UTC))
    good = login_frame(alice, NOW_MS)
    seeds = [b"t" + good.encode(), b"b" + good.encode(),
             b"t" + login_frame(alice, NOW_MS, '{"origin":"https://play.decentraland.org"}')
             .encode()]
    forged = json.loads(good)
    forged["x-identity-auth-chain-2"] = json.loads(login_frame(bob, NOW_MS))[
        "x-identity-auth-chain-2"]
    stale = login_frame(alice, NOW_MS - 10 * 60 * 1000)
    long_chain = login_headers(alice, NOW_MS)
    for i in range(3, 10):
        long_chain[f"x-identity-auth-chain-{i}"] = long_chain["x-identity-auth-chain-2"]
    crlf = json.loads(good)
    link = json.loads(crlf["x-identity-auth-chain-1"])
    link["payload"] = link["payload"].replace("\n", "\r\n")
    crlf["x-identity-auth-chain-1"] = json.dumps(link)
    for value in (forged, long_chain, crlf):
        seeds.append(b"t" + json.dumps(value).encode())
    seeds += [b"t" + stale.encode(), b"t" + login_frame(expired, NOW_MS).encode(),
              b"t{}", b"t[]", b"bnot json", b"b\xff\xfe", b'tx{"x-identity-timestamp": "1"}',
              b't{"x-identity-auth-chain-0": "\\ud800"}',
              b'b{"x-identity-auth-chain-0": "{\\"type\\": \\"SIGNER\\"}"}']
    return seeds


def main() -> None:
    for data in rpc_seeds():
        write("rpc", data)
    for data in ws_seeds():
        write("ws_frames", data)
    for data in login_seeds():
        write("login", data)


if __name__ == "__main__":
    main()
