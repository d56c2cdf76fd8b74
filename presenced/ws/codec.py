"""One WebSocket connection's frames, client or server role, without I/O.

`Codec` turns received bytes into events and messages into bytes to send,
as wsproto's `FrameProtocol(client=...)` does, with the splitter (`frames`)
in front: complete binary frames, nearly all of the traffic, are read there;
everything else (text, fragments, control frames, anything wrong) goes byte
for byte to a `wsproto.connection.Connection`, through its public API only.
The splitter is in front from the first byte after the handshake, so it
always knows when wsproto is between messages (it tracks what it passed
through), and no attribute of wsproto's is ever read but `state`.

The wsproto connection is created only when first needed (about 1.7 KiB per
connection that never sees an unusual frame). It keeps no state for
complete outbound messages, so binary, text and ping frames are written
here (`frames.binary_frame`, `frames.masked_frame`) and only the close goes
through wsproto, whose state it changes.

Received, in the list `receive` returns, in order:

- a message: `bytes` (binary) or `str` (text), whole (fragments joined);
- `Pong`: the peer answered a ping;
- `CloseReceived`: the peer's close frame (the start of its closing
  handshake, or its answer to ours); the answer, if one is due, is already
  in `outgoing`;
- `Failed`: the peer broke the protocol or sent a message over
  `max_message_bytes`; a close frame (1002 or 1009) is in `outgoing`, and the
  connection should be dropped once it is sent (RFC 6455 §7.1.7);
- `ConnectionLost` (from `receive_eof`): the stream ended without a close.

Pings are answered automatically (the pong goes to `outgoing`). After our
own close, messages still arriving are dropped: nobody wants them.
"""

from __future__ import annotations

import random
from typing import Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.events import Pong as _WsPong
from wsproto.frame_protocol import CloseReason

from presenced.closes import Close
from presenced.ws.frames import InboundFrames, binary_frame, masked_frame

__all__ = ["CloseReceived", "Codec", "ConnectionLost", "ConnectionState", "Failed", "Pong"]

_OP_TEXT = 0x1
_OP_BINARY = 0x2
_OP_PING = 0x9
_OPEN = ConnectionState.OPEN
_CLOSED = ConnectionState.CLOSED
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING

# The closes this layer sends of its own accord, from the project's close
# table (codes and reason texts): a code wsproto reports for a frame it
# refuses -> ours. wsproto says 1007 for invalid UTF-8 in a text message;
# presenced's table has one protocol error for every malformed input.
CLOSES: Final[dict[int, Close]] = {
    CloseReason.PROTOCOL_ERROR: Close.PROTOCOL_ERROR,
    CloseReason.INVALID_FRAME_PAYLOAD_DATA: Close.PROTOCOL_ERROR,
    CloseReason.MESSAGE_TOO_BIG: Close.MESSAGE_TOO_BIG,
}
NORMAL_CLOSURE: Final = int(CloseReason.NORMAL_CLOSURE)
ABNORMAL_CLOSURE: Final = int(CloseReason.ABNORMAL_CLOSURE)

# A client's masking keys. RFC 6455 §5.3 wants them unpredictable so that
# script in a browser cannot choose the bytes a proxy sees; our clients run
# no foreign script, and a seeded PRNG (seeded from os.urandom) costs far
# less than os.urandom per frame.
_mask_keys = random.Random()


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"


class CloseReceived:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"CloseReceived({self.code}, {self.reason!r})"


class Failed:
    """We failed the connection with `close` (its code and reason are in the frame sent)."""

    __slots__ = ("close", "detail")

    def __init__(self, close: Close, detail: str) -> None:
        self.close = close
        self.detail = detail

    @property
    def code(self) -> int:
        return self.close.code

    def __repr__(self) -> str:
        return f"Failed({self.close.name}, {self.detail!r})"


class ConnectionLost:
    __slots__ = ()

    code = ABNORMAL_CLOSURE

    def __repr__(self) -> str:
        return "ConnectionLost()"


