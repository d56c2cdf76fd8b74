"""presenced.ws over real sockets: our server and client, against each other and against
websockets and trio-websocket; the poller alone."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess

import pytest
import trio
from trio_websocket import open_websocket_url, serve_websocket
from websockets.exceptions import ConnectionClosed as WebsocketsClosed
from websockets.sync.client import connect as websockets_connect

from presenced.ws.codec import Codec
from presenced.ws.frames import masked_frame
from presenced.ws.poller import Poller
from presenced.ws.transport import Transport, accept, connect, open_socket

LIMIT = 2_000_000
QUEUE = 256 * 1024


class Recorder:
    """A handler that records everything and, if asked, echoes messages back."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: Transport | None = None
        self.request = None
        self.messages: list[bytes | str] = []
        self.pongs: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.opened = trio.Event()
        self.closed = trio.Event()
        self.arrived = trio.Event()

    def on_open(self, request) -> None:
        self.request = request
        self.opened.set()

    def on_message(self, message: bytes | str) -> None:
        self.messages.append(message)
        self.arrived.set()
        if self.echo:
            assert self.transport is not None
            if isinstance(message, str):
                self.transport.send_text(message)
            else:
                self.transport.send_binary(message)

    def on_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)
        self.arrived.set()

    def on_closed(self, code: int, reason: str) -> None:
        assert self.closed_with is None, "reported twice"
        self.closed_with = (code, reason)
        self.closed.set()

    async def wait_for(self, n: int) -> None:
        with trio.fail_after(10):
            while len(self.messages) < n:
                self.arrived = trio.Event()
                await self.arrived.wait()


class OurServer:
    def __init__(self, nursery: trio.Nursery, poller: Poller, echo: bool,
                 close_timeout_s: float) -> None:
        self.nursery = nursery
        self.poller = poller
        self.echo = echo
        self.close_timeout_s = close_timeout_s
        self.handlers: list[Recorder] = []
        self.accepted = trio.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self.listener)
                try:
                    sock, _ = self.listener.accept()
                except BlockingIOError:
                    continue
                handler = Recorder(self.echo)
                handler.transport = accept(
                    sock, self.poller, handler, spawn=self.nursery.start_soon,
                    max_message_bytes=LIMIT, queue_limit_bytes=QUEUE,
                    close_timeout_s=self.close_timeout_s)
                OPENED.append(handler.transport)
                self.handlers.append(handler)
                self.accepted.set()
        finally:
            trio.lowlevel.notify_closing(self.listener)
            self.listener.close()

    async def next_handler(self, index: int = 0) -> Recorder:
        with trio.fail_after(10):
            while len(self.handlers) <= index:
                self.accepted = trio.Event()
                await self.accepted.wait()
        return self.handlers[index]


# Every transport a test opened, dropped at its end (a test may leave some open).
OPENED: list[Transport] = []


@pytest.fixture
async def poller(nursery):
    poller = Poller()
    await nursery.start(poller.run)
    yield poller
    while OPENED:
        OPENED.pop().abort()


async def start_server(nursery, poller, echo=True, close_timeout_s=30.0) -> OurServer:
    server = OurServer(nursery, poller, echo, close_timeout_s)
    nursery.start_soon(server.run)
    return server


async def our_client(nursery, poller, port: int, handler: Recorder | None = None) -> Recorder:
    handler = handler or Recorder()
    sock = await open_socket("127.0.0.1", port)
    handler.transport = connect(sock, poller, handler, host=f"127.0.0.1:{port}",
                                resource="/presence", spawn=nursery.start_soon,
                                max_message_bytes=LIMIT, queue_limit_bytes=QUEUE)
    OPENED.append(handler.transport)
    with trio.fail_after(10):
        await handler.opened.wait()
    return handler


# ------------------------------------------------------- ours against ours


