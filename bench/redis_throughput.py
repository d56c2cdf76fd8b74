"""Measure the Redis store: write throughput, cross-instance latency, resync cost.

    .venv/bin/python bench/redis_throughput.py            # everything (~1-2 min)
    .venv/bin/python bench/redis_throughput.py --only writes --duration 20

Every part starts its own redis-server (free loopback port, no persistence)
and never touches another Redis. Parts:

- writes:  heartbeats/s written through the batched path: many `write()`
           calls on one RedisStore, flushed by its real flusher.
- latency: heartbeat on instance 1 -> update received by a subscriber on
           instance 2; two real `presenced serve` processes, real clients.
- resync:  cold start and a full resync with N users online (default 100k),
           the periodic audit, and how long the trio thread stalls.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from presenced.auth.identity import Identity  # noqa: E402
from presenced.client import PresenceClient  # noqa: E402
from presenced.engine import EngineConfig, PresenceEngine  # noqa: E402
from presenced.histogram import Histogram  # noqa: E402
from presenced.model import Position, Presence, PresenceWrite  # noqa: E402
from presenced.server.config import ServerConfig  # noqa: E402
from presenced.store.base import FriendshipChanged, Resync  # noqa: E402
from presenced.store.redis_store import RedisStore  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def machine_info() -> None:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)

    print("== machine")
    print(f"  cpu: {cpu} x {os.cpu_count()}   mem: {mem}   {platform.platform()}")
    print(f"  python {platform.python_version()}, trio {trio.__version__}, redis-py "
          f"{redis.__version__} (hiredis: {HIREDIS_AVAILABLE}), "
          f"{server.stdout.strip().split(' sha')[0]}")
    print(f"  load average: {os.getloadavg()}")


def tune_gc() -> None:
    # As `presenced serve` does (presenced.server.runtime.tune_gc).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# ------------------------------------------------------------------- writes


class RecordingHistogram(Histogram):
    """Keeps every value too, for exact percentiles."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)
        super().observe(value)


async def bench_writes(users: int, duration: float, changed_share: float,
                       flush_interval: float, rate: float | None) -> None:
    what = f"{rate:,.0f} heartbeats/s offered" if rate else "as fast as possible"
    print(f"== writes ({what}): {users:,} users cycled for {duration:.0f} s, "
          f"{changed_share:.0%} of writes are changes, flush every {flush_interval * 1000:.0f} ms")
    with RedisServer() as server:
        config = ServerConfig(redis_flush_interval_s=flush_interval,
                              redis_resync_interval_s=30.0)
        store = RedisStore(server.url, config.redis_store_config(), instance_id="bench")
        recorder = RecordingHistogram()
        store.stats.flush_latency = recorder
        latencies = recorder.values
        addresses = [f"0x{i:040x}" for i in range(users)]
        positions = [Position("bench", i % 100, 0) for i in range(10)]
        rng = random.Random(1)
        issued = 0
        burst = 500 if rate else 2000
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run, lambda events: None)
            start = time.perf_counter()
            flushed0 = store.stats.writes_flushed
            i = 0
            deadline = start + duration
            while time.perf_counter() < deadline:
                now = int(time.time() * 1000)
                # A burst, then yield: the flusher and its thread get their turn,
                # as they would between a server's network reads.
                for _ in range(burst):
                    address = addresses[i % users]
                    i += 1
                    store.write(PresenceWrite(
                        Presence(address, True, positions[i % 10], now),
                        rng.random() < changed_share))
                issued += burst
                if rate:
                    ahead = start + issued / rate - time.perf_counter()
                    await trio.sleep(max(0.0, ahead))
                else:
                    await trio.sleep(0)
                    # Never run ahead of Redis by more than one round of users.
                    while store.stats.pending_writes >= users:
                        await trio.sleep(0.001)
            while store.stats.pending_writes:
                await trio.sleep(0.01)
            elapsed = time.perf_counter() - start
            flushed = store.stats.writes_flushed - flushed0
            nursery.cancel_scope.cancel()
        with server.client() as r:
            info = r.info("memory")
        await store.aclose()
    ms = [v * 1000 for v in latencies]
    print(f"  issued {issued / elapsed:,.0f} write() calls/s; "
          f"flushed {flushed / elapsed:,.0f} heartbeats/s to Redis "
          f"({flushed:,} in {elapsed:.1f} s, {store.stats.flushes} flushes, "
          f"{flushed / max(1, store.stats.flushes):,.0f} per flush)")
    print(f"  flush (one pipeline) latency: p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
          f"max {max(ms):.1f} ms")
    print(f"  Redis used_memory {info['used_memory_human']} for {users:,} users")


