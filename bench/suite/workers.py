"""`--workers 2`: capacity from CPU per delivered update, and the cross-process p99.

Capacity. Throughput by saturation needs the server to be the bottleneck,
but on a 2-core machine the generator and Redis need about as much CPU as
the server, so two workers never get two cores to themselves. Compared like
with like instead: one process on one core delivers 1 / (CPU per update with
1 worker), two processes on two cores 2 / (CPU per update with 2 workers),
a ratio of 2 × w1 / w2 (the update runs of `cpu`, Redis store).

Cross-process latency. With `--workers 2` the kernel picks the process of
each connection, so the generator cannot tell which deliveries crossed
processes. The same path is measured with two `presenced serve` instances
on one Redis (what each worker is: an independent instance sharing the
store), users assigned to them alternately: the simulator times the moves
whose sender and receiver are on different instances separately.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import cpu, loadrun
from bench.suite.loadrun import FAST_SETTLE, RunSpec
from bench.suite.scales import Scale


def run(runs: cpu.Runs, scale: Scale, log: Callable[[str], None]) -> dict:
    costs = cpu.update_part(runs, ("presenced-redis", "presenced-redis-w2"))
    out: dict = {"update": costs}
    w1 = costs["presenced-redis"].get("cpu_per_update_us")
    w2 = costs["presenced-redis-w2"].get("cpu_per_update_us")
    out["capacity_ratio"] = round(2 * w1 / w2, 2) if w1 and w2 else None
    try:
        result = loadrun.run(RunSpec("cross-process", cpu.update_load(scale), "redis", 1,
                                     scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE,
                                     instances=2), log)
        s = result.summary
        out["cross_process"] = {
            "notify_latency_ms": s.get("notify_latency_ms"),
            "cross_latency_ms": s.get("notify_cross_target_latency_ms"),
            "run": cpu.describe_run(result),
        }
    except Exception as e:
        out["cross_process"] = {"error": f"{type(e).__name__}: {e}"}
    return out
