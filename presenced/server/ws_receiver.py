"""Handling WebSocket messages inside trio-websocket's reader task.

trio-websocket's reader task parses frames and puts each message into a
memory channel, from which a second task takes it with `get_message()`:
two task switches per inbound message, and a task per connection that does
nothing but wait. presenced handles a message synchronously anyway (the
protocol core and the engine never block), so `attach_receiver` replaces
that channel's sending end with an object that calls the handler directly,
in the reader task.

The rest of trio-websocket keeps working: `get_message()` still reads the
original channel, which now only ever reports the end of the connection
(ConnectionClosed with the close code), so the connection's own task waits
there for the end. Like `ws_sender`, this relies on private attributes of
trio-websocket 0.12 (`_send_channel`, `_recv_channel`), pinned and checked
by tests/test_ws_receiver.py.

`attach_receiver` also gives the reader its own `receive_some`, which does
two things before trio-websocket sees any bytes:

- it reads the common frames itself (`presenced.ws.frames.InboundFrames`: complete
  binary messages) and hands them to the handler at once, so that wsproto
  and trio-websocket only see control frames and anything unusual;
- it waits before it receives. trio's socket receive first tries `recv()`
  (right after the reader emptied the socket that is nearly always a wasted
  EAGAIN), then waits, receives, and yields once more to the scheduler. On
  an established connection every message arrives after a wait; waiting
  first saves a system call and a scheduler round trip per inbound message,
  and every call is still a checkpoint, so a flooding client cannot starve
  other tasks.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from types import TracebackType

import trio
from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionState

from presenced.ws.frames import InboundFrames

MessageHandler = Callable[[bytes | str], None]


class _DirectSend:
    """What trio-websocket's reader sends messages to: our handler."""

    __slots__ = ("handle", "_original")

    def __init__(self, handle: MessageHandler, original: trio.MemorySendChannel) -> None:
        self.handle = handle
        self._original = original

    async def send(self, message: bytes | str) -> None:
        # Must not raise: an exception here would end trio-websocket's reader
        # task and, through its nursery, the server. The handler contains its
        # own errors; this is the last line.
        self.handle(message)

    async def aclose(self) -> None:
        # The reader closes the channel when the connection ends; passing it
        # on wakes whoever waits in get_message() with ConnectionClosed.
        await self._original.aclose()

    async def __aenter__(self) -> _DirectSend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _LeanReceiveStream:
    """trio-websocket's SocketStream with the `receive_some` described above.

    Everything else is the wrapped stream's own.
    """

    __slots__ = ("_wsproto", "_stream", "_sock", "_frames", "handle")

    def __init__(self, wsproto: object, stream: trio.SocketStream,
                 frames: InboundFrames, handle: MessageHandler) -> None:
        # The wsproto connection, not the WebSocketConnection: the latter
        # holds this object, and a cycle would outlive the connection.
        self._wsproto = wsproto
        self._stream = stream
        self._sock: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        self._frames = frames
        self.handle = handle

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes for wsproto, after handling the messages before them."""
        frames = self._frames
        if not frames.in_sync and _between_messages(self._wsproto):
            frames.synced()
        feed = frames.feed
        wsproto = self._wsproto
        while True:
            data = await self._receive(max_bytes)
            if not data:
                return data
            if wsproto.state is not ConnectionState.OPEN:  # type: ignore[attr-defined]
                # Closing: whatever comes now is wsproto's to judge, starting
                # with any frame the splitter was holding back.
                return frames.release() + data
            messages, through = feed(data)
            # The handler must not raise, as for _DirectSend: here an
            # exception would end trio-websocket's reader task.
            for message in messages:
                self.handle(message)
            if through:
                return through

    async def _receive(self, max_bytes: int | None) -> bytes:
        sock = self._sock
        if sock.fileno() < 0:
            raise trio.ClosedResourceError("the socket was closed")
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                return sock.recv(max_bytes or 65536)
            except BlockingIOError:
                # Readable but nothing to read (rare): wait again.
                await trio.lowlevel.wait_readable(sock)
            except OSError as e:
                if e.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the socket was closed") from None
                raise trio.BrokenResourceError(e) from e


def _between_messages(wsproto: object) -> bool:
    """wsproto holds no part of a frame and is not inside a fragmented message.

    Reads wsproto 1.x internals; if they are not where expected, the answer
    is no, and wsproto keeps reading every frame, as without this module.
    """
    try:
        proto = wsproto.connection._proto  # type: ignore[attr-defined]
        frame_decoder = proto._frame_decoder
        return (frame_decoder.header is None and not len(frame_decoder.buffer)
                and proto._message_decoder.opcode is None)
    except AttributeError:
        return False


def attach_receiver(ws: WebSocketConnection, handle: MessageHandler) -> None:
    """From now on, call `handle(message)` for every message `ws` receives.

    Messages trio-websocket had already queued are handled first, in order.
    """
    stream = ws._stream  # type: ignore[attr-defined]
    if isinstance(stream, trio.SocketStream):
        frames = InboundFrames(ws._max_message_size)  # type: ignore[attr-defined]
        ws._stream = _LeanReceiveStream(ws._wsproto, stream, frames,  # type: ignore[attr-defined]
                                        handle)  # type: ignore[attr-defined]
    original: trio.MemorySendChannel = ws._send_channel  # type: ignore[attr-defined]
    queued: trio.MemoryReceiveChannel = ws._recv_channel  # type: ignore[attr-defined]
    ws._send_channel = _DirectSend(handle, original)  # type: ignore[assignment]
    while True:
        try:
            message = queued.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        handle(message)


def _ignore(message: bytes | str) -> None:
    pass


def detach_receiver(ws: WebSocketConnection) -> None:
    """Stop calling the handler (at the connection's end).

    The handler is usually a method of an object that holds `ws`; dropping
    it breaks that reference cycle, so the connection's memory is freed when
    its last reference goes rather than at the garbage collector's next pass
    (which the server's GC thresholds make rare).
    """
    for holder in (ws._stream, ws._send_channel):  # type: ignore[attr-defined]
        if isinstance(holder, _LeanReceiveStream | _DirectSend):
            holder.handle = _ignore
