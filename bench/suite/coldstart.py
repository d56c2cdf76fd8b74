"""Cold start: `presenced serve --redis-url` until /readyz answers 200, with a full Redis.

Redis holds N online users (owned by another instance) and a graph of N
users with 20 friends on average. The server is started as a fresh process
(interpreter start-up and imports included, as an operator would see it);
readiness means the snapshot is loaded into the engine and the listener is
open.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from bench.suite.populate import populate
from bench.suite.procs import Redis, Server

STARTS = 2


def run(users: int, log: Callable[[str], None]) -> dict:
    with Redis() as redis:
        log(f"cold start: populating Redis with {users:,} online users and their friendships")
        filled = populate(redis.url, users)
        with redis.client() as client:
            redis_mib = client.info("memory")["used_memory"] / 2**20
        starts = []
        for k in range(STARTS):
            server = Server("--redis-url", redis.url, log_name=f"coldstart-{k}")
            try:
                server.start(wait=False)
                ready_s = server.wait_ready(timeout=300)
                status = httpx.get(f"{server.admin_url()}/v1/status", timeout=30).json()
                starts.append({"ready_s": round(ready_s, 2),
                               "online_users_seen": status.get("online_users"),
                               "rss_mib": round(server.snapshot(False).rss / 2**20, 1)})
            finally:
                server.stop()
                try:
                    server.log_path.unlink()
                except OSError:
                    pass
    return {"populate": filled, "redis_used_mib": round(redis_mib, 1), "starts": starts,
            "ready_s": min(s["ready_s"] for s in starts)}
