"""attach_receiver: messages handled in trio-websocket's reader task."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from presenced.client import open_websocket
from presenced.server.ws_receiver import attach_receiver


async def test_queued_then_live_messages_arrive_in_order_and_the_end_is_reported(nursery):
    received: list[bytes | str] = []
    ended: dict[str, object] = {}
    attached = trio.Event()

    async def handler(request):
        ws = await request.accept()
        assert hasattr(ws, "_send_channel") and hasattr(ws, "_recv_channel")
        first = await ws.get_message()
        received.append(first)
        await trio.sleep(0.1)  # let more messages queue up in trio-websocket
        attach_receiver(ws, received.append)
        attached.set()
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        ended["code"] = info.value.reason.code

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    async with open_websocket(f"ws://127.0.0.1:{server.port}/") as ws:
        for i in range(5):
            await ws.send_message(f"m{i}")
        await attached.wait()
        for i in range(5, 10):
            await ws.send_message(f"m{i}".encode())
        await trio.sleep(0.1)
        await ws.aclose(4000, "bye")
    with trio.fail_after(5):
        while "code" not in ended:
            await trio.sleep(0.01)
    assert [m if isinstance(m, str) else m.decode() for m in received] == [
        f"m{i}" for i in range(10)
    ]
    assert ended["code"] == 4000


async def test_an_oversized_message_still_ends_the_connection_with_1009(nursery):
    ended: dict[str, int] = {}

    async def handler(request):
        ws = await request.accept()
        attach_receiver(ws, lambda message: None)
        try:
            await ws.get_message()
        except ConnectionClosed as e:
            ended["code"] = e.reason.code

    server = await nursery.start(
        lambda task_status: serve_websocket(
            handler, "127.0.0.1", 0, None, max_message_size=100, task_status=task_status
        )
    )
    async with open_websocket(f"ws://127.0.0.1:{server.port}/") as ws:
        await ws.send_message(b"x" * 1000)
        with trio.fail_after(5):
            while "code" not in ended:
                await trio.sleep(0.01)
    assert ended["code"] == 1009


async def test_over_a_real_connection_messages_are_read_by_the_splitter(nursery):
    """The wsproto internals `attach_receiver` checks are where it expects them."""
    received: list[bytes | str] = []
    done = trio.Event()
    state: dict[str, object] = {}

    async def handler(request):
        ws = await request.accept()
        attach_receiver(ws, received.append)
        try:
            await ws.get_message()
        except ConnectionClosed as e:
            state["code"] = e.reason.code
            state["in_sync"] = ws._stream._frames.in_sync
        done.set()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    async with open_websocket(f"ws://127.0.0.1:{server.port}/") as ws:
        for i in range(50):
            await ws.send_message(f"m{i}".encode())
            if i == 10:
                await ws.ping(b"alive")
            if i == 20:
                await ws.send_message("a text one")
        await trio.sleep(0.1)
        await ws.aclose(4000, "bye")
    with trio.fail_after(5):
        await done.wait()
    expected: list[bytes | str] = [f"m{i}".encode() for i in range(50)]
    expected.insert(21, "a text one")
    assert received == expected
    assert state == {"code": 4000, "in_sync": True}
