"""Measure the friends database source (serve --friends-db) at a million friendships.

    .venv/bin/python bench/friends_db.py                  # everything (~3-5 min)
    .venv/bin/python bench/friends_db.py --friendships 200000 --only load,passes

Creates its own database on the PostgreSQL at 127.0.0.1:5432 (dropped at the
end unless --keep-db) with the social service's schema, filled with a
power-law graph (SocialGraph, random addresses) and some blocks, and its own
redis-server for the social service's events. Parts:

- load:     `presenced serve --friends-db` from spawn to ready, the load time
            it logs, and its memory against a daemon with nothing loaded.
- load_redis: the same with `--redis-url` (its own redis-server): the first
            instance fills Redis, a second one finds everything there.
- passes:   in-process, what one pass costs at this size: the incremental
            re-read (window with the overlap, nothing and 1,000 rows changed,
            1,000 event-touched pairs verified) and the full comparison
            (read and diff in the worker thread, then the decisions).
- stall:    heartbeat round trips on a daemon doing a full comparison every
            few seconds, against the same daemon between passes: how long the
            event loop waits for the worker thread (the GIL).
- converge: a friendship written to the database without an event, until a
            subscriber sees it, with a short reconcile interval.
- events:   a friendship written and announced on friendship.updates, until
            a subscriber sees it (accept and delete, 200 each).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.suite.procs import Redis, Server, rss_bytes  # noqa: E402
from presenced.auth.identity import Identity  # noqa: E402
from presenced.client import PresenceClient  # noqa: E402
from presenced.graph.config import DatabaseConfig  # noqa: E402
from presenced.graph.postgres import (  # noqa: E402
    Database,
    create_schema,
    seed_friendships,
)
from presenced.graph.reconcile import PassKind, Reconciler  # noqa: E402
from presenced.graph.social_events import FRIENDSHIP_CHANNEL  # noqa: E402
from presenced.socialgraph import SocialGraph  # noqa: E402
from presenced.v1 import presence_pb2 as pb  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(pct(values, 50) * 1000, 2),
            "p95_ms": round(pct(values, 95) * 1000, 2),
            "p99_ms": round(pct(values, 99) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
            "mean_ms": round(statistics.mean(values) * 1000, 2)}


# ------------------------------------------------------------------ the database


class BenchDatabase:
    def __init__(self, friendships: int, blocks: int, seed: int) -> None:
        self.name = "presenced_bench_" + secrets.token_hex(4)
        self.url = ADMIN_URL.rpartition("/")[0] + "/" + self.name
        self.friendships = friendships
        self.blocks = blocks
        self.seed = seed
        self.addresses: list[str] = []

    def create(self) -> dict[str, float]:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        users = max(1000, self.friendships // 10)
        t = time.perf_counter()
        graph = SocialGraph.generate(users, 2 * self.friendships / users, self.seed)
        rng = random.Random(self.seed)
        self.addresses = ["0x" + rng.randbytes(20).hex() for _ in range(users)]
        generated = time.perf_counter() - t
        a = self.addresses
        t = time.perf_counter()
        with psycopg.connect(self.url) as conn:
            create_schema(conn)
            # Old rows, as in a real deployment: outside every pass's window.
            result = seed_friendships(conn, ((a[i], a[j]) for i, j in graph.edges),
                                      updated_at=datetime(2026, 1, 1))
            blocks: set[tuple[int, int]] = set()
            while len(blocks) < self.blocks:
                i, j = rng.sample(range(users), 2)
                blocks.add((i, j))
            copy_blocks = "COPY blocks (id, blocker_address, blocked_address, blocked_at) " \
                          "FROM STDIN"
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_blocks) as copy:
                for i, j in blocks:
                    copy.write_row((uuid.uuid4(), a[i], a[j], datetime(2026, 1, 1)))
            conn.execute("ANALYZE")
        return {"users": users, "friendships": result.friendships, "blocks": self.blocks,
                "generate_s": round(generated, 2), "seed_s": round(time.perf_counter() - t, 2)}

    def drop(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def conn(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)


def befriend(conn: psycopg.Connection, a: str, b: str) -> None:
    updated = conn.execute(
        "UPDATE friendships SET is_active = true, updated_at = now() "
        "WHERE least(address_requester, address_requested) = least(%s, %s) "
        "AND greatest(address_requester, address_requested) = greatest(%s, %s)",
        (a, b, a, b)).rowcount
    if not updated:
        conn.execute("INSERT INTO friendships (id, address_requester, address_requested, "
                     "is_active) VALUES (gen_random_uuid(), %s, %s, true)", (a, b))


def unfriend(conn: psycopg.Connection, a: str, b: str) -> None:
    conn.execute("UPDATE friendships SET is_active = false, updated_at = now() "
                 "WHERE least(address_requester, address_requested) = least(%s, %s) "
                 "AND greatest(address_requester, address_requested) = greatest(%s, %s)",
                 (a, b, a, b))


# ----------------------------------------------------------------------- parts


def part_load(db: BenchDatabase) -> dict:
    with Server(log_name="empty") as empty:
        rss_empty = rss_bytes(empty.pid)
    # The last --log-level wins: info, for the load time the daemon logs.
    server = Server("--friends-db", db.url, "--log-level", "info", log_name="friendsdb")
    with server:
        ready_s = time.monotonic() - server.started_at
        rss = rss_bytes(server.pid)
        log = server.log_path.read_text(errors="replace")
    line = next(x for x in log.splitlines() if "loaded" in x and "friendships" in x)
    logged = float(line.rsplit(" in ", 1)[1].split()[0])
    return {"ready_s": round(ready_s, 2), "load_s_logged": logged, "log": line.split(": ", 1)[1],
            "rss_mib": round(rss / 2**20, 1), "rss_empty_mib": round(rss_empty / 2**20, 1),
            "bytes_per_friendship": round((rss - rss_empty) / db.friendships, 1)}


def part_load_redis(db: BenchDatabase) -> dict:
    """Start-up with the Redis store: the first instance fills Redis, a second finds it full."""
    out: dict = {}
    with Redis() as redis_server:
        for name in ("first", "second"):
            server = Server("--friends-db", db.url, "--redis-url", redis_server.url,
                            "--log-level", "info", log_name=f"redis-{name}")
            with server:
                out[f"{name}_ready_s"] = round(time.monotonic() - server.started_at, 2)
                log = server.log_path.read_text(errors="replace")
            line = next(x for x in log.splitlines() if "loaded" in x and "friendships" in x)
            out[f"{name}_load_s_logged"] = float(line.rsplit(" in ", 1)[1].split()[0])
        out["redis_used_mib"] = round(
            redis_server.client().info("memory")["used_memory"] / 2**20, 1)
    return out


def part_passes(db: BenchDatabase, repeat: int) -> dict:
    database = Database(DatabaseConfig(db.url))
    rec = Reconciler(timedelta(seconds=120))
    t = time.perf_counter()
    first = database.read_full(rec.ids, None)
    load_read = time.perf_counter() - t
    assert first.friendships is not None
    rec.loaded(first.watermark, first.friendships, first.blocks)
    out: dict = {"initial_read_s": round(load_read, 2)}

    def incremental() -> float:
        plan = rec.plan(PassKind.INCREMENTAL)
        t = time.perf_counter()
        result = database.read_changes(plan)
        rec.finish_incremental(plan, result)
        return time.perf_counter() - t

    out["incremental_idle_ms"] = [round(incremental() * 1000, 1) for _ in range(repeat)]
    with db.conn() as conn:
        conn.execute("UPDATE friendships SET updated_at = now() WHERE id IN "
                     "(SELECT id FROM friendships LIMIT 1000)")
    out["incremental_1000_changed_ms"] = [round(incremental() * 1000, 1) for _ in range(repeat)]
    rng = random.Random(1)
    a = db.addresses
    from presenced.graph.social_events import FriendshipWanted

    def touch() -> None:
        for _ in range(1000):
            x, y = sorted(rng.sample(a, 2))
            rec.on_event(FriendshipWanted(x, y, True))

    samples = []
    for _ in range(repeat):
        touch()
        samples.append(round(incremental() * 1000, 1))
    out["incremental_1000_verified_ms"] = samples
    fulls, decide = [], []
    for _ in range(repeat):
        plan = rec.plan(PassKind.FULL)
        t = time.perf_counter()
        result = database.read_full(rec.ids, rec.friendships.base)
        t2 = time.perf_counter()
        rec.finish_full(plan, result)
        fulls.append(round(t2 - t, 2))
        decide.append(round((time.perf_counter() - t2) * 1000, 1))
    out["full_read_and_diff_s"] = fulls
    out["full_decide_on_trio_ms"] = decide
    with db.conn() as conn:
        plan_text = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM friendships "
            "WHERE updated_at >= localtimestamp - interval '120 seconds'").fetchone()[0]
    out["postgres_window_scan_ms"] = round(plan_text[0]["Execution Time"], 1)
    database.close()
    return out


async def heartbeat_rtts(url: str, seconds: float) -> list[float]:
    rtts: list[float] = []
    async with PresenceClient.connect(url, Identity.generate(random.Random(99))) as client:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            t = time.perf_counter()
            await client.heartbeat("main", 1, len(rtts) % 100)
            rtts.append(time.perf_counter() - t)
            await trio.sleep(0.05)
    return rtts


def part_stall(db: BenchDatabase, seconds: float) -> dict:
    args = ("--friends-db", db.url, "--heartbeat-rate", "100", "--heartbeat-burst", "100")
    with Server(*args, "--friends-db-full-interval", "1e6", log_name="quiet") as quiet:
        base = trio.run(heartbeat_rtts, quiet.url, seconds)
    with Server(*args, "--friends-db-full-interval", "4",
                "--friends-db-reconcile-interval", "1", log_name="busy") as busy:
        loaded = trio.run(heartbeat_rtts, busy.url, seconds)
        metrics = httpx.get(busy.admin_url() + "/metrics").text
    fulls = [line for line in metrics.splitlines()
             if line.startswith('presenced_friends_db_passes_total{kind="full"}')]
    return {"without_passes": summary(base), "with_full_pass_every_4s": summary(loaded),
            "full_passes": fulls[0].split()[-1] if fulls else "?"}


async def _wait_for(updates, address: str, status: int) -> None:
    while True:
        batch = await updates.next_batch()
        if batch is None:
            raise RuntimeError("subscription ended")
        if any(u.address == address and u.status == status for u in batch):
            return


async def _subscriber_run(url: str, db: BenchDatabase, rounds: int,
                          events_url: str | None, timeout: float,
                          spread: float = 0.0) -> dict[str, list[float]]:
    """Friendship written (and announced, with `events_url`) until the subscriber sees it.

    `spread`: a random pause up to this long before each write, so that
    writes land anywhere between two passes (not right after one).
    """
    rng = random.Random(5)
    alice = Identity.generate(random.Random(1))
    bob = Identity.generate(random.Random(2))
    out: dict[str, list[float]] = {"accept": [], "delete": []}
    r = None
    if events_url is not None:
        import redis

        r = redis.Redis.from_url(events_url)
    with db.conn() as conn:
        async with PresenceClient.connect(url, bob) as b, PresenceClient.connect(url, alice) as a:
            await b.heartbeat("main", 1, 1)
            async with a.subscribe() as updates:
                for _ in range(rounds):
                    for action in ("accept", "delete"):
                        if spread:
                            await trio.sleep(rng.uniform(0, spread))
                        if action == "accept":
                            befriend(conn, alice.address, bob.address)
                        else:
                            unfriend(conn, alice.address, bob.address)
                        t = time.perf_counter()
                        if r is not None:
                            r.publish(FRIENDSHIP_CHANNEL, json.dumps(
                                {"id": str(uuid.uuid4()), "from": bob.address,
                                 "to": alice.address, "action": action,
                                 "timestamp": int(time.time() * 1000)}))
                        with trio.fail_after(timeout):
                            await _wait_for(updates, bob.address,
                                            pb.ONLINE if action == "accept" else pb.OFFLINE)
                        out[action].append(time.perf_counter() - t)
    if r is not None:
        r.close()
    return out


def part_converge(db: BenchDatabase, interval: float, rounds: int) -> dict:
    with Server("--friends-db", db.url, "--friends-db-reconcile-interval", str(interval),
                log_name="converge") as server:
        got = trio.run(_subscriber_run, server.url, db, rounds, None, interval * 4 + 30,
                       interval)
    return {"reconcile_interval_s": interval, "accept": summary(got["accept"]),
            "delete": summary(got["delete"])}


def part_events(db: BenchDatabase, rounds: int) -> dict:
    with Redis() as redis_server, Server(
            "--friends-db", db.url, "--social-events-url", redis_server.url,
            log_name="events") as server:
        got = trio.run(_subscriber_run, server.url, db, rounds, redis_server.url, 10.0)
    return {"accept": summary(got["accept"]), "delete": summary(got["delete"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--friendships", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--only", default="load,load_redis,passes,stall,converge,events")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    db = BenchDatabase(args.friendships, args.blocks, args.seed)
    results: dict = {}
    try:
        print(f"seeding {args.friendships:,} friendships into {db.name} ...", file=sys.stderr)
        results["database"] = db.create()
        print(json.dumps(results["database"]), file=sys.stderr)
        steps = [("load", lambda: part_load(db)),
                 ("load_redis", lambda: part_load_redis(db)),
                 ("passes", lambda: part_passes(db, args.repeat)),
                 ("stall", lambda: part_stall(db, 20.0)),
                 ("converge", lambda: part_converge(db, 5.0, 10)),
                 ("events", lambda: part_events(db, 200))]
        for name, step in steps:
            if name in parts:
                print(f"== {name}", file=sys.stderr)
                results[name] = step()
                print(json.dumps(results[name]), file=sys.stderr)
    finally:
        if not args.keep_db:
            db.drop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
