"""One measured run: a server, `presenced simulate` against it, and a window.

    server starts ─ graph seeded (seed friendships --random) ─ RSS noted
    simulate starts ─ ramp (logins) ─ warm-up ─ measured window ─ simulate ends

The graph is seeded before the generator starts so that the server's
resident memory can be read with the graph loaded but nobody connected:
growth from there is what connected users cost.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.suite.procs import PYTHON, ROOT, Redis, Server
from bench.suite.simload import Load, Simulation
from bench.suite.window import Window, measure

# What the daemons of the CPU runs get on top of the defaults: a short
# offline grace, so that the generator's settle (grace + 2 s) is short; the
# runs have no churn, so nothing else depends on it.
FAST_SETTLE = ("--offline-grace", "1")


@dataclass
class RunSpec:
    name: str
    load: Load
    store: str = "embedded"  # or "redis"
    workers: int = 1
    window_s: float = 20.0
    warmup_s: float = 5.0
    server_args: tuple[str, ...] = ()
    # Called with (server, seconds) after the window while the load goes on
    # (a profile: not inside the window, whose CPU it would disturb).
    after: Callable[[Server, float], dict] | None = None
    after_s: float = 0.0


@dataclass
class RunResult:
    spec: RunSpec
    window: Window
    summary: dict
    rss_idle: int
    ramp_s: float
    during: dict

    @property
    def sessions(self) -> float:
        return self.window.sessions


def seed_graph(server: Server, load: Load) -> None:
    """The graph `presenced simulate` would import, sent before it starts."""
    cmd = [PYTHON, "-m", "presenced", "seed", "friendships", "--random",
           "--users", str(load.users), "--avg-friends", str(load.avg_friends),
           "--seed", str(load.seed), "--admin-url", server.admin_url(0)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"seeding the graph failed:\n{done.stderr[-2000:]}")


def run(spec: RunSpec, log: Callable[[str], None]) -> RunResult:
    redis = Redis().start() if spec.store == "redis" else None
    try:
        args = list(spec.server_args)
        if redis is not None:
            args += ["--redis-url", redis.url]
        with Server(*args, workers=spec.workers, log_name=spec.name) as server:
            seed_graph(server, spec.load)
            time.sleep(1.0)
            rss_idle = server.snapshot(with_metrics=False).rss
            load = spec.load
            # Long enough to cover the ramp the window waits for, the
            # warm-up and the window; the generator stops soon after.
            ramp_budget = load.online / load.ramp * 1.5 + 30
            load.duration = spec.warmup_s + spec.window_s + spec.after_s + 5
            log(f"{spec.name}: {load.describe()}; {spec.store} store, "
                f"{spec.workers} worker(s)")
            with Simulation(server, load, seed_graph=False) as sim:
                ramp_s = sim.wait_ramped(ramp_budget + 120)
                time.sleep(spec.warmup_s)
                window = measure(server, spec.window_s, redis=redis, generator_pid=sim.pid)
                during = spec.after(server, spec.after_s) if spec.after else {}
                summary = sim.result(timeout=load.duration + 180)
            problems = server.log_tail(5) if summary.get("errors") else ""
            if problems:
                summary["server_log_tail"] = problems
            return RunResult(spec, window, summary, rss_idle, ramp_s, during)
    finally:
        if redis is not None:
            redis.stop()
