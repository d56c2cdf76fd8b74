"""Server CPU per heartbeat and per delivered update, presenced and the TypeScript peer.

Three runs per server configuration, with the same users and graph and no
churn (logins cost milliseconds each and are measured on their own):

1. "fast": nobody subscribes, heartbeats at the high rate (full: 2,000/s):
   server CPU ÷ heartbeats accepted (with the Redis store, the batched Redis
   write in the server's own threads included; Redis's own CPU is reported
   beside it);
2. "slow": nobody subscribes, heartbeats at the update runs' rate (full:
   400/s): CPU per heartbeat at that rate, holding the connections included.
   Between runs 1 and 2, the marginal cost of a heartbeat (extra CPU per
   extra heartbeat), free of what holding the connections costs at any rate;
3. "updates": everyone online subscribes, same rate as 2: (CPU of run 3 −
   CPU of run 2 scaled to run 3's heartbeats) ÷ updates delivered is the cost
   of a delivered update (the stream item, its share of the fan-out, the
   client's ACK coming in).

Every run is made once per invocation and shared by the parts that use it
(`Runs`): `heartbeat` uses 1 and 2, `update` 2 and 3, `workers` 2 and 3 of
the Redis configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.suite import loadrun
from bench.suite.loadrun import FAST_SETTLE, RunResult, RunSpec
from bench.suite.scales import Scale
from bench.suite.simload import Load


@dataclass(frozen=True)
class Config:
    label: str
    server: str = "presenced"
    store: str = "embedded"
    workers: int = 1


CONFIGS = {
    "presenced-embedded": Config("presenced, embedded store"),
    "presenced-redis": Config("presenced, Redis store", store="redis"),
    "presenced-redis-w2": Config("presenced, Redis store, 2 workers", store="redis", workers=2),
    "tspeer": Config("TypeScript peer", server="tspeer"),
}
# What the heartbeat and update parts compare with the peer.
COMPARED = ("presenced-embedded", "presenced-redis")
PEER = "tspeer"


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


LOADS = {"fast": heartbeat_load, "slow": quiet_load, "updates": update_load}


class Runs:
    """Each (configuration, run) of this invocation, made once (a failure too)."""

    def __init__(self, scale: Scale, log: Callable[[str], None]) -> None:
        self.scale = scale
        self.log = log
        self._done: dict[tuple[str, str], RunResult | Exception] = {}

    def get(self, config: str, kind: str) -> RunResult:
        key = (config, kind)
        if key not in self._done:
            c = CONFIGS[config]
            spec = RunSpec(f"{config}-{kind}", LOADS[kind](self.scale), c.store, c.workers,
                           self.scale.cpu_window_s, self.scale.cpu_warmup_s, FAST_SETTLE,
                           server=c.server)
            try:
                self._done[key] = loadrun.run(spec, self.log)
            except Exception as e:  # remembered: the next part does not retry it
                self._done[key] = e
        value = self._done[key]
        if isinstance(value, Exception):
            raise value
        return value


def each(configs: tuple[str, ...], fn: Callable[[str], dict]) -> dict:
    """`fn` for each configuration; one that fails does not lose the others."""
    out = {}
    for config in configs:
        try:
            out[config] = fn(config)
        except Exception as e:
            out[config] = {"error": f"{type(e).__name__}: {e}"}
    return out


def heartbeat_part(runs: Runs) -> dict:
    def one(config: str) -> dict:
        fast, slow = runs.get(config, "fast"), runs.get(config, "slow")
        hb, redis = per_heartbeat_us(fast)
        hb_slow, redis_slow = per_heartbeat_us(slow)
        return {
            "label": CONFIGS[config].label,
            "cpu_per_heartbeat_us": _r(hb),
            "redis_cpu_per_heartbeat_us": _r(redis),
            "heartbeats_per_s": round(fast.window.heartbeats / fast.window.seconds, 1),
            "cpu_per_heartbeat_slow_us": _r(hb_slow),
            "redis_cpu_per_heartbeat_slow_us": _r(redis_slow),
            "heartbeats_per_s_slow": round(slow.window.heartbeats / slow.window.seconds, 1),
            "cpu_per_heartbeat_marginal_us": _r(marginal_heartbeat_us(fast, slow)),
            "fast_run": describe_run(fast),
            "slow_run": describe_run(slow),
        }

    return each((*COMPARED, PEER), one)


def update_part(runs: Runs, configs: tuple[str, ...] = (*COMPARED, PEER)) -> dict:
    def one(config: str) -> dict:
        slow, updates = runs.get(config, "slow"), runs.get(config, "updates")
        up, redis, raw = per_update_us(updates, slow)
        return {
            "label": CONFIGS[config].label,
            "cpu_per_update_us": _r(up),
            "redis_cpu_per_update_us": _r(redis),
            "server_cpu_per_update_raw_us": _r(raw),
            "delivered_per_s": round(updates.window.delivered / updates.window.seconds, 1),
            "update_run": describe_run(updates),
            "slow_run": describe_run(slow),
        }

    return each(configs, one)


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


def describe_run(run: RunResult) -> dict:
    s = run.summary
    return {
        "load": run.spec.load.describe(),
        "server": run.spec.server,
        "store": run.spec.store,
        "workers": run.spec.workers,
        "instances": run.spec.instances,
        "ramp_s": round(run.ramp_s, 1),
        "window": run.window.as_dict(),
        "open_files": run.open_files,
        "updates_per_item": round(run.window.delivered / run.window.stream_items, 2)
        if run.window.stream_items else None,
        "simulate": {
            "ok": s.get("ok"), "errors": s.get("errors"),
            "error_breakdown": s.get("error_breakdown"), "undelivered": s.get("undelivered"),
            "notify_latency_ms": s.get("notify_latency_ms"),
            "notify_cross_target_latency_ms": s.get("notify_cross_target_latency_ms"),
            "generator_workers": s.get("workers"),
        },
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
