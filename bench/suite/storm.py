"""The reconnect storm: every user of a loaded server dropped at once, back within 1 s.

The realistic load (everyone online subscribed, heartbeats every 30 s, no
churn) on one process; a few seconds into the window the generator drops
every connection at the same moment (the sockets close without a close
frame, as when a load balancer or a network path fails), and each user logs
in again after a delay drawn uniformly within 1 s, then subscribes again.

Measured by the generator: when every user was back (logged in, module
loaded), and every OFFLINE a friend received after the drop, for users who
came back within the server's offline grace (5 s, the default) — which must
never happen — and for the others. The server's CPU over the window is
reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suite import cpu, loadrun
from bench.suite.loadrun import RunSpec
from bench.suite.scales import Scale
from bench.suite.simload import Load

CONFIGS = ("presenced-embedded", "presenced-redis", "tspeer")
TARGET_BACK_S = 10.0
SPREAD_S = 1.0
WARMUP_S = 5.0


def load_for(scale: Scale) -> Load:
    processes = max(2, -(-scale.storm_online // 9000))
    return Load(users=2 * scale.storm_online, subscribe_fraction=1.0, speed=1.0, churn=0.0,
                ramp=scale.ramp, processes=processes, seed=5,
                storm_at=WARMUP_S + scale.storm_after_s, storm_spread=SPREAD_S)


def run(scale: Scale, log: Callable[[str], None]) -> dict:
    def one(config: str) -> dict:
        c = cpu.CONFIGS[config]
        # After the window the load goes on long enough for a server that
        # takes logins slowly to get everyone back (or to show it cannot).
        tail = max(30.0, scale.storm_online / 150)
        result = loadrun.run(RunSpec(f"storm-{config}", load_for(scale), c.store, c.workers,
                                     scale.storm_window_s, WARMUP_S, after_s=tail,
                                     server=c.server), log)
        s = result.summary
        w = result.window
        return {
            "label": c.label,
            "storm": s.get("storm"),
            "server_cpu_s": round(w.server_cpu_s, 2),
            "logins_in_window": w.logins,
            "errors": s.get("errors"),
            "error_breakdown": s.get("error_breakdown"),
            "undelivered": s.get("undelivered"),
            "run": cpu.describe_run(result),
        }

    return cpu.each(CONFIGS, one)