async def test_our_client_and_server_exchange_every_kind_of_message(nursery, poller):
    server = await start_server(nursery, poller)
    client = await our_client(nursery, poller, server.port)
    serving = await server.next_handler()
    assert serving.request.target == "/presence"
    big = bytes(range(256)) * 4000  # 1 MB: more than the socket buffers take at once
    sent: list[bytes | str] = [b"", b"one", "text ünïcode", b"x" * 70_000, big]
    for m in sent:
        assert (client.transport.send_text(m) if isinstance(m, str)
                else client.transport.send_binary(m))
    assert client.transport.send_binaries([b"a", b"b"])
    await client.wait_for(len(sent) + 2)
    assert client.messages == [*sent, b"a", b"b"]
    assert serving.messages == client.messages
    # Ping from the server, answered by the client's codec.
    serving.transport.ping(b"alive?")
    with trio.fail_after(10):
        while not serving.pongs:
            serving.arrived = trio.Event()
            await serving.arrived.wait()
    assert serving.pongs == [b"alive?"]


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_a_close_from_either_side_ends_both_with_its_code(nursery, poller, closer):
    server = await start_server(nursery, poller)
    client = await our_client(nursery, poller, server.port)
    serving = await server.next_handler()
    first, second = (client, serving) if closer == "client" else (serving, client)
    with trio.fail_after(10):
        await first.transport.aclose(4000, "bye")
        await second.closed.wait()
        await second.transport.wait_closed()
    assert first.closed_with == (4000, "bye")
    assert second.closed_with == (4000, "bye")
    assert first.transport.closed and second.transport.closed
    # Nothing more goes out or comes in.
    assert first.transport.send_binary(b"late") is True
    assert len(poller) == 0


async def test_a_close_with_no_answer_times_out_with_1006(nursery, poller):
    server = await start_server(nursery, poller, close_timeout_s=0.2)
    raw = await raw_client(server.port)
    serving = await server.next_handler()
    serving.transport.close(1001, "going away")
    with trio.fail_after(10):
        await serving.closed.wait()
    assert serving.closed_with == (1006, "closing handshake timed out")
    assert serving.transport.closed
    raw.close()


async def test_a_peer_that_vanishes_is_a_lost_connection(nursery, poller):
    server = await start_server(nursery, poller)
    client = await our_client(nursery, poller, server.port)
    serving = await server.next_handler()
    client.transport.abort()
    assert client.closed_with == (1006, "aborted")
    with trio.fail_after(10):
        await serving.closed.wait()
    assert serving.closed_with == (1006, "connection lost")


# ------------------------------------------------- attackers and mistakes


