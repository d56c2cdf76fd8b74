"""What holding logged-in idle connections costs: keepalive only.

Users log in (WebSocket, AuthChain, port, module) and then say nothing: no
heartbeat, no subscription, only the pongs to the server's pings (a ping
after 30 s of silence, the production default, on both servers). The
warm-up and the window each cover a whole ping cycle. Server CPU over the
window, as a share of one core, is scaled to 20,000 connections (one process
holds at most 19,000 here: 20,000 open files, a few the server's own): the
fixed cost of the server with nobody connected (its timers, the Redis
store's flusher and auditor), measured before the logins, plus the measured
cost per connection times 20,000.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import cpu, loadrun
from bench.suite.loadrun import RunSpec
from bench.suite.scales import Scale
from bench.suite.simload import Load

TARGET_CONNECTIONS = 20_000
# The idle server's own CPU: long enough for several of its timers' rounds.
BASELINE_S = 10.0
CONFIGS = ("presenced-embedded", "presenced-redis", "tspeer")


def load_for(scale: Scale) -> Load:
    processes = max(2, -(-scale.idle_online // 9000))
    return Load(users=2 * scale.idle_online, subscribe_fraction=0.0, heartbeats=False,
                churn=0.0, ramp=scale.ramp, processes=processes, seed=4)


def run(scale: Scale, log: Callable[[str], None]) -> dict:
    def one(config: str) -> dict:
        c = cpu.CONFIGS[config]
        result = loadrun.run(RunSpec(f"idle-{config}", load_for(scale), c.store, c.workers,
                                     scale.idle_window_s, scale.idle_warmup_s,
                                     server=c.server, baseline_s=BASELINE_S), log)
        w = result.window
        connections = w.sessions
        if connections < 0.95 * result.spec.load.online:
            raise RuntimeError(f"only {connections:,.0f} of {result.spec.load.online:,} users "
                               f"were connected at the end of the window (login errors: "
                               f"{result.summary.get('error_breakdown')})")
        percent = w.server_cpu_percent
        fixed = result.baseline_cpu_percent or 0.0
        per_connection = max(0.0, percent - fixed) / connections if connections else None
        return {
            "label": c.label,
            "connections": connections,
            "cpu_percent": round(percent, 2),
            "cpu_percent_nobody_connected": round(fixed, 2),
            "cpu_percent_per_20k": round(fixed + per_connection * TARGET_CONNECTIONS, 2)
            if per_connection is not None else None,
            "redis_cpu_percent": round(100 * w.redis_cpu_s / w.seconds, 2),
            "rss_per_connection_kib": round((w.rss_end - result.rss_idle) / connections / 1024,
                                            2) if connections else None,
            "run": cpu.describe_run(result),
        }

    return cpu.each(CONFIGS, one)
