"""50,000 users on this one machine: `presenced serve --workers 3` with the Redis store.

Heartbeats every 30 s, everyone online subscribed, churn 2 per user and
hour; the generator runs on the same machine, spread over processes (each
under the 20,000 open-files limit) and 127.0.0.x source addresses. Reported:
notify latency p50/p99 as the generator measured it, errors, undelivered
updates, and each server process's connections and open files at the end of
the window (the kernel spreads connections over the workers).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import cpu, loadrun
from bench.suite.loadrun import RunSpec
from bench.suite.scales import Scale
from bench.suite.simload import Load

WORKERS = 3
FILE_LIMIT = 20_000


def load_for(scale: Scale) -> Load:
    return Load(users=2 * scale.scale_online, subscribe_fraction=1.0, speed=1.0, churn=2.0,
                ramp=scale.scale_ramp, processes=scale.scale_processes, seed=6)


def run(scale: Scale, log: Callable[[str], None]) -> dict:
    result = loadrun.run(RunSpec(f"scale-{scale.scale_online}", load_for(scale), "redis",
                                 WORKERS, scale.scale_window_s, 10.0), log)
    s = result.summary
    w = result.window
    load = load_for(scale)
    return {
        "workers": WORKERS,
        "online": load.online,
        # With churn, a user is between sessions for `reconnect_delay` after
        # each disconnect: that many are expected to be away at any moment.
        "between_sessions": round(load.online * load.churn / 3600.0 * load.reconnect_delay),
        "connected": w.sessions,
        "open_files": result.open_files,
        "file_limit": FILE_LIMIT,
        "notify_latency_ms": s.get("notify_latency_ms"),
        "errors": s.get("errors"),
        "error_breakdown": s.get("error_breakdown"),
        "undelivered": s.get("undelivered"),
        "checked_friendships": s.get("checked_friendships"),
        "server_cpu_percent": round(w.server_cpu_percent, 1),
        "redis_cpu_percent": round(100 * w.redis_cpu_s / w.seconds, 1),
        "generator_cpu_percent": round(100 * w.generator_cpu_s / w.seconds, 1),
        "run": cpu.describe_run(result),
    }
