"""The baseline: a minimal WebSocket fan-out server on `websockets`, no presence logic.

It does what presenced does on the wire for the same load, and nothing
else: each client's heartbeat (30 bytes, like a PositionHeartbeat request)
is answered (20 bytes, like its response), and when it is a move, a
message the size of a one-update stream item (80 bytes) goes to every
connected, subscribed friend of the sender (the same social graph as the
presenced run), each of whom acknowledges it (17 bytes, like a STREAM_ACK).
No login, no state beyond who is connected, no coalescing, no flow control
(`websockets.broadcast` writes to every recipient at once). The garbage
collector is tuned as presenced tunes its own.

    python -m bench.suite.baseline_server PORT USERS AVG_FRIENDS SEED

Messages (first byte): H hello (u32 user index, u8 subscribed), B heartbeat
(u8 moved), A ack, S statistics (answered with JSON, for the benchmark).
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import struct
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

from presenced.socialgraph import SocialGraph

RESPONSE = b"R" + bytes(19)
UPDATE = b"U" + bytes(79)
_HELLO = struct.Struct("<BIB")


class Fanout:
    def __init__(self, adjacency: list[list[int]]) -> None:
        self.adjacency = adjacency
        self.listeners: dict[int, ServerConnection] = {}
        self.connected = 0
        self.heartbeats = 0
        self.moves = 0
        self.deliveries = 0
        self.acks = 0

    async def handler(self, ws: ServerConnection) -> None:
        index = -1
        self.connected += 1
        try:
            hello = await ws.recv()
            if hello[:1] == b"S":
                await self._stats(ws)
                return
            _, index, subscribed = _HELLO.unpack(hello)
            if subscribed:
                self.listeners[index] = ws
            friends = self.adjacency[index]
            listeners = self.listeners
            async for message in ws:
                kind = message[0]
                if kind == 0x41:  # A
                    self.acks += 1
                elif kind == 0x42:  # B
                    self.heartbeats += 1
                    await ws.send(RESPONSE)
                    if message[1]:
                        self.moves += 1
                        recipients = [c for f in friends if (c := listeners.get(f)) is not None]
                        if recipients:
                            broadcast(recipients, UPDATE)
                            self.deliveries += len(recipients)
        except Exception:  # a client going away mid-message ends only its handler
            pass
        finally:
            self.connected -= 1
            if index >= 0 and self.listeners.get(index) is ws:
                del self.listeners[index]

    async def _stats(self, ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(json.dumps({
                "connected": self.connected - 1, "heartbeats": self.heartbeats,
                "moves": self.moves, "deliveries": self.deliveries, "acks": self.acks}))


async def main(port: int, users: int, avg_friends: float, seed: int) -> None:
    fanout = Fanout(SocialGraph.generate(users, avg_friends, seed).adjacency())
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # No compression and no library pings: presenced negotiates neither
    # (it pings only silent connections, and heartbeats keep them busy).
    async with serve(fanout.handler, "127.0.0.1", port, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
