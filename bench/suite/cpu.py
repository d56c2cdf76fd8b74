"""Server CPU per heartbeat and per delivered update, for one server configuration.

Two runs with the same users and graph:

1. nobody subscribes (`--subscribe-fraction 0`): server CPU ÷ heartbeats
   accepted is the cost of a heartbeat (with the Redis store, the batched
   Redis write in the server's own threads included; Redis's own CPU is
   reported beside it);
2. everyone online subscribes: (server CPU − heartbeats × that cost) ÷
   updates delivered is the cost of a delivered update (the stream item,
   its share of the fan-out, and the client's ACK).

Neither run has churn: logins cost milliseconds each and are measured on
their own.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import loadrun
from bench.suite.loadrun import FAST_SETTLE, RunResult, RunSpec
from bench.suite.scales import Scale
from bench.suite.simload import Load


def heartbeat_load(scale: Scale) -> Load:
    return Load(users=scale.cpu_users, subscribe_fraction=0.0, speed=scale.heartbeat_speed,
                churn=0.0, ramp=scale.ramp, processes=2)


def update_load(scale: Scale, speed: float | None = None, online: int | None = None) -> Load:
    users = 2 * online if online else scale.cpu_users
    return Load(users=users, subscribe_fraction=1.0, speed=speed or scale.update_speed,
                churn=0.0, ramp=scale.ramp, processes=2)


def measure(store: str, workers: int, scale: Scale, log: Callable[[str], None]) -> dict:
    name = f"{store}-w{workers}"
    beats = loadrun.run(RunSpec(f"{name}-heartbeats", heartbeat_load(scale), store, workers,
                                scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE), log)
    updates = loadrun.run(RunSpec(f"{name}-updates", update_load(scale), store, workers,
                                  scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE), log)
    return summarize(beats, updates)


def per_heartbeat_us(run: RunResult) -> tuple[float | None, float | None]:
    w = run.window
    if not w.heartbeats:
        return None, None
    return 1e6 * w.server_cpu_s / w.heartbeats, 1e6 * w.redis_cpu_s / w.heartbeats


def per_update_us(run: RunResult, heartbeat_us: float | None) -> tuple[float | None, ...]:
    """(server µs per update, Redis µs per update, raw server µs per update)."""
    w = run.window
    if not w.delivered or heartbeat_us is None:
        return None, None, None
    server = 1e6 * (w.server_cpu_s - w.heartbeats * heartbeat_us / 1e6) / w.delivered
    return server, 1e6 * w.redis_cpu_s / w.delivered, 1e6 * w.server_cpu_s / w.delivered


def summarize(beats: RunResult, updates: RunResult) -> dict:
    hb_us, hb_redis_us = per_heartbeat_us(beats)
    up_us, up_redis_us, up_raw_us = per_update_us(updates, hb_us)
    return {
        "cpu_per_heartbeat_us": _r(hb_us),
        "redis_cpu_per_heartbeat_us": _r(hb_redis_us),
        "cpu_per_update_us": _r(up_us),
        "redis_cpu_per_update_us": _r(up_redis_us),
        "server_cpu_per_update_raw_us": _r(up_raw_us),
        "heartbeat_run": describe_run(beats),
        "update_run": describe_run(updates),
    }


def describe_run(run: RunResult) -> dict:
    s = run.summary
    return {
        "load": run.spec.load.describe(),
        "store": run.spec.store,
        "workers": run.spec.workers,
        "ramp_s": round(run.ramp_s, 1),
        "window": run.window.as_dict(),
        "updates_per_item": round(run.window.delivered / run.window.stream_items, 2)
        if run.window.stream_items else None,
        "simulate": {
            "ok": s.get("ok"), "errors": s.get("errors"),
            "error_breakdown": s.get("error_breakdown"), "undelivered": s.get("undelivered"),
            "notify_latency_ms": s.get("notify_latency_ms"),
            "generator_workers": s.get("workers"),
        },
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