# ------------------------------------------------------------------ latency


async def bench_latency(samples: int, senders: int, flush_interval: float) -> None:
    print(f"== cross-instance notify latency: {samples} samples, {senders} senders on "
          f"instance 1, one subscriber on instance 2, flush every "
          f"{flush_interval * 1000:.0f} ms")
    ids = [Identity.generate(random.Random(7000 + i)) for i in range(senders + 1)]
    watcher, sending = ids[0], ids[1:]
    with RedisServer() as server:
        store = RedisStore(server.url, ServerConfig().redis_store_config())
        async with trio.open_nursery() as n:
            await n.start(store.run, lambda events: None)
            await store.add_friendships([(watcher.address, s.address) for s in sending])
            n.cancel_scope.cancel()
        await store.aclose(leave=False)
        args = ("--redis-url", server.url, "--redis-flush-interval", str(flush_interval),
                "--heartbeat-rate", "100", "--heartbeat-burst", "100", "--log-level", "warning")
        with Daemon(*args) as one, Daemon(*args) as two:
            sent: dict[tuple[str, int], float] = {}
            got: list[float] = []
            done = trio.Event()
            async with PresenceClient.connect(two.url, watcher) as w:

                async def watch(task_status: trio.TaskStatus[None]) -> None:
                    async with w.subscribe() as sub:
                        task_status.started()
                        async for batch in sub:
                            now = time.monotonic()
                            for u in batch:
                                t = sent.pop((u.address, u.position.x), None)
                                if t is not None:
                                    got.append(now - t)
                            if len(got) >= samples:
                                done.set()

                async with trio.open_nursery() as n:
                    await n.start(watch)

                    async def send(who: Identity) -> None:
                        async with PresenceClient.connect(one.url, who) as c:
                            await c.heartbeat("bench", 0, 0)
                            await trio.sleep(1.0)  # let "came online" pass first
                            x = 0
                            while not done.is_set():
                                x += 1
                                sent[(who.address, x)] = time.monotonic()
                                await c.heartbeat("bench", x, 0)
                                # Spread over the flush interval, ~4 per second.
                                await trio.sleep(0.2 + random.random() * 0.1)

                    for who in sending:
                        n.start_soon(send, who)
                    with trio.fail_after(120):
                        await done.wait()
                    n.cancel_scope.cancel()
    ms = [v * 1000 for v in got]
    print(f"  p50 {pct(ms, 50):.1f} ms, p90 {pct(ms, 90):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
          f"max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms (n={len(ms)})")


# ------------------------------------------------------------------- resync


