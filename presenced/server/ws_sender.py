"""Sending binary WebSocket messages without a task switch per message.

`trio_websocket.WebSocketConnection.send_message` is async: every message
costs a trio checkpoint, a lock, and (because our sends start in synchronous
code: the engine fanning out a friend's change) a wake-up of a writer task.
Profiles of the server under load put that path at a quarter of all CPU.
Yet nearly every frame presenced sends is small and the socket almost always
has room, so `FrameSender` encodes the frame itself (`presenced.ws.frames.binary_frame`;
with the connection's wsproto if an extension was negotiated) and hands it
to the kernel with one non-blocking `send()`,
right away. Only bytes the kernel does not take wait for the writer task.

To share the socket safely with trio-websocket's own sends (pongs, pings,
the close handshake), the connection's stream lock is replaced by a
`SendGate`: a mutex not owned by a task, so that the synchronous path can
take it and, after a partial write, hand it to the writer, which finishes
the frame before anyone else may write. The writer is a task started only
while bytes wait, so an idle connection costs no task for it. This relies
on three private
attributes of trio-websocket 0.12 (`_wsproto`, `_stream`, `_stream_lock`);
the version is pinned and `tests/test_ws_sender.py` checks them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

import trio
from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage
from wsproto.utilities import LocalProtocolError

from presenced.ws.frames import binary_frame


class SendGate:
    """A mutex for the socket's write side that no task owns."""

    __slots__ = ("held", "_lot")

    def __init__(self) -> None:
        self.held = False
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self.held

    def try_acquire(self) -> bool:
        if self.held:
            return False
        self.held = True
        return True

    def release(self) -> None:
        self.held = False
        if self._lot:
            self._lot.unpark()

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self.held:
            await self._lot.park()
        self.held = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class FrameSender:
    """Writes binary messages for one connection.

    `spawn` starts a task (the connection's nursery's `start_soon`); it is
    used to start the writer when the kernel leaves bytes behind.
    """

    __slots__ = ("_ws", "_wsproto", "_stream", "_sock", "_gate", "_pending", "_handoff",
                 "_limit", "_spawn", "_writing", "_plain", "broken")

    def __init__(
        self,
        ws: WebSocketConnection,
        limit_bytes: int,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        self._ws = ws
        self._wsproto = ws._wsproto
        self._stream = ws._stream
        self._sock = ws._stream.socket._sock  # type: ignore[attr-defined]
        self._gate = SendGate()
        ws._stream_lock = self._gate  # type: ignore[assignment]
        self._pending = bytearray()
        # True while the writer owns the gate on behalf of a partial write.
        self._handoff = False
        self._limit = limit_bytes
        self._spawn = spawn
        self._writing = False
        self.broken = False
        # No extension negotiated (presenced offers none): frames are plain.
        try:
            self._plain = not ws._wsproto.connection._proto.extensions
        except AttributeError:
            self._plain = False

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def send(self, frames: list[bytes]) -> bool:
        """Send or queue `frames`; False when the queue would pass its limit."""
        wsproto = self._wsproto
        if wsproto.state is not ConnectionState.OPEN or self.broken:
            return True  # closing: the reader ends the connection
        try:
            if self._plain:
                if len(frames) == 1:
                    data = binary_frame(frames[0])
                else:
                    data = b"".join([binary_frame(f) for f in frames])
            elif len(frames) == 1:
                data = wsproto.send(BytesMessage(data=frames[0]))
            else:
                data = b"".join([wsproto.send(BytesMessage(data=f)) for f in frames])
        except LocalProtocolError:
            return True
        pending = self._pending
        if pending or not self._gate.try_acquire():
            if len(pending) + len(data) > self._limit:
                return False
            pending += data
            self._start_writer()
            return True
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The peer is gone; the reader task will see it and end things.
            self.broken = True
            self._gate.release()
            return True
        if sent == len(data):
            self._gate.release()
            return True
        # The kernel took part of a frame: nobody else may write until the
        # writer has sent the rest, so it inherits the gate.
        pending += memoryview(data)[sent:]
        self._handoff = True
        self._start_writer()
        return True

    def detach(self) -> None:
        """Forget `spawn` (at the connection's end): it usually holds our owner."""
        self._spawn = _no_spawn
        self.broken = True

    def _start_writer(self) -> None:
        if not self._writing:
            self._writing = True
            self._spawn(self._write)

    async def _write(self) -> None:
        """Write what the fast path could not, then end."""
        pending = self._pending
        gate = self._gate
        try:
            if not self._handoff:
                await gate.__aenter__()
            self._handoff = False
            while pending:
                chunk = bytes(pending)
                pending.clear()
                await self._stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True
            return
        except BaseException:
            # Cancelled, possibly in the middle of a frame: the gate stays
            # held so that no other frame (not even the close) follows a
            # partial one; the connection's close then just drops TCP.
            self.broken = True
            raise
        finally:
            self._writing = False
        gate.release()


def _no_spawn(task: Callable[[], Awaitable[None]]) -> None:
    pass
