"""Heartbeats per second on one connection, and the server's CPU for each.

Starts `presenced serve` (embedded store, rate limit lifted), sends
PositionHeartbeat back to back from one client for a few seconds, each to a
new position, and reads the server's own CPU time from /proc.

    .venv/bin/python bench/heartbeat_roundtrip.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from presenced.auth.identity import Identity  # noqa: E402
from presenced.client import PresenceClient  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def drive(url: str, seconds: float, pid: int) -> None:
    async with PresenceClient.connect(url, Identity.generate(random.Random(5))) as client:
        await client.heartbeat("main", 0, 0)
        cpu0, n, start = cpu_seconds(pid), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            n += 1
            await client.heartbeat("main", n % 200 - 100, n // 200 % 200 - 100)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu0
    print(f"load: one connection, heartbeats back to back for {elapsed:.1f} s, each a move")
    print(f"result: {n / elapsed:,.0f} heartbeats/s (round trips, client-bound); server CPU "
          f"{cpu / n * 1e6:.0f} µs per heartbeat ({cpu / elapsed * 100:.0f} % of a core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(describe())
    with Daemon("--heartbeat-rate", "1000000", "--heartbeat-burst", "1000000",
                "--log-level", "warning") as daemon:
        trio.run(drive, daemon.url, args.seconds, daemon.proc.pid)


if __name__ == "__main__":
    main()