class Stall:
    """The longest gap the trio thread could not run a 1 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await trio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now


async def bench_resync(users: int) -> None:
    print(f"== resync with {users:,} users online")
    with RedisServer() as server:
        config = ServerConfig(redis_resync_interval_s=3600)
        writer = RedisStore(server.url, config.redis_store_config(), instance_id="writer")
        now = int(time.time() * 1000)
        async with trio.open_nursery() as n:
            await n.start(writer.run, lambda events: None)
            for i in range(users):
                writer.write(PresenceWrite(
                    Presence(f"0x{i:040x}", True, Position(f"realm-{i % 50}", i % 300, 0), now),
                    True))
            t = time.perf_counter()
            await writer.flush()
            print(f"  populate: {users:,} writes flushed in {time.perf_counter() - t:.2f} s")
            # A cold start: a new instance whose engine mirrors everyone.
            engine = PresenceEngine(EngineConfig(), lambda op: None)
            applied: list[float] = []

            def sink(events: list) -> None:
                t0 = time.perf_counter()
                for e in events:
                    if isinstance(e, Resync):
                        engine.reconcile(e.records, int(time.time() * 1000))
                    elif isinstance(e, FriendshipChanged):
                        pass
                applied.append(time.perf_counter() - t0)

            stall = Stall()
            n.start_soon(stall.run)
            cold = RedisStore(server.url, config.redis_store_config(), instance_id="cold")
            t = time.perf_counter()
            await n.start(cold.run, sink)
            total = time.perf_counter() - t
            await trio.sleep(0.05)  # let the ticker see the stall
            print(f"  cold start: started after {total:.3f} s (snapshot read + decode in a "
                  f"thread {cold.stats.last_resync_seconds:.3f} s, engine.reconcile on the trio "
                  f"thread {applied[0]:.3f} s); {engine.online_count:,} users mirrored; "
                  f"worst trio stall {stall.worst * 1000:.0f} ms")
            # A full resync with everyone already mirrored (nothing changed).
            stall.worst = 0.0
            applied.clear()
            before = cold.stats.resyncs.total()
            t = time.perf_counter()
            cold.resync_now("bench")
            while cold.stats.resyncs.total() == before:
                await trio.sleep(0.001)
            total = time.perf_counter() - t
            await trio.sleep(0.05)
            print(f"  full resync (nothing changed): {total:.3f} s (read + decode "
                  f"{cold.stats.last_resync_seconds:.3f} s, reconcile {applied[0]:.3f} s); "
                  f"worst trio stall {stall.worst * 1000:.0f} ms")
            # The periodic check: an audit round trip, whatever the user count.
            stall.worst = 0.0
            audits = cold.stats.audits
            t = time.perf_counter()
            rounds = 50
            for _ in range(rounds):
                fence_audits = cold.stats.audits
                await cold._run_audit()
                while cold.stats.audits == fence_audits:
                    await trio.sleep(0.0005)
            each = (time.perf_counter() - t) / rounds
            await trio.sleep(0.05)
            print(f"  periodic audit (what runs every --redis-resync-interval): "
                  f"{each * 1000:.2f} ms per audit incl. the fence's trip through the feed "
                  f"({cold.stats.audits - audits} clean); "
                  f"worst trio stall {stall.worst * 1000:.0f} ms")
            t = time.perf_counter()
            snapshot = await cold.online_snapshot()
            print(f"  online_snapshot(): {len(snapshot):,} records in "
                  f"{time.perf_counter() - t:.3f} s")
            n.cancel_scope.cancel()
        with server.client() as r:
            mem = r.info("memory")["used_memory_human"]
        print(f"  Redis used_memory with {users:,} users: {mem}")
        await cold.aclose(leave=False)
        await writer.aclose(leave=False)


async def main(args: argparse.Namespace) -> None:
    if "writes" in args.only:
        for interval in args.flush_interval:
            for rate in args.rate:
                await bench_writes(args.write_users, args.duration, args.changed, interval,
                                   rate or None)
    if "latency" in args.only:
        for interval in args.flush_interval:
            await bench_latency(args.samples, args.senders, interval)
    if "resync" in args.only:
        await bench_resync(args.users)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=["writes", "latency", "resync"],
                        choices=["writes", "latency", "resync"])
    parser.add_argument("--duration", type=float, default=10.0, help="writes: seconds")
    parser.add_argument("--write-users", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.1,
                        help="writes: share of writes that are changes (published)")
    parser.add_argument("--flush-interval", type=float, nargs="+", default=[0.1])
    parser.add_argument("--rate", type=float, nargs="+", default=[0, 10_000, 30_000],
                        help="writes: offered heartbeats/s (0: as fast as possible)")
    parser.add_argument("--samples", type=int, default=400, help="latency: samples")
    parser.add_argument("--senders", type=int, default=10, help="latency: sending users")
    parser.add_argument("--users", type=int, default=100_000, help="resync: users online")
    args = parser.parse_args()
    tune_gc()
    machine_info()
    trio.run(main, args)
    print(f"  load average after: {os.getloadavg()}")
