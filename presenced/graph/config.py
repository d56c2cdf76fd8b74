"""The friends database source's settings and start-up error, without its heavy imports.

`presenced.server.config` builds these for every `serve`; psycopg and the social service's
Redis client load only when a friends database is configured (presenced.graph.source).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatabaseConfig", "SourceConfig", "SourceUnavailable"]


class SourceUnavailable(Exception):
    """The source could not load at start (the database or events unreachable)."""


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str
    connect_timeout_s: float = 5.0
    # One pass (a full read of a million rows takes seconds) may take this long.
    statement_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class SourceConfig:
    database: DatabaseConfig
    # Seconds between incremental passes (rows changed since the last one).
    reconcile_interval_s: float = 30.0
    # Seconds between full comparisons (every row).
    full_interval_s: float = 900.0
    # Rows changed up to this long before the last pass are read again: a
    # transaction open longer than this is found by the full comparison.
    overlap_s: float = 120.0
    # The social service's Redis (friendship.updates, block.updates).
    events_url: str | None = None
    events_timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
