"""FrameSender: synchronous sends on a real trio-websocket connection."""

from __future__ import annotations

import trio
from trio_websocket import WebSocketConnection, serve_websocket

from presenced.client import open_websocket
from presenced.server.ws_sender import FrameSender, SendGate


async def _server(nursery, handler) -> int:
    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return server.port


async def test_trio_websocket_still_has_the_internals_we_use(nursery):
    seen = {}

    async def handler(request):
        ws: WebSocketConnection = await request.accept()
        seen["ok"] = (
            hasattr(ws, "_wsproto") and hasattr(ws, "_stream_lock")
            and hasattr(ws._stream, "socket") and hasattr(ws._stream.socket, "_sock")
        )
        await ws.aclose()

    port = await _server(nursery, handler)
    async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
        try:
            await ws.get_message()
        except Exception:
            pass
    assert seen["ok"]


async def test_frames_survive_partial_writes_and_interleaved_pings(nursery):
    # Big frames to a client that is not reading fill the socket buffers, so
    # some sends are partial and finish in the writer; server pings must not
    # land in the middle of a frame.
    frames = [bytes([i % 251]) * (50_000 + i) for i in range(60)]
    client_may_read = trio.Event()
    done = trio.Event()

    async def handler(request):
        ws = await request.accept()
        async with trio.open_nursery() as inner:
            sender = FrameSender(ws, 64 * 1024 * 1024, inner.start_soon)
            for frame in frames:
                assert sender.send([frame])
            assert sender.pending_bytes > 0  # the kernel did not take it all

            async def pinger():
                for _ in range(5):
                    await ws.ping()

            inner.start_soon(pinger)
            client_may_read.set()
            await done.wait()
            inner.cancel_scope.cancel()

    port = await _server(nursery, handler)
    async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
        await client_may_read.wait()
        with trio.fail_after(20):
            received = [await ws.get_message() for _ in frames]
        assert received == frames
        done.set()


async def test_send_reports_a_full_queue(nursery):
    result = {}
    release = trio.Event()

    async def handler(request):
        ws = await request.accept()
        sender = FrameSender(ws, 1024 * 1024, lambda task: None)
        # No extension was negotiated: frames are written without wsproto.
        result["plain"] = sender._plain
        big = b"x" * 200_000
        accepted = 0
        while sender.send([big]):
            accepted += 1
            if accepted > 1000:
                break
        result["accepted"] = accepted
        release.set()
        await ws.aclose()

    port = await _server(nursery, handler)
    async with open_websocket(f"ws://127.0.0.1:{port}/"):
        await release.wait()
    # Some went to the kernel, at most 1 MiB waited, then the queue was full.
    assert 5 <= result["accepted"] < 100
    assert result["plain"] is True


async def test_send_gate_is_a_mutex_without_an_owner():
    gate = SendGate()
    order = []

    async def user(name):
        async with gate:
            order.append(name)
            await trio.sleep(0.01)

    assert gate.try_acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(user, "a")
        nursery.start_soon(user, "b")
        await trio.sleep(0.05)
        assert order == []  # held by synchronous code, not by a task
        gate.release()
    assert sorted(order) == ["a", "b"]