async def raw_client(port: int, request: bytes | None = None) -> socket.socket:
    """A bare socket that did the handshake (or sent `request`)."""
    sock = await open_socket("127.0.0.1", port)
    sock.setblocking(True)
    sock.settimeout(10)
    sock.sendall(request or (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
    if request is None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await trio.to_thread.run_sync(sock.recv, 1)
        assert head.startswith(b"HTTP/1.1 101 ")
    return sock


async def read_to_eof(sock: socket.socket) -> bytes:
    def read() -> bytes:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    return await trio.to_thread.run_sync(read)


async def test_a_bad_handshake_gets_a_400_and_the_connection_ends(nursery, poller):
    server = await start_server(nursery, poller)
    raw = await raw_client(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await read_to_eof(raw)
    raw.close()
    assert reply.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    serving = await server.next_handler()
    with trio.fail_after(10):
        await serving.closed.wait()
        await serving.transport.wait_closed()
    assert not serving.transport.opened and not serving.opened.is_set()
    assert serving.closed_with[0] == 1006 and "426" in serving.closed_with[1]


@pytest.mark.parametrize("attack, code", [
    (masked_frame(0x2, bytes(LIMIT + 1), 7), 1009),
    (b"\x83\x80abcd", 1002),
])
async def test_an_attacker_is_closed_and_a_canary_beside_it_is_not_disturbed(
        nursery, poller, attack, code):
    server = await start_server(nursery, poller)
    canary = await our_client(nursery, poller, server.port)
    raw = await raw_client(server.port)
    attacker = await server.next_handler(1)
    raw.sendall(attack)
    reply = await read_to_eof(raw)
    raw.close()
    # A close frame with the code, then the end of the stream.
    assert reply[0] == 0x88 and int.from_bytes(reply[2:4], "big") == code
    with trio.fail_after(10):
        await attacker.closed.wait()
        # The attacker's close frame was read, then its end: no wait for a timeout.
        await attacker.transport.wait_closed()
    assert attacker.closed_with[0] == code
    canary.transport.send_binary(b"still here")
    await canary.wait_for(1)
    assert canary.messages == [b"still here"]


async def test_a_client_that_does_not_read_fills_the_bounded_queue(nursery, poller):
    server = await start_server(nursery, poller, echo=False)
    raw = await raw_client(server.port)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    serving = await server.next_handler()
    chunk = bytes(16_384)
    sent = 0
    while serving.transport.send_binary(chunk):
        sent += 1
        assert sent < 10_000, "the queue has no bound"
    assert serving.transport.pending_bytes <= QUEUE
    assert serving.transport.pending_bytes + len(chunk) + 4 > QUEUE
    raw.close()


async def test_pings_faster_than_reads_end_as_a_slow_consumer(nursery, poller):
    server = await start_server(nursery, poller, echo=False)
    raw = await raw_client(server.port)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    serving = await server.next_handler()
    # Fill the queue, then make the server owe pongs.
    while serving.transport.send_binary(bytes(16_384)):
        pass
    ping = masked_frame(0x9, bytes(125), 1)
    with trio.fail_after(10):
        while not serving.closed.is_set():
            raw.sendall(ping * 50)
            await trio.sleep(0)
    assert serving.closed_with[0] == 1008
    raw.close()


# ------------------------------------------------ against other libraries


async def test_a_websockets_client_against_our_server(nursery, poller):
    server = await start_server(nursery, poller)

    def client() -> list:
        got: list = []
        with websockets_connect(f"ws://127.0.0.1:{server.port}/w",
                                compression="deflate", max_size=LIMIT) as ws:
            ws.send(b"binary")
            got.append(ws.recv())
            ws.send("text")
            got.append(ws.recv())
            ws.send([b"frag", b"mented"])  # a fragmented message
            got.append(ws.recv())
            ws.send(bytes(100_000))
            got.append(len(ws.recv()))
            got.append(ws.ping(b"p").wait(10))
            ws.close(4002, "done")
        return got

    got = await trio.to_thread.run_sync(client)
    assert got == [b"binary", "text", b"fragmented", 100_000, True]
    serving = await server.next_handler()
    with trio.fail_after(10):
        await serving.closed.wait()
    assert serving.closed_with == (4002, "done")


async def test_our_server_closing_a_websockets_client(nursery, poller):
    server = await start_server(nursery, poller, echo=False)

    def client() -> tuple:
        with websockets_connect(f"ws://127.0.0.1:{server.port}/") as ws:
            ws.send(b"hello")
            try:
                ws.recv(timeout=10)
            except WebsocketsClosed as e:
                return e.rcvd.code, e.rcvd.reason
        return None

    async with trio.open_nursery() as inner:
        result: list = []

        async def run_client() -> None:
            result.append(await trio.to_thread.run_sync(client))

        inner.start_soon(run_client)
        serving = await server.next_handler()
        await serving.wait_for(1)
        serving.transport.close(1001, "server shutting down")
    assert result == [(1001, "server shutting down")]


async def test_a_trio_websocket_client_against_our_server(nursery, poller):
    server = await start_server(nursery, poller)
    async with open_websocket_url(f"ws://127.0.0.1:{server.port}/t") as ws:
        for message in (b"one", "two", bytes(70_000)):
            await ws.send_message(message)
            assert await ws.get_message() == message
        await ws.ping(b"x")
        await ws.aclose(4003, "bye")
    serving = await server.next_handler()
    with trio.fail_after(10):
        await serving.closed.wait()
    assert serving.closed_with == (4003, "bye")


async def test_our_client_against_a_trio_websocket_server(nursery, poller):
    async def handler(request):
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            if message == "close please":
                await ws.aclose(4005, "as asked")
                return
            await ws.send_message(message)

    ws_server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    client = await our_client(nursery, poller, ws_server.port)
    for message in (b"a", "b", bytes(300_000)):
        client.transport.send_text(message) if isinstance(message, str) \
            else client.transport.send_binary(message)
    await client.wait_for(3)
    assert client.messages == [b"a", "b", bytes(300_000)]
    client.transport.ping(b"q")
    with trio.fail_after(10):
        while not client.pongs:
            client.arrived = trio.Event()
            await client.arrived.wait()
    client.transport.send_text("close please")
    with trio.fail_after(10):
        await client.closed.wait()
        await client.transport.wait_closed()
    assert client.closed_with == (4005, "as asked")


async def test_our_client_refused_by_a_server_reports_why(nursery, poller):
    server = await start_server(nursery, poller)
    sock = await open_socket("127.0.0.1", server.port)
    client = Recorder()
    # A server that wants another resource would answer 404; here a raw
    # "server" answers 403 through a listening socket of its own.
    sock.close()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        listener.close()

    async with trio.open_nursery() as inner:
        inner.start_soon(trio.to_thread.run_sync, refuse)
        sock = await open_socket("127.0.0.1", port)
        client.transport = connect(sock, poller, client, host="x", spawn=nursery.start_soon,
                                   max_message_bytes=LIMIT, queue_limit_bytes=QUEUE)
        with trio.fail_after(10):
            await client.closed.wait()
    assert not client.transport.opened
    assert client.transport.handshake_error.status == 403
    assert client.closed_with[0] == 1006


# ---------------------------------------------------------------- poller


async def test_the_poller_survives_a_failing_handler_and_serves_the_others(
        nursery, poller, caplog):
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    seen: list[bytes] = []
    got = trio.Event()

    def bad() -> None:
        raise RuntimeError("boom")

    def good() -> None:
        seen.append(d.recv(100))
        got.set()

    poller.add(b.fileno(), bad)
    poller.add(d.fileno(), good)
    with caplog.at_level(logging.ERROR, logger="presenced.ws"):
        a.send(b"x")
        c.send(b"y")
        with trio.fail_after(10):
            await got.wait()
            while len(poller) > 1:
                await trio.sleep(0)
    assert seen == [b"y"]
    assert "boom" in caplog.text
    poller.remove(d.fileno())
    poller.remove(d.fileno())  # twice is fine
    for s in (a, b, c, d):
        s.close()


async def test_a_cancelled_poller_closes_its_set_and_refuses_more():
    poller = Poller()
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        nursery.cancel_scope.cancel()
    a, b = socket.socketpair()
    with pytest.raises(trio.ClosedResourceError):
        poller.add(b.fileno(), lambda: None)
    a.close()
    b.close()


def test_the_codec_a_transport_starts_with_is_open():
    assert Codec(client=True, max_message_bytes=10).state.name == "OPEN"


# ------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def tls_server(nursery, certificate) -> int:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def handler(request):
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            if message == "close please":
                await ws.aclose(4006, "tls bye")
                return
            await ws.send_message(message)

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, context)
    return server.port


async def test_our_client_over_tls_against_a_trio_websocket_server(nursery, poller,
                                                                   certificate):
    port = await tls_server(nursery, certificate)
    client = Recorder()
    sock = await open_socket("127.0.0.1", port)
    client.transport = connect(
        sock, poller, client, host=f"localhost:{port}", spawn=nursery.start_soon,
        max_message_bytes=LIMIT, queue_limit_bytes=QUEUE,
        ssl_context=ssl.create_default_context(cafile=certificate[0]))
    OPENED.append(client.transport)
    with trio.fail_after(10):
        await client.opened.wait()
    for message in (b"secret", "text", bytes(200_000)):
        client.transport.send_text(message) if isinstance(message, str) \
            else client.transport.send_binary(message)
    await client.wait_for(3)
    assert client.messages == [b"secret", "text", bytes(200_000)]
    client.transport.send_text("close please")
    with trio.fail_after(10):
        await client.closed.wait()
        await client.transport.wait_closed()
    assert client.closed_with == (4006, "tls bye")


async def test_a_certificate_that_does_not_verify_fails_the_handshake(nursery, poller,
                                                                     certificate):
    port = await tls_server(nursery, certificate)
    client = Recorder()
    sock = await open_socket("127.0.0.1", port)
    client.transport = connect(sock, poller, client, host="localhost", spawn=nursery.start_soon,
                               max_message_bytes=LIMIT, queue_limit_bytes=QUEUE,
                               ssl_context=ssl.create_default_context())
    with trio.fail_after(10):
        await client.closed.wait()
    assert not client.transport.opened and client.transport.closed
    assert "CERTIFICATE_VERIFY_FAILED" in str(client.transport.handshake_error)


async def test_a_frame_cut_short_by_the_end_of_the_stream_is_a_lost_connection(nursery, poller):
    server = await start_server(nursery, poller)
    raw = await raw_client(server.port)
    serving = await server.next_handler()
    raw.sendall(masked_frame(0x2, b"complete", 3) + masked_frame(0x2, b"cut short", 4)[:7])
    raw.shutdown(socket.SHUT_WR)
    with trio.fail_after(10):
        await serving.closed.wait()
    assert serving.messages == [b"complete"]
    assert serving.closed_with == (1006, "connection lost")
    raw.close()
