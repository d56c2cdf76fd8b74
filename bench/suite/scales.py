"""How big each part of the benchmark is, in `--quick` and in the full run.

The CPU runs keep the server well below a core (per-update CPU measured at
saturation would be flattered by coalescing and distorted by the generator
competing for the same two cores); the realistic run goes as far as one
process's file limit allows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    # CPU runs (per heartbeat, per delivered update, embedded/Redis, workers).
    cpu_users: int
    # --speed of the heartbeat-only run that gives the CPU per heartbeat; a
    # second heartbeat-only run at update_speed is what the update run's CPU
    # is compared with (see cpu.py).
    heartbeat_speed: float
    update_speed: float  # --speed of the runs with subscribers
    cpu_window_s: float
    cpu_warmup_s: float
    # The realistic run (memory, latency, profile): heartbeats every 30 s.
    realistic_online: int
    realistic_window_s: float
    realistic_processes: int
    profile_s: float
    # Logins.
    login_window_s: float
    # Cold start and sweep.
    coldstart_users: int
    sweep_users: int
    sweep_repeats: int
    # Workers: --speed steps of the saturation search (empty: skipped).
    saturation_speeds: tuple[float, ...]
    saturation_online: int
    saturation_window_s: float
    ramp: float = 150.0


QUICK = Scale(
    name="quick",
    cpu_users=4000, heartbeat_speed=15, update_speed=5, cpu_window_s=10, cpu_warmup_s=3,
    realistic_online=5000, realistic_window_s=20, realistic_processes=2, profile_s=10,
    login_window_s=10,
    coldstart_users=100_000, sweep_users=100_000, sweep_repeats=1,
    saturation_speeds=(), saturation_online=2000, saturation_window_s=10,
)

FULL = Scale(
    name="full",
    cpu_users=8000, heartbeat_speed=15, update_speed=3, cpu_window_s=30, cpu_warmup_s=5,
    realistic_online=19_000, realistic_window_s=90, realistic_processes=4, profile_s=30,
    login_window_s=20,
    coldstart_users=100_000, sweep_users=100_000, sweep_repeats=3,
    saturation_speeds=(3, 5, 8, 12), saturation_online=3000, saturation_window_s=20,
)
