"""What the fuzzers check: one function per target, taking the fuzzer's bytes.

Each `check_*` raises AssertionError (or lets an unexpected exception escape) when an
invariant breaks, and returns quietly otherwise. They need no fuzzer: `fuzz/run.py` drives them
with atheris (coverage-guided), and tests/test_fuzz.py replays every input of fuzz/corpus/
through them, so an input that once broke one stays a unit test.

Invariants, not just "no crash":

- rpc: the server core (`RpcServerConnection`) raises nothing but ProtocolError, a refused
  frame changes no state, ports, port names and live streams stay within their bounds, the
  bytes it sends for one frame are bounded, and every frame it sends parses on the client core
  (`RpcClientConnection`), which itself raises nothing but ProtocolError on any input.
- ws_frames: the splitter (`InboundFrames`) followed by wsproto reads, for any byte stream cut
  in any pieces, exactly the events wsproto alone reads.
- login: `verify_login` raises nothing but AuthError with a listed reason, spends at most one
  signature recovery per link, and accepts only a chain whose SIGNER is the address returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong

from presenced.auth import authchain
from presenced.auth.authchain import AUTH_FAILURE_REASONS, AuthError, verify_login
from presenced.rpc.client import RpcClientConnection
from presenced.rpc.events import (
    PortClosed,
    StreamCancelled,
    StreamReady,
    StreamRequest,
    UnaryRequest,
)
from presenced.rpc.frames import ProtocolError
from presenced.rpc.modules import ModuleSpec, ProcedureSpec, module_registry
from presenced.rpc.server import RpcServerConnection
from presenced.ws.frames import InboundFrames

__all__ = ["TARGETS", "check_login", "check_rpc", "check_ws_frames"]


class _Input:
    """Reads the fuzzer's bytes as a sequence of small decisions and byte strings."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self) -> bytes:
        """A length byte (0..255, or 2 bytes when 255) and that many bytes."""
        n = self.byte()
        if n == 255:
            n = 255 + self.byte() * 8
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


# ----------------------------------------------------------------------------- rpc

MAX_PORTS = 3
MAX_PORT_NAME_BYTES = 16
MAX_STREAMS = 4
MODULES = module_registry(
    ModuleSpec("PresenceService", (
        ProcedureSpec("PositionHeartbeat"),
        ProcedureSpec("GetOnlineFriends", server_streaming=True),
        ProcedureSpec("SubscribeFriendshipPresenceUpdates", server_streaming=True),
    )),
    ModuleSpec("Other", (ProcedureSpec("Stream", server_streaming=True), ProcedureSpec("Call"))),
)
# What one inbound frame may make the server send: answers echo at most a module or procedure
# name from the frame and a port name (bounded), plus a module table.
_OUT_PER_FRAME = 1024


def check_rpc(data: bytes) -> None:
    """Frames and application actions, in an order the input picks, on one connection."""
    source = _Input(data)
    server = RpcServerConnection(
        MODULES, max_ports=MAX_PORTS, max_port_name_bytes=MAX_PORT_NAME_BYTES,
        max_streams=MAX_STREAMS,
    )
    client = RpcClientConnection()
    server.server_ready()
    _deliver(server, client, 0)
    unary: list[int] = []
    streams: set[int] = set()
    ready: set[int] = set()
    while source.more():
        op = source.byte() % 8
        if op <= 2:
            frame = source.chunk()
            before = _state(server)
            try:
                events = server.receive_frame(frame)
            except ProtocolError as e:
                assert isinstance(e.reason, str)
                assert _state(server) == before, "a refused frame changed the state"
                continue
            for event in events:
                if isinstance(event, UnaryRequest):
                    assert event.number not in unary and event.number not in streams
                    unary.append(event.number)
                elif isinstance(event, StreamRequest):
                    assert event.stream_id not in streams, "a live stream was offered again"
                    streams.add(event.stream_id)
                elif isinstance(event, StreamReady):
                    assert event.stream_id in streams, "credit for an unknown stream"
                    ready.add(event.stream_id)
                elif isinstance(event, StreamCancelled):
                    assert event.stream_id in streams, "cancel of an unknown stream"
                    streams.discard(event.stream_id)
                    ready.discard(event.stream_id)
                elif isinstance(event, PortClosed):
                    for sid in event.stream_ids:
                        streams.discard(sid)
                        ready.discard(sid)
            _deliver(server, client, len(frame))
        elif op == 3 and unary:
            server.respond(unary.pop(0), source.chunk())
            _deliver(server, client, 0)
        elif op == 4 and ready:
            sid = min(ready)
            ready.discard(sid)
            assert server.stream_send(sid, source.chunk())
            _deliver(server, client, 0)
        elif op == 5 and streams:
            sid = min(streams)
            streams.discard(sid)
            ready.discard(sid)
            if source.byte() & 1:
                assert server.stream_close(sid)
            else:
                assert server.stream_fail(sid, "failed")
            _deliver(server, client, 0)
        elif op == 6:
            # Anything at all, as the server would send it, on the client core.
            try:
                client.receive_frame(source.chunk())
            except ProtocolError:
                pass
        elif op == 7:
            _check_bounds(server)
        # The application's view of the live streams, built from the events alone, is the
        # core's: nothing starts or ends behind its back.
        assert set(server.stream_ids()) == streams, (server.stream_ids(), streams)
    _check_bounds(server)
    live = set(server.stream_ids())
    assert set(server.close()) >= live, "close() forgot a live stream"
    assert server.receive_frame(data[:64]) == [], "a closed connection read a frame"


def _state(server: RpcServerConnection) -> tuple[Any, ...]:
    return (server.port_ids(), server.stream_ids(), server.stray_frames, server.closed)


