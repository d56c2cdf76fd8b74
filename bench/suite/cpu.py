"""Server CPU per heartbeat and per delivered update, for one server configuration.

Three runs with the same users and graph, none with churn (logins cost
milliseconds each and are measured on their own):

1. nobody subscribes (`--subscribe-fraction 0`), heartbeats at a high rate:
   server CPU ÷ heartbeats accepted is the cost of a heartbeat (with the
   Redis store, the batched Redis write in the server's own threads
   included; Redis's own CPU is reported beside it);
2. nobody subscribes, heartbeats at the update run's rate: the server's CPU
   at that rate without any fan-out. The difference between runs 1 and 2
   also gives the marginal cost of a heartbeat, free of what holding the
   connections costs whatever the rate;
3. everyone online subscribes, same rate as 2: (CPU of run 3 − CPU of run 2,
   scaled to run 3's heartbeats) ÷ updates delivered is the cost of a
   delivered update (the stream item, its share of the fan-out, the client's
   ACK). This is the baseline's arithmetic too (its two phases share one
   rate), so the ratio compares like with like.
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


def quiet_load(scale: Scale) -> Load:
    return Load(users=scale.cpu_users, subscribe_fraction=0.0, speed=scale.update_speed,
                churn=0.0, ramp=scale.ramp, processes=2)


def update_load(scale: Scale, speed: float | None = None, online: int | None = None) -> Load:
    users = 2 * online if online else scale.cpu_users
    return Load(users=users, subscribe_fraction=1.0, speed=speed or scale.update_speed,
                churn=0.0, ramp=scale.ramp, processes=2)


def measure(store: str, workers: int, scale: Scale, log: Callable[[str], None]) -> dict:
    name = f"{store}-w{workers}"
    beats = loadrun.run(RunSpec(f"{name}-heartbeats", heartbeat_load(scale), store, workers,
                                scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE), log)
    quiet = loadrun.run(RunSpec(f"{name}-heartbeats-slow", quiet_load(scale), store, workers,
                                scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE), log)
    updates = loadrun.run(RunSpec(f"{name}-updates", update_load(scale), store, workers,
                                  scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE), log)
    return summarize(beats, quiet, updates)


def per_heartbeat_us(run: RunResult) -> tuple[float | None, float | None]:
    w = run.window
    if not w.heartbeats:
        return None, None
    return 1e6 * w.server_cpu_s / w.heartbeats, 1e6 * w.redis_cpu_s / w.heartbeats


def per_update_us(run: RunResult, quiet: RunResult) -> tuple[float | None, ...]:
    """(server µs per update, Redis µs per update, raw server µs per update)."""
    w, q = run.window, quiet.window
    if not w.delivered or not q.heartbeats:
        return None, None, None
    # The quiet run's CPU, scaled to this run's heartbeats (the rates match
    # to within the generator's jitter).
    without_fanout = q.server_cpu_s * w.heartbeats / q.heartbeats
    server = 1e6 * (w.server_cpu_s - without_fanout) / w.delivered
    return server, 1e6 * w.redis_cpu_s / w.delivered, 1e6 * w.server_cpu_s / w.delivered


def marginal_heartbeat_us(beats: RunResult, quiet: RunResult) -> float | None:
    """Extra CPU per extra heartbeat between the fast and the slow run."""
    a, b = beats.window, quiet.window
    extra = a.heartbeats / a.seconds - b.heartbeats / b.seconds
    if extra <= 0:
        return None
    return 1e6 * (a.server_cpu_s / a.seconds - b.server_cpu_s / b.seconds) / extra


def summarize(beats: RunResult, quiet: RunResult, updates: RunResult) -> dict:
    hb_us, hb_redis_us = per_heartbeat_us(beats)
    quiet_us, _ = per_heartbeat_us(quiet)
    up_us, up_redis_us, up_raw_us = per_update_us(updates, quiet)
    return {
        "cpu_per_heartbeat_us": _r(hb_us),
        "redis_cpu_per_heartbeat_us": _r(hb_redis_us),
        "cpu_per_heartbeat_slow_us": _r(quiet_us),
        "cpu_per_heartbeat_marginal_us": _r(marginal_heartbeat_us(beats, quiet)),
        "cpu_per_update_us": _r(up_us),
        "redis_cpu_per_update_us": _r(up_redis_us),
        "server_cpu_per_update_raw_us": _r(up_raw_us),
        "heartbeat_run": describe_run(beats),
        "quiet_run": describe_run(quiet),
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
