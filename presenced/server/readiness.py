"""Whether the daemon should be sent traffic: the reasons `/readyz` gives.

One pure function, so the admin endpoint, the metrics and the start-up
timeout message all say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

# How the start-up wait is described, by store.
WAITING_FOR = {"redis": "Redis"}


@dataclass(frozen=True, slots=True)
class Phase:
    """Where the daemon is in its life, as the hub knows it."""

    # The store has loaded and the hub's tasks run.
    started: bool
    # Shutdown began: load balancers should stop sending new clients.
    stopping: bool
    # The store can be reached (always True for the embedded store).
    store_healthy: bool
    # "memory" or "redis".
    store: str


def not_ready_reasons(phase: Phase) -> list[str]:
    """Why the daemon is not ready, most important first; empty when ready."""
    if phase.stopping:
        return ["shutting down"]
    if not phase.started:
        return [starting_reason(phase.store)]
    if not phase.store_healthy:
        return ["store unavailable"]
    return []


def starting_reason(store: str) -> str:
    waiting = WAITING_FOR.get(store)
    return f"starting: waiting for {waiting}" if waiting else "starting"
