"""A measurement window: the server's own CPU and counters between two snapshots."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.suite import metrics as m
from bench.suite.procs import Redis, Server, cpu_seconds, tree_cpu_seconds


@dataclass
class Window:
    seconds: float
    server_cpu_s: float
    redis_cpu_s: float
    generator_cpu_s: float
    heartbeats: float
    rejected: float
    delivered: float
    stream_items: float
    logins: float
    rss_start: int
    rss_end: int
    sessions: float
    gc: dict

    @property
    def server_cpu_percent(self) -> float:
        return 100.0 * self.server_cpu_s / self.seconds

    def per_heartbeat_us(self) -> float | None:
        return 1e6 * self.server_cpu_s / self.heartbeats if self.heartbeats else None

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 2),
            "server_cpu_s": round(self.server_cpu_s, 3),
            "server_cpu_percent": round(self.server_cpu_percent, 1),
            "redis_cpu_s": round(self.redis_cpu_s, 3),
            "generator_cpu_s": round(self.generator_cpu_s, 3),
            "heartbeats": self.heartbeats,
            "heartbeats_per_s": round(self.heartbeats / self.seconds, 1),
            "heartbeats_rejected": self.rejected,
            "delivered": self.delivered,
            "delivered_per_s": round(self.delivered / self.seconds, 1),
            "stream_items": self.stream_items,
            "logins": self.logins,
            "rss_start": self.rss_start,
            "rss_end": self.rss_end,
            "sessions": self.sessions,
            "gc": self.gc,
        }


def measure(server: Server, seconds: float, redis: Redis | None = None,
            generator_pid: int | None = None) -> Window:
    """Sleep through `seconds` of load and account for it."""
    gen0 = tree_cpu_seconds(generator_pid) if generator_pid else 0.0
    redis0 = cpu_seconds(redis.pid) if redis else 0.0
    a = server.snapshot()
    time.sleep(seconds)
    b = server.snapshot()
    redis1 = cpu_seconds(redis.pid) if redis else 0.0
    gen1 = tree_cpu_seconds(generator_pid) if generator_pid else 0.0
    gc_a, gc_b = m.gc_pauses(a.metrics), m.gc_pauses(b.metrics)
    gc = {gen: {k: round(gc_b[gen][k] - gc_a[gen][k], 4) for k in gc_b[gen]} for gen in gc_b}
    return Window(
        seconds=b.t - a.t,
        server_cpu_s=b.cpu_s - a.cpu_s,
        redis_cpu_s=redis1 - redis0,
        generator_cpu_s=gen1 - gen0,
        heartbeats=m.delta(b.metrics, a.metrics, m.heartbeats),
        rejected=m.delta(b.metrics, a.metrics, m.heartbeats_rejected),
        delivered=m.delta(b.metrics, a.metrics, m.delivered),
        stream_items=m.delta(b.metrics, a.metrics, m.stream_items),
        logins=m.delta(b.metrics, a.metrics, m.logins_ok),
        rss_start=a.rss,
        rss_end=b.rss,
        sessions=m.sessions(b.metrics),
        gc=gc,
    )
