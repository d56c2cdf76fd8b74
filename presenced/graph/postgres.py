"""The social service's PostgreSQL, read with psycopg 3 (synchronous: run in threads).

presenced only reads this database (a read-only transaction per pass) and
never changes its schema. The schema is the social service's
(`social-service-ea` migrations):

    friendships(id uuid, address_requester varchar, address_requested varchar,
                is_active bool, created_at timestamp, updated_at timestamp)
    blocks(id uuid, blocker_address varchar, blocked_address varchar, blocked_at timestamp)

A pair is friends while any of its rows is active (the schema allowed one
row per direction before a unique pair index came). Addresses are compared
lower-case. Timestamps are `timestamp without time zone` written with the
database's `now()`, so watermarks come from the database's clock
(`localtimestamp`, in the session's default time zone like the writers').

`create_schema` and `seed_friendships` exist for tests, the simulator and
the benchmark (`presenced seed friendships --db`): they create the same
tables and indexes as the social service's migrations (none on
`updated_at`, like the real one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from presenced.graph.config import DatabaseConfig
from presenced.graph.picture import AddressIds, Adjacency, AdjacencyBuilder, diff_adjacency
from presenced.graph.reconcile import FullResult, IncrementalResult, PassPlan

T = TypeVar("T")

# What a failed database call can raise.
DB_ERRORS = (psycopg.Error, OSError)

# Rows fetched per round trip of a full read.
FETCH_BATCH = 20_000

# Lower-cased as they come in (cheaper here than lower() on the server).
ACTIVE_FRIENDSHIPS = """
SELECT address_requester, address_requested FROM friendships WHERE is_active
"""

ALL_BLOCKS = "SELECT blocker_address, blocked_address FROM blocks"

# Pairs changed in the window, plus the pairs events touched, each with its
# state over all of its rows: the window's rows themselves (whatever their
# case) and the pair's rows found through the social service's unique index
# on (least(requester, requested), greatest(...)) — one index probe per pair,
# where a join on lower() would scan every row of a popular user.
CHANGED_FRIENDSHIPS = """
WITH window_rows AS (
    SELECT least(lower(address_requester), lower(address_requested)) AS a,
           greatest(lower(address_requester), lower(address_requested)) AS b,
           is_active
    FROM friendships
    WHERE updated_at >= %(since)s
),
wanted AS (
    SELECT a, b FROM window_rows
    UNION
    SELECT v.a, v.b FROM unnest(%(a)s::text[], %(b)s::text[]) AS v(a, b)
),
states AS (
    SELECT a, b, is_active FROM window_rows
    UNION ALL
    SELECT w.a, w.b, f.is_active
    FROM wanted w
    JOIN friendships f
      ON least(f.address_requester, f.address_requested) = w.a
     AND greatest(f.address_requester, f.address_requested) = w.b
)
SELECT w.a, w.b, coalesce(bool_or(s.is_active), false)
FROM wanted w LEFT JOIN states s ON s.a = w.a AND s.b = w.b
GROUP BY w.a, w.b
"""

# Blocks created in the window (present), and the state of each pair asked for.
CHANGED_BLOCKS = """
SELECT lower(blocker_address), lower(blocked_address), true
FROM blocks WHERE blocked_at >= %(since)s
UNION ALL
SELECT v.a, v.b, bool_or(b.blocker_address IS NOT NULL)
FROM unnest(%(a)s::text[], %(b)s::text[]) AS v(a, b)
LEFT JOIN blocks b ON lower(b.blocker_address) = v.a AND lower(b.blocked_address) = v.b
GROUP BY v.a, v.b
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS friendships (
    id uuid PRIMARY KEY,
    address_requester varchar NOT NULL,
    address_requested varchar NOT NULL,
    is_active boolean NOT NULL DEFAULT false,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS friendships_address_requester_lower
    ON friendships (lower(address_requester) text_pattern_ops);
CREATE INDEX IF NOT EXISTS friendships_address_requested_lower
    ON friendships (lower(address_requested) text_pattern_ops);
CREATE UNIQUE INDEX IF NOT EXISTS friendships_unique_pair
    ON friendships (least(address_requester, address_requested),
                    greatest(address_requester, address_requested));
CREATE TABLE IF NOT EXISTS blocks (
    id uuid PRIMARY KEY,
    blocker_address varchar NOT NULL,
    blocked_address varchar NOT NULL,
    blocked_at timestamp DEFAULT now()
);
CREATE INDEX IF NOT EXISTS blocks_blocker_address_index ON blocks (blocker_address);
CREATE INDEX IF NOT EXISTS blocks_blocked_address_index ON blocks (blocked_address);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_blocker_address_blocked_address_unique_index
    ON blocks (blocker_address, blocked_address);
"""


def safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"postgresql://{host}:{port}/{params.get('dbname') or ''}"


def check_url(url: str) -> str | None:
    """Why `url` is not a database URL, or None."""
    if not url.startswith(("postgresql://", "postgres://")):
        return "expected postgresql://USER@HOST:PORT/DATABASE"
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        return str(e).splitlines()[0]
    return None


class Database:
    """One connection to the friends database, reopened after any failure.

    Every method blocks: call them with `trio.to_thread.run_sync`, one at a
    time.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self._conn: psycopg.Connection | None = None

    @property
    def description(self) -> str:
        return safe_url(self.config.url)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except DB_ERRORS:
                pass

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.close()
        c = self.config
        conn = psycopg.connect(
            c.url,
            connect_timeout=max(1, round(c.connect_timeout_s)),
            application_name="presenced",
            options=f"-c statement_timeout={int(c.statement_timeout_s * 1000)}",
            # A dead server is noticed within seconds, not at the kernel's hours.
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        )
        # One snapshot per pass, and never a write.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        self._conn = conn
        return conn

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(cursor, *args)` in one read-only transaction; closes on failure."""
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                return fn(cur, *args)
        except BaseException:
            self.close()
            raise

    def ping(self) -> datetime:
        """The database's clock (opens the connection if needed)."""
        return self._run(lambda cur: _watermark(cur))

    def read_full(
        self, ids: AddressIds, base: Adjacency | None, *, friendships: bool = True
    ) -> FullResult:
        """Every active friendship (diffed against `base`, unless None) and every block."""
        return self._run(_read_full, ids, base, friendships)

    def read_changes(self, plan: PassPlan) -> IncrementalResult:
        return self._run(_read_changes, plan)


def _watermark(cur: psycopg.Cursor) -> datetime:
    row = cur.execute("SELECT localtimestamp").fetchone()
    assert row is not None
    return row[0]


def _read_full(
    cur: psycopg.Cursor, ids: AddressIds, base: Adjacency | None, friendships: bool
) -> FullResult:
    watermark = _watermark(cur)
    keys = None
    added: list[int] = []
    removed: list[int] = []
    if friendships:
        builder = AdjacencyBuilder(ids)
        for rows in _batches(cur.connection, ACTIVE_FRIENDSHIPS):
            builder.add(rows)
        keys = builder.finish()
        if base is not None:
            added, removed = diff_adjacency(base, keys)
    block_key = ids.block_key
    blocks = {block_key(a.lower(), b.lower()) for rows in _batches(cur.connection, ALL_BLOCKS)
              for a, b in rows if a.lower() != b.lower()}
    return FullResult(watermark, keys, added, removed, blocks)


def _read_changes(cur: psycopg.Cursor, plan: PassPlan) -> IncrementalResult:
    watermark = _watermark(cur)
    fa = [a for a, _ in plan.friendships]
    fb = [b for _, b in plan.friendships]
    cur.execute(CHANGED_FRIENDSHIPS, {"since": plan.since, "a": fa, "b": fb})
    friendships = [(a, b, bool(active)) for a, b, active in cur.fetchall()]
    ba = [a for a, _ in plan.blocks]
    bb = [b for _, b in plan.blocks]
    cur.execute(CHANGED_BLOCKS, {"since": plan.since, "a": ba, "b": bb})
    blocks = [(a, b, bool(present)) for a, b, present in cur.fetchall()]
    row = cur.execute("SELECT count(*) FROM blocks").fetchone()
    assert row is not None
    return IncrementalResult(watermark, friendships, blocks, int(row[0]))


def _batches(conn: psycopg.Connection, statement: str) -> Iterator[list[tuple[str, str]]]:
    """The rows of `statement`, fetched in batches through a server-side cursor.

    Measured on a million rows: a server-side cursor parses rows in C as
    fast as COPY delivers them (one protocol message per row either way),
    and keeps only one batch in memory.
    """
    with conn.cursor(name="presenced_graph_read") as cur:
        cur.itersize = FETCH_BATCH
        cur.execute(statement)
        while True:
            rows = cur.fetchmany(FETCH_BATCH)
            if not rows:
                return
            yield rows


# ------------------------------------------------------------------ seeding


@dataclass(frozen=True, slots=True)
class SeedResult:
    friendships: int
    added: int
    reactivated: int

    @property
    def existing(self) -> int:
        return self.friendships - self.added - self.reactivated


def connect_for_writing(url: str, connect_timeout_s: float = 5.0) -> psycopg.Connection:
    """A connection for `seed` (the daemon never writes)."""
    return psycopg.connect(url, connect_timeout=max(1, round(connect_timeout_s)),
                           application_name="presenced-seed")


def create_schema(conn: psycopg.Connection) -> None:
    """The social service's friendships and blocks tables, if missing."""
    with conn.transaction():
        conn.execute(SCHEMA)


def seed_friendships(
    conn: psycopg.Connection, pairs: Iterable[tuple[str, str]], *,
    updated_at: datetime | None = None,
) -> SeedResult:
    """Make every pair (lower-case addresses) an active friendship; idempotent.

    A pair with an inactive row is reactivated (its `updated_at` bumped, as
    the social service does); a new pair gets a row (requester = the
    smaller address). `updated_at` backdates the rows written (the
    benchmark's steady state: old rows, outside any pass's window).
    """
    at = updated_at
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE seed_pairs (a text, b text) ON COMMIT DROP")
        with conn.cursor() as cur:
            with cur.copy("COPY seed_pairs (a, b) FROM STDIN") as copy:
                batch: list[str] = []
                for a, b in pairs:
                    if b < a:
                        a, b = b, a
                    batch.append(f"{a}\t{b}\n")
                    if len(batch) >= 10_000:
                        copy.write("".join(batch))
                        batch.clear()
                if batch:
                    copy.write("".join(batch))
            cur.execute("CREATE TEMP TABLE seed_distinct ON COMMIT DROP AS "
                        "SELECT DISTINCT a, b FROM seed_pairs WHERE a <> b")
            cur.execute("ANALYZE seed_distinct")
            total = cur.execute("SELECT count(*) FROM seed_distinct").fetchone()
            cur.execute(
                "UPDATE friendships f SET is_active = true, "
                "updated_at = coalesce(%(at)s::timestamp, now()) "
                "FROM seed_distinct s "
                "WHERE least(f.address_requester, f.address_requested) = s.a "
                "AND greatest(f.address_requester, f.address_requested) = s.b "
                "AND NOT f.is_active", {"at": at})
            reactivated = cur.rowcount
            cur.execute(
                "INSERT INTO friendships (id, address_requester, address_requested, is_active, "
                "created_at, updated_at) "
                "SELECT gen_random_uuid(), s.a, s.b, true, coalesce(%(at)s::timestamp, now()), "
                "coalesce(%(at)s::timestamp, now()) FROM seed_distinct s "
                "WHERE NOT EXISTS (SELECT 1 FROM friendships f "
                "WHERE least(f.address_requester, f.address_requested) = s.a "
                "AND greatest(f.address_requester, f.address_requested) = s.b)", {"at": at})
            added = cur.rowcount
    assert total is not None
    return SeedResult(int(total[0]), added, reactivated)


def read_active_friendships(url: str) -> Iterator[tuple[str, str]]:
    """Every active friendship (a < b), streamed (for `simulate` with a database graph)."""
    with psycopg.connect(url, application_name="presenced-simulate") as conn:
        conn.read_only = True
        with conn.transaction():
            for rows in _batches(conn, ACTIVE_FRIENDSHIPS):
                for a, b in rows:
                    a, b = a.lower(), b.lower()
                    if a != b:
                        yield (a, b) if a < b else (b, a)
