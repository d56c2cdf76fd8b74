"""The baseline's own load generator: the same users, pace and moves as a simulate run.

Each process connects its share of the online users (chosen as `presenced
simulate` chooses them, so the baseline server fans out to the same
friends), sends a heartbeat every interval with the same jitter, marks it a
move with the same probability, and acknowledges every update at once.

    python -m bench.suite.baseline_client URL USERS ONLINE_FRACTION SUBSCRIBE_FRACTION \\
        SEED INTERVAL_S PROCESS PROCESSES SOURCE_ADDRESS
"""

from __future__ import annotations

import asyncio
import gc
import random
import struct
import sys

from websockets.asyncio.client import ClientConnection, connect

from presenced.simulate.plan import Population, SimConfig

HEARTBEAT_MOVE = b"B\x01" + bytes(28)
HEARTBEAT_STAY = b"B\x00" + bytes(28)
ACK = b"A" + bytes(16)
JITTER = 0.1
MOVE_PROBABILITY = 0.8
CONNECTS_PER_S = 500


async def user(url: str, index: int, subscribed: bool, interval: float, source: str,
               rng: random.Random) -> None:
    async with connect(url, compression=None, ping_interval=None, max_queue=None,
                       open_timeout=60, local_addr=(source, 0)) as ws:
        await ws.send(struct.pack("<BIB", ord("H"), index, int(subscribed)))
        beating = asyncio.create_task(heartbeats(ws, interval, rng))
        try:
            async for message in ws:
                if message[0] == 0x55:  # U
                    await ws.send(ACK)
        finally:
            beating.cancel()


async def heartbeats(ws: ClientConnection, interval: float, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, interval))
    while True:
        move = rng.random() < MOVE_PROBABILITY
        await ws.send(HEARTBEAT_MOVE if move else HEARTBEAT_STAY)
        await asyncio.sleep(interval * rng.uniform(1 - JITTER, 1 + JITTER))


async def main(url: str, users: int, online_fraction: float, subscribe_fraction: float,
               seed: int, interval: float, process: int, processes: int, source: str) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    config = SimConfig(users=users, seed=seed, online_fraction=online_fraction,
                       subscribe_fraction=subscribe_fraction)
    population = Population.choose(config)
    mine = population.online[process::processes]
    rng = random.Random(f"{seed}:baseline:{process}")
    tasks = []
    for index in mine:
        tasks.append(asyncio.create_task(user(url, index, index in population.subscribers,
                                              interval, source, rng)))
        await asyncio.sleep(processes / CONNECTS_PER_S)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], int(a[1]), float(a[2]), float(a[3]), int(a[4]), float(a[5]),
                     int(a[6]), int(a[7]), a[8]))