def _check_bounds(server: RpcServerConnection) -> None:
    assert len(server.port_ids()) <= MAX_PORTS
    assert len(server.stream_ids()) <= MAX_STREAMS


def _deliver(server: RpcServerConnection, client: RpcClientConnection, inbound: int) -> None:
    _check_bounds(server)
    frames = server.data_to_send()
    if inbound:
        size = sum(len(f) for f in frames)
        assert size <= 2 * inbound + _OUT_PER_FRAME, f"{inbound} bytes in, {size} out"
    for frame in frames:
        # The server's own frames are always well-formed for a client.
        client.receive_frame(frame)


# ------------------------------------------------------------------------ ws_frames

_LIMIT = 200


def check_ws_frames(data: bytes) -> None:
    """The first bytes pick how the stream is cut; the rest is the stream."""
    source = _Input(data)
    cuts = [source.byte() % 64 + 1 for _ in range(source.byte() % 16)] or [4096]
    release_at = source.byte()
    stream = data[source.pos :]
    sizes = []
    pos = i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        sizes.append(size)
        pos += size
        i += 1
    alone = _wsproto_alone(stream, sizes)
    split = _split_then_wsproto(stream, sizes, release_at)
    assert split == alone, f"splitter+wsproto read {split!r}, wsproto alone {alone!r}"


def _wsproto_alone(stream: bytes, sizes: list[int]) -> list[tuple]:
    ws = Connection(ConnectionType.SERVER)
    out: list[tuple] = []
    pos = 0
    for size in sizes:
        if not _receive(ws, stream[pos : pos + size], out):
            break
        pos += size
    return _merge(out)


def _split_then_wsproto(stream: bytes, sizes: list[int], release_at: int) -> list[tuple]:
    ws = Connection(ConnectionType.SERVER)
    frames = InboundFrames(_LIMIT)
    frames.synced()
    out: list[tuple] = []
    pos = 0
    for index, size in enumerate(sizes):
        piece = stream[pos : pos + size]
        pos += size
        if index == release_at or ws.state is not ConnectionState.OPEN:
            # As presenced.server.ws_receiver does once the connection is closing: the bytes
            # held back go to wsproto first, and everything after them.
            piece = frames.release() + piece
        messages, through = frames.feed(piece)
        out.extend(("bytes", m, True) for m in messages)
        if through and not _receive(ws, through, out):
            break
    else:
        # The splitter holds back a frame until its header, and for its own frames the whole
        # frame, is complete: it may tell wsproto later (up to 13 bytes of header, or a frame
        # of at most max_message_bytes) but never differently. What it still holds at the end
        # is what wsproto alone has seen in part.
        held = frames.release()
        if held:
            _receive(ws, held, out)
    return _merge(out)


def _receive(ws: Connection, data: bytes, out: list[tuple]) -> bool:
    """Feed wsproto; False once the connection reads no more.

    trio-websocket's reader stops at the first CloseConnection event (the client's close, or
    wsproto's own 1002/1007 on a bad frame, after which wsproto's state is still OPEN), so
    nothing after it is read on either side.
    """
    try:
        ws.receive_data(data)
    except Exception as e:  # wsproto's own refusal, the same on both sides
        out.append(("refused", type(e).__name__))
        return False
    for e in ws.events():
        if isinstance(e, Message):
            kind = "bytes" if isinstance(e, BytesMessage) else "text"
            out.append((kind, e.data, e.message_finished))
        elif isinstance(e, CloseConnection):
            out.append(("close", e.code))
            return False
        elif isinstance(e, Ping | Pong):
            out.append((type(e).__name__, bytes(e.payload)))
        else:
            out.append((type(e).__name__,))
    return True


def _merge(items: list[tuple]) -> list[tuple]:
    """Whole messages, as trio-websocket joins them: wsproto may hand one message over in
    several events."""
    out: list[tuple] = []
    partial: dict[str, list] = {}
    for item in items:
        if item[0] in ("bytes", "text") and len(item) == 3:
            kind, payload, finished = item
            partial.setdefault(kind, []).append(payload)
            if finished:
                out.append((kind, (b"" if kind == "bytes" else "").join(partial.pop(kind))))
        else:
            out.append(item)
    # A message still unfinished at the end is not compared: trio-websocket hands over only
    # whole messages, and wsproto may show a partial frame the splitter still holds back.
    return out


# ---------------------------------------------------------------------------- login

# The fuzzer's clock: the corpus's valid logins are signed for this moment.
NOW_MS = 1_790_000_000_000
MAX_FRAME_BYTES = 16 * 1024


def check_login(data: bytes) -> None:
    """The login frame as bytes (a binary message) or text (a text message)."""
    frame: bytes | str = data[1 : 1 + MAX_FRAME_BYTES]
    if data[:1] == b"t":
        # wsproto hands over text messages only as valid UTF-8.
        frame = frame.decode("utf-8", errors="replace")
    recoveries = 0
    real = authchain.recover_personal_signer

    def counting(message: str, signature: str) -> str:
        nonlocal recoveries
        recoveries += 1
        return real(message, signature)

    authchain.recover_personal_signer = counting
    try:
        address = verify_login(frame, now_ms=NOW_MS, window_ms=300_000)
    except AuthError as e:
        assert e.reason in AUTH_FAILURE_REASONS, f"unlisted reason {e.reason!r}"
        assert recoveries < authchain.MAX_CHAIN_LINKS
        return
    finally:
        authchain.recover_personal_signer = real
    assert recoveries < authchain.MAX_CHAIN_LINKS
    assert len(address) == 42 and address.startswith("0x") and address == address.lower()
    assert int(address, 16) >= 0


TARGETS: dict[str, Callable[[bytes], None]] = {
    "rpc": check_rpc,
    "ws_frames": check_ws_frames,
    "login": check_login,
}
