"""One measured run: a server, `presenced simulate` against it, and a window.

    server starts ─ graph seeded (seed friendships --random) ─ RSS noted
    simulate starts ─ ramp (logins) ─ warm-up ─ measured window ─ simulate ends

The graph is seeded before the generator starts so that the server's
resident memory can be read with the graph loaded but nobody connected:
growth from there is what connected users cost.

The server is `presenced serve` or the TypeScript peer (bench/tspeer), driven
the same way: same graph import, same generator, same window.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.suite.procs import PYTHON, ROOT, Group, Redis, Server, start_server
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
    server: str = "presenced"  # or "tspeer"
    # Seconds of the idle server (graph loaded, nobody connected) measured
    # before the generator starts: its fixed CPU cost.
    baseline_s: float = 0.0
    # Separate server processes sharing the Redis store, users spread over
    # them round-robin (the simulator then times the deliveries between them).
    instances: int = 1


@dataclass
class RunResult:
    spec: RunSpec
    window: Window
    summary: dict
    rss_idle: int
    ramp_s: float
    during: dict
    # File descriptors of each serving process at the end of the window.
    open_files: list[int]
    # Server CPU with nobody connected, % of a core (when spec.baseline_s).
    baseline_cpu_percent: float | None = None

    @property
    def sessions(self) -> float:
        return self.window.sessions


def seed_graph(server: Server | Group, load: Load) -> None:
    """The graph `presenced simulate` would import, sent before it starts."""
    cmd = [PYTHON, "-m", "presenced", "seed", "friendships", "--random",
           "--users", str(load.users), "--avg-friends", str(load.avg_friends),
           "--seed", str(load.seed), "--admin-url", server.admin_url(0)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"seeding the graph failed:\n{done.stderr[-2000:]}")


def run(spec: RunSpec, log: Callable[[str], None]) -> RunResult:
    redis = Redis().start() if spec.store == "redis" else None
    servers: list[Server] = []
    try:
        args = list(spec.server_args)
        if redis is not None:
            args += ["--redis-url", redis.url]
        for i in range(spec.instances):
            servers.append(start_server(spec.server, *args, workers=spec.workers,
                                        log_name=f"{spec.name}-{i}").start())
        server = servers[0] if len(servers) == 1 else Group(servers)
        seed_graph(server, spec.load)
        time.sleep(1.0)
        before = server.snapshot(with_metrics=False)
        rss_idle = before.rss
        baseline = None
        if spec.baseline_s:
            time.sleep(spec.baseline_s)
            after = server.snapshot(with_metrics=False)
            baseline = 100 * (after.cpu_s - before.cpu_s) / (after.t - before.t)
        load = spec.load
        # The generator's load phase starts once every user *tried* to log
        # in, the window once every user *is* logged in (retried logins come
        # later): its --duration is only an upper bound, and the load is
        # ended (SIGUSR1) once the window and what follows it are done.
        ramp_budget = load.online / load.ramp * 1.5 + 30
        load.duration = spec.warmup_s + spec.window_s + spec.after_s + ramp_budget + 60
        log(f"{spec.name}: {load.describe()}; {describe_server(spec)}")
        with Simulation(server, load, seed_graph=False, targets=[s.url for s in servers]) as sim:
            ramp_s = sim.wait_ramped(ramp_budget + 120)
            time.sleep(spec.warmup_s)
            # The latency simulate reports covers the window and what follows,
            # not the ramp's tail and the warm-up.
            sim.measure_from_now()
            window = measure(server, spec.window_s, redis=redis, generator_pid=sim.pid)
            files = server.open_files()
            if spec.after is not None:
                during = spec.after(server, spec.after_s)
            else:
                during = {}
                time.sleep(spec.after_s)
            sim.end_load()
            summary = sim.result(timeout=load.duration + 180)
        problems = server.log_tail(5) if summary.get("errors") else ""
        if problems:
            summary["server_log_tail"] = problems
        return RunResult(spec, window, summary, rss_idle, ramp_s, during, files, baseline)
    finally:
        for started in reversed(servers):
            started.__exit__(None, None, None)
        if redis is not None:
            redis.stop()


def describe_server(spec: RunSpec) -> str:
    if spec.server == "tspeer":
        return "TypeScript peer (@dcl/rpc over ws, memory)"
    text = f"presenced, {spec.store} store"
    if spec.workers > 1:
        text += f", {spec.workers} workers"
    if spec.instances > 1:
        text += f", {spec.instances} instances"
    return text
