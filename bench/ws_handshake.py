"""Server-side WebSocket handshake cost: presenced.ws.handshake against wsproto's H11Handshake.

Both read the same upgrade request (what Chrome sends, about 500 bytes, in
one chunk or in two) and produce the 101 response bytes; the time is CPU
per handshake in one process (no sockets), best of a few rounds.

    .venv/bin/python bench/ws_handshake.py [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsproto import ConnectionType  # noqa: E402
from wsproto.events import AcceptConnection, Request  # noqa: E402
from wsproto.handshake import H11Handshake  # noqa: E402

from presenced.ws.handshake import Accepted, ServerHandshake  # noqa: E402

REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: presence.example.org\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://play.decentraland.org\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)


def ours(chunks: list[bytes]) -> bytes:
    handshake = ServerHandshake()
    for chunk in chunks:
        outcome = handshake.receive_data(chunk)
        if outcome is not None:
            assert isinstance(outcome, Accepted)
            return outcome.response
    raise AssertionError("incomplete")


def h11(chunks: list[bytes]) -> bytes:
    handshake = H11Handshake(ConnectionType.SERVER)
    for chunk in chunks:
        handshake.receive_data(chunk)
        for event in handshake.events():
            if isinstance(event, Request):
                # No extensions, as presenced: the same 101 as ours.
                return handshake.send(AcceptConnection())
    raise AssertionError("incomplete")


def per_call_us(fn, chunks: list[bytes], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn(chunks)
        best = min(best, time.process_time() - start)
    return 1e6 * best / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    assert ours([REQUEST]).split(b"\r\n")[0] == h11([REQUEST]).split(b"\r\n")[0]
    for name, chunks in (("one chunk", [REQUEST]),
                         ("two chunks", [REQUEST[:200], REQUEST[200:]])):
        a = per_call_us(ours, chunks, args.n)
        b = per_call_us(h11, chunks, args.n // 4)
        print(f"{name}: presenced.ws.handshake {a:.1f} µs, wsproto H11Handshake {b:.1f} µs "
              f"({b / a:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
