"""What one Redis flush costs the server, and how much of it is the hop to a thread and back.

    .venv/bin/python bench/thread_handoff.py [--calls 3000]

redis-py is synchronous, so the Redis store runs every call in a thread
(`trio.to_thread.run_sync`). On a VM whose context switches are expensive the
hop itself is a large part of a flush. Four loops, each timed by the process's
CPU (user + system, every thread) and wall clock, per call:

- `to_thread`: `trio.to_thread.run_sync(lambda: None)`, the bare hop;
- `own thread`: the same round trip through one long-lived thread (a queue in,
  `TrioToken.run_sync_soon` back), what a dedicated flusher thread would cost;
- `flush (thread)`: three changed presences written and `RedisStore.flush()`
  awaited with the flush in a worker thread (`direct_flush=False`), on a
  redis-server of its own (the thread hop, the pipeline with the flush script,
  and the store's listener thread reading its own change message);
- `flush (direct)`: the same with the flush sent from the trio thread
  (presenced/store/redis_direct.py, the default for redis:// URLs);
- `flush hop only`: the same writes with the bare hop instead of the flush.
"""

from __future__ import annotations

import argparse
import queue
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from presenced.model import Position, Presence, PresenceWrite  # noqa: E402
from presenced.store.redis_config import RedisStoreConfig  # noqa: E402
from presenced.store.redis_store import RedisStore  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed(name: str, calls: int, one: Callable[[int], Awaitable[None]]) -> None:
    for i in range(min(200, calls)):  # warm-up: threads started, scripts loaded
        await one(i)
    cpu0, wall0 = cpu_s(), time.perf_counter()
    for i in range(calls):
        await one(i)
    cpu = (cpu_s() - cpu0) / calls * 1e6
    wall = (time.perf_counter() - wall0) / calls * 1e6
    print(f"{name:<16} {cpu:7.0f} µs CPU {wall:7.0f} µs wall  per call")


async def main(calls: int, redis_url: str) -> None:
    async def hop(_: int) -> None:
        await trio.to_thread.run_sync(lambda: None)

    await timed("to_thread", calls, hop)

    token = trio.lowlevel.current_trio_token()
    jobs: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            job[0]()
            token.run_sync_soon(job[1].set)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    async def own(_: int) -> None:
        done = trio.Event()
        jobs.put((lambda: None, done))
        await done.wait()

    await timed("own thread", calls, own)
    jobs.put(None)

    for direct in (False, True):
        await flushes(calls, redis_url, direct)


async def flushes(calls: int, redis_url: str, direct: bool) -> None:
    # Flushes only when asked: no timer in the way.
    store = RedisStore(redis_url, RedisStoreConfig(flush_interval_s=3600, flush_min_gap_s=3600,
                                                   direct_flush=direct))

    def write_three(i: int) -> None:
        for k in range(3):
            store.write(PresenceWrite(
                Presence(f"0x{k:040x}", True, Position("main", i % 100, k), 2000 + i), True))

    async def flush(i: int) -> None:
        write_three(i)
        await store.flush()

    async def writes_and_hop(i: int) -> None:
        write_three(i)
        await trio.to_thread.run_sync(lambda: None)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, lambda events: None)
        await timed("flush (direct)" if direct else "flush (thread)", calls, flush)
        if not direct:
            await timed("flush hop only", calls, writes_and_hop)
        nursery.cancel_scope.cancel()
    await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    print(describe())
    with RedisServer() as server:
        trio.run(main, args.calls, server.url)
