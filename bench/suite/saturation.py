"""The highest delivery rate at which p99 notify latency stays within 100 ms.

The same update workload (Redis store, everyone online subscribed, no
churn) at rising `--speed`, for one configuration; it stops at the first
step that breaks 100 ms or has errors. On a machine whose two cores also
run the generator and Redis, this measures the whole machine's limit, not
the server's: a comparison of 1 and 2 workers is only indicative (see the
CPU per delivered update, which is not distorted).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import cpu, loadrun
from bench.suite.loadrun import FAST_SETTLE, RunSpec
from bench.suite.scales import Scale

P99_LIMIT_MS = 100.0


def search(workers: int, scale: Scale, log: Callable[[str], None]) -> dict:
    steps = []
    best = None
    for speed in scale.saturation_speeds:
        load = cpu.update_load(scale, speed=speed, online=scale.saturation_online)
        result = loadrun.run(RunSpec(f"saturation-w{workers}-x{speed:g}", load, "redis",
                                     workers, scale.saturation_window_s, scale.cpu_warmup_s,
                                     FAST_SETTLE), log)
        w = result.window
        latency = result.summary.get("notify_latency_ms") or {}
        p99 = latency.get("p99")
        errors = result.summary.get("errors", 0)
        step = {"speed": speed, "delivered_per_s": round(w.delivered / w.seconds, 1),
                "heartbeats_per_s": round(w.heartbeats / w.seconds, 1),
                "server_cpu_percent": round(w.server_cpu_percent, 1),
                "redis_cpu_percent": round(100 * w.redis_cpu_s / w.seconds, 1),
                "generator_cpu_percent": round(100 * w.generator_cpu_s / w.seconds, 1),
                "p50_ms": latency.get("p50"), "p99_ms": p99, "errors": errors}
        steps.append(step)
        log(f"  {step['delivered_per_s']:,.0f} deliveries/s, p99 {p99} ms, server "
            f"{step['server_cpu_percent']:.0f} %, errors {errors}")
        if p99 is None or p99 > P99_LIMIT_MS or errors:
            break
        best = step
    return {"workers": workers, "steps": steps,
            "max_delivered_per_s": best["delivered_per_s"] if best else None}
