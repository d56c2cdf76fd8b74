"""Counters the server keeps as plain integers.

They are bumped on hot paths (every delivered update), so they are not
prometheus-client objects with a lock each; the admin endpoint turns them
into Prometheus metrics when scraped.
"""

from __future__ import annotations

from collections import Counter

# Histogram lives in presenced.histogram (the stores use it too); re-exported
# here for existing users.
from presenced.histogram import LATENCY_BUCKETS, Histogram

__all__ = ["LATENCY_BUCKETS", "Histogram", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.connections_opened = 0
        # Times the accept loop waited at an admission cap, and for how long (seconds), by
        # cap ("sockets", "awaiting_login"): meanwhile clients queue in the listen backlog.
        self.accept_pauses: Counter[str] = Counter()
        self.accept_paused_s: Counter[str] = Counter()
        # (result, reason): ("ok", ""), ("failed", "bad-signature"), ("failed", "timeout")…
        self.logins: Counter[tuple[str, str]] = Counter()
        # Why connections ended: "client", "protocol-error", "slow-consumer"…
        self.disconnects: Counter[str] = Counter()
        # Inbound input refused: "protocol-error", "oversized", "invalid-payload"…
        self.bad_input: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.updates_delivered = 0
        self.updates_dropped = 0
        self.stream_items_sent = 0
        self.handler_errors = 0
        # Background tasks (ticker, sweeper, keepalive) that failed and were restarted.
        self.task_failures: Counter[str] = Counter()
        # Admin requests refused as coming from a browser: "host", "origin", "content-type".
        self.admin_refused: Counter[str] = Counter()
        self.notify_latency = Histogram()
