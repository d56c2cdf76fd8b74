"""The realistic run: as many users as one process may hold, at the real pace.

Skewed graph with 20 friends on average, half of the users online and every
online user subscribed, a heartbeat every 30 s (80 % of them moves), churn
(2 disconnects per user and hour, back after ~10 s), Redis store, one
worker. It gives resident memory per connected user (growth from the idle
server with the graph loaded), notify latency as the generator measured it,
the server's CPU at that load, and a py-spy profile taken after the window.
The TypeScript peer runs the same load (in memory: it has no Redis store).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.suite import cpu, loadrun, profile
from bench.suite.loadrun import RunResult, RunSpec
from bench.suite.procs import Server
from bench.suite.scales import Scale
from bench.suite.simload import Load


def load_for(scale: Scale) -> Load:
    return Load(users=2 * scale.realistic_online, subscribe_fraction=1.0, speed=1.0,
                churn=2.0, ramp=scale.ramp, processes=scale.realistic_processes, seed=2)


def run(scale: Scale, log: Callable[[str], None], profile_path: Path | None = None) -> dict:
    def take_profile(server: Server, seconds: float) -> dict:
        log(f"realistic: py-spy profile of the server for {seconds:.0f} s")
        return profile.record(server.worker_pids()[0], seconds, keep=profile_path)

    def one(config: str) -> dict:
        peer = config == "tspeer"
        spec = RunSpec(f"realistic-{config}", load_for(scale),
                       store="embedded" if peer else "redis", workers=1,
                       window_s=scale.realistic_window_s, warmup_s=10.0,
                       server="tspeer" if peer else "presenced",
                       after=None if peer else take_profile,
                       after_s=0.0 if peer else scale.profile_s)
        return summarize(loadrun.run(spec, log))

    return cpu.each(("presenced-redis", "tspeer"), one)


def summarize(run: RunResult) -> dict:
    w = run.window
    s = run.summary
    connected = w.sessions
    per_user = (w.rss_end - run.rss_idle) / connected if connected else None
    return {
        "load": run.spec.load.describe(),
        "server": run.spec.server,
        "connected": connected,
        "ramp_s": round(run.ramp_s, 1),
        "rss_idle_mib": round(run.rss_idle / 2**20, 1),
        "rss_loaded_mib": round(w.rss_end / 2**20, 1),
        "rss_per_user_kib": round(per_user / 1024, 2) if per_user else None,
        "window": w.as_dict(),
        "server_cpu_per_delivered_raw_us": round(1e6 * w.server_cpu_s / w.delivered, 1)
        if w.delivered else None,
        "notify_latency_ms": s.get("notify_latency_ms"),
        "online_latency_ms": s.get("online_latency_ms"),
        "offline_latency_ms": s.get("offline_latency_ms"),
        "login_ms": s.get("login_ms"),
        "simulate": {k: s.get(k) for k in (
            "ok", "errors", "error_breakdown", "error_samples", "undelivered",
            "checked_subscribers", "checked_friendships", "logins", "churn_disconnects",
            "heartbeats_per_s", "updates_per_s", "unmatched_updates", "workers")},
        "profile": run.during,
    }
