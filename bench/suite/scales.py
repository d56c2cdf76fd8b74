"""How big each part of the benchmark is, in `--quick` and in the full run.

The CPU runs keep the server well below a core (per-update CPU measured at
saturation would be flattered by coalescing and distorted by the generator
competing for the same two cores); the realistic run, the idle connections
and the storm go as far as one process's file limit allows (19,000
connections: the limit is 20,000 open files per process and the server
needs a few for itself).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    # CPU runs (per heartbeat, per delivered update, workers): graph users
    # (half of them online).
    cpu_users: int
    # --speed of the fast heartbeat-only run (full: 2,000 heartbeats/s) and
    # of the slow one and the runs with subscribers (full: 400/s); the
    # heartbeat is due every 30 s / speed.
    heartbeat_speed: float
    update_speed: float
    cpu_window_s: float
    cpu_warmup_s: float
    # The realistic run (memory, latency, profile): heartbeats every 30 s.
    realistic_online: int
    realistic_window_s: float
    realistic_processes: int
    profile_s: float
    # Idle logged-in connections, keepalive only. The warm-up and the window
    # each cover a whole ping cycle (a ping after 30 s of silence, checked
    # every 5 s), so every connection is pinged in the window.
    idle_online: int
    idle_warmup_s: float
    idle_window_s: float
    # Logins.
    login_window_s: float
    # The reconnect storm: connected users, and the window around the drop
    # (which comes storm_after_s into it).
    storm_online: int
    storm_window_s: float
    # 50,000 users on --workers 3 (Redis, heartbeats every 30 s, everyone
    # subscribed): connected users, generator processes, window, login rate.
    scale_online: int
    scale_processes: int
    scale_window_s: float
    scale_ramp: float
    # Cold start and sweep.
    coldstart_users: int
    sweep_users: int
    sweep_repeats: int
    # Workers: --speed steps of the saturation search (empty: skipped).
    saturation_speeds: tuple[float, ...]
    saturation_online: int
    saturation_window_s: float
    ramp: float = 150.0
    storm_after_s: float = 3.0


QUICK = Scale(
    name="quick",
    cpu_users=4000, heartbeat_speed=15, update_speed=5, cpu_window_s=10, cpu_warmup_s=3,
    realistic_online=5000, realistic_window_s=20, realistic_processes=2, profile_s=10,
    idle_online=2000, idle_warmup_s=35, idle_window_s=35,
    login_window_s=10,
    storm_online=2000, storm_window_s=15,
    scale_online=6000, scale_processes=2, scale_window_s=20, scale_ramp=300,
    coldstart_users=100_000, sweep_users=100_000, sweep_repeats=1,
    saturation_speeds=(), saturation_online=2000, saturation_window_s=10,
)

FULL = Scale(
    name="full",
    cpu_users=8000, heartbeat_speed=15, update_speed=3, cpu_window_s=30, cpu_warmup_s=5,
    realistic_online=19_000, realistic_window_s=90, realistic_processes=4, profile_s=30,
    idle_online=19_000, idle_warmup_s=35, idle_window_s=65,
    login_window_s=20,
    storm_online=19_000, storm_window_s=30,
    scale_online=50_000, scale_processes=4, scale_window_s=60, scale_ramp=400,
    coldstart_users=100_000, sweep_users=100_000, sweep_repeats=3,
    saturation_speeds=(3, 5, 8, 12), saturation_online=3000, saturation_window_s=20,
)
