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
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import trio
from trio_websocket import WebSocketConnection

MessageHandler = Callable[[bytes | str], None]


class _DirectSend:
    """What trio-websocket's reader sends messages to: our handler."""

    __slots__ = ("_handle", "_original")

    def __init__(self, handle: MessageHandler, original: trio.MemorySendChannel) -> None:
        self._handle = handle
        self._original = original

    async def send(self, message: bytes | str) -> None:
        # Must not raise: an exception here would end trio-websocket's reader
        # task and, through its nursery, the server. The handler contains its
        # own errors; this is the last line.
        self._handle(message)

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


def attach_receiver(ws: WebSocketConnection, handle: MessageHandler) -> None:
    """From now on, call `handle(message)` for every message `ws` receives.

    Messages trio-websocket had already queued are handled first, in order.
    """
    original: trio.MemorySendChannel = ws._send_channel  # type: ignore[attr-defined]
    queued: trio.MemoryReceiveChannel = ws._recv_channel  # type: ignore[attr-defined]
    ws._send_channel = _DirectSend(handle, original)  # type: ignore[assignment]
    while True:
        try:
            message = queued.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        handle(message)