class Codec:
    """Frames in and out for one connection; `client` chooses the role."""

    __slots__ = ("client", "max_message_bytes", "state", "failed", "outgoing", "_frames",
                 "_ws", "_parts", "_size")

    def __init__(self, *, client: bool, max_message_bytes: int) -> None:
        self.client = client
        self.max_message_bytes = max_message_bytes
        # wsproto's states: OPEN, then LOCAL_CLOSING (we closed first) or
        # CLOSED; REMOTE_CLOSING is never seen outside `receive`, which
        # answers a close at once.
        self.state = _OPEN
        self.failed = False
        # Frames this codec wants sent of its own accord (pongs, the answer
        # to a close, the close of a failure): the owner takes and sends them.
        self.outgoing = bytearray()
        self._frames = InboundFrames(max_message_bytes, masked=not client)
        self._frames.synced()
        self._ws: Connection | None = None
        # The parts of a message wsproto is delivering, and their size.
        self._parts: list[bytes | str] = []
        self._size = 0

    # ---------------------------------------------------------------- in

    def receive(self, data: bytes) -> list[object]:
        """Events for `data` (see the module docstring); messages are bytes or str."""
        if self.state is _OPEN:
            messages, through = self._frames.feed(data)
            if not through:
                return messages  # type: ignore[return-value]
            return self._to_wsproto(messages, through)  # type: ignore[arg-type]
        if self.failed or self.state is _CLOSED:
            return []
        return self._to_wsproto([], data)

    def receive_eof(self) -> list[object]:
        """The peer's stream ended (or broke)."""
        if self.failed or self.state is _CLOSED:
            self.state = _CLOSED
            return []
        self.state = _CLOSED
        return [ConnectionLost()]

    def _wsproto(self) -> Connection:
        ws = self._ws
        if ws is None:
            ws = self._ws = Connection(
                ConnectionType.CLIENT if self.client else ConnectionType.SERVER)
        return ws

    def _to_wsproto(self, events: list[object], data: bytes) -> list[object]:
        ws = self._wsproto()
        ws.receive_data(data)
        for event in ws.events():
            kind = type(event)
            if kind is BytesMessage or kind is TextMessage:
                if self.state is not _OPEN:
                    continue  # after our close: dropped
                if not self._message_part(events, event.data,  # type: ignore[attr-defined]
                                          event.message_finished):  # type: ignore[attr-defined]
                    break
            elif kind is Ping:
                if ws.state is _OPEN:
                    self.outgoing += ws.send(event.response())  # type: ignore[attr-defined]
            elif kind is _WsPong:
                events.append(Pong(bytes(event.payload)))  # type: ignore[attr-defined]
            elif kind is CloseConnection:
                code = event.code  # type: ignore[attr-defined]
                reason = event.reason or ""  # type: ignore[attr-defined]
                state = ws.state
                if state is _REMOTE_CLOSING:
                    self.outgoing += ws.send(event.response())  # type: ignore[attr-defined]
                    self.state = ws.state
                    events.append(CloseReceived(int(code), reason))
                elif state is _CLOSED:
                    # The answer to our close.
                    self.state = _CLOSED
                    events.append(CloseReceived(int(code), reason))
                else:
                    # wsproto refused a frame (its state is unchanged then) and
                    # reads nothing more.
                    close = CLOSES.get(int(code), Close.PROTOCOL_ERROR)
                    events.append(self._fail(close, reason))
                break
        return events

    def _message_part(self, events: list[object], data: bytes | str, finished: bool) -> bool:
        """Collect one part of a message from wsproto; False when it failed the connection."""
        size = len(data) if type(data) is bytes else len(data.encode())  # type: ignore[union-attr]
        parts = self._parts
        if finished and not parts:
            if size > self.max_message_bytes:
                events.append(self._fail(Close.MESSAGE_TOO_BIG, f"{size} bytes"))
                return False
            events.append(data)
            return True
        self._size += size
        if self._size > self.max_message_bytes:
            events.append(self._fail(Close.MESSAGE_TOO_BIG, f"over {self.max_message_bytes} "
                                                            "bytes"))
            return False
        parts.append(data)
        if finished:
            events.append(("" if type(data) is str else b"").join(parts))  # type: ignore[arg-type]
            self._parts = []
            self._size = 0
        return True

    def _fail(self, close: Close, detail: str) -> Failed:
        """Fail the connection: our close frame goes out, nothing more is read."""
        self.failed = True
        self._parts = []
        ws = self._wsproto()
        if ws.state is _OPEN or ws.state is _REMOTE_CLOSING:
            self.outgoing += ws.send(CloseConnection(code=close.code,
                                                     reason=close.text(detail)))
        self.state = ws.state
        return Failed(close, detail)

    # --------------------------------------------------------------- out

    def take_outgoing(self) -> bytes:
        data = bytes(self.outgoing)
        self.outgoing.clear()
        return data

    def binary(self, payload: bytes) -> bytes:
        """The frame of one binary message (b"" once the connection is closing)."""
        if self.state is not _OPEN:
            return b""
        if self.client:
            return masked_frame(_OP_BINARY, payload, _mask_keys.getrandbits(32))
        return binary_frame(payload)

    def binaries(self, payloads: list[bytes]) -> bytes:
        """The frames of several binary messages, in one piece."""
        if self.state is not _OPEN:
            return b""
        if self.client:
            keys = _mask_keys.getrandbits
            return b"".join([masked_frame(_OP_BINARY, p, keys(32)) for p in payloads])
        return b"".join([binary_frame(p) for p in payloads])

    def text(self, text: str) -> bytes:
        if self.state is not _OPEN:
            return b""
        return self._frame(_OP_TEXT, text.encode())

    def ping(self, payload: bytes = b"") -> bytes:
        if len(payload) > 125:
            raise ValueError("a ping's payload is at most 125 bytes")
        if self.state is not _OPEN:
            return b""
        return self._frame(_OP_PING, payload)

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Our close frame (b"" if one was sent already); messages arriving after it are
        dropped, and the peer's answer comes as `CloseReceived`."""
        ws = self._wsproto()
        if ws.state is not _OPEN and ws.state is not _REMOTE_CLOSING:
            return b""
        data = ws.send(CloseConnection(code=code, reason=reason or None))
        # From now on wsproto reads every frame (to find the answer), starting
        # with whatever the splitter was holding back.
        held = self._frames.release()
        if held:
            ws.receive_data(held)
        self.state = ws.state
        return bytes(data)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        if self.client:
            return masked_frame(opcode, payload, _mask_keys.getrandbits(32))
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
        return head + payload
