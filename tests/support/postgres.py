"""A private PostgreSQL database per test, written to as the social service writes.

Tests use the server on 127.0.0.1:5432 (trust auth, user postgres; override
with PRESENCED_TEST_POSTGRES) and create a database with a random name,
dropped at the end. Where no server answers, tests that need one are
skipped with a message saying so.
"""

from __future__ import annotations

import os
import secrets
import uuid

import psycopg

from presenced.graph.postgres import create_schema

ADMIN_URL = os.environ.get("PRESENCED_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_unavailable() -> str | None:
    """None when a PostgreSQL server answers, else why not."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"no PostgreSQL server answers at {ADMIN_URL} ({first})"
    return None


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


def url_of(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


class SocialDatabase:
    """A fresh database with the social service's schema, and its writes."""

    def __init__(self) -> None:
        self.name = "presenced_test_" + secrets.token_hex(6)
        self.url = url_of(self.name)
        self._conn: psycopg.Connection | None = None

    def create(self) -> SocialDatabase:
        with _admin() as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        with psycopg.connect(self.url) as conn:
            create_schema(conn)
        return self

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with _admin() as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    # ------------------------------------------- writes, as the service does

    def befriend(self, requester: str, requested: str) -> None:
        """Accept: the pair's row becomes active (created if missing)."""
        with self.conn.transaction():
            updated = self.conn.execute(
                "UPDATE friendships SET is_active = true, updated_at = now() "
                "WHERE least(address_requester, address_requested) = least(%s, %s) "
                "AND greatest(address_requester, address_requested) = greatest(%s, %s)",
                (requester, requested, requester, requested)).rowcount
            if not updated:
                self.conn.execute(
                    "INSERT INTO friendships (id, address_requester, address_requested, "
                    "is_active) VALUES (%s, %s, %s, true)",
                    (uuid.uuid4(), requester, requested))

    def unfriend(self, a: str, b: str) -> None:
        """Delete (or reject, or block): the row stays, inactive."""
        self.conn.execute(
            "UPDATE friendships SET is_active = false, updated_at = now() "
            "WHERE least(address_requester, address_requested) = least(%s, %s) "
            "AND greatest(address_requester, address_requested) = greatest(%s, %s)",
            (a, b, a, b))

    def block(self, blocker: str, blocked: str) -> None:
        """Block: the row, and the friendship deactivated, in one transaction."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO blocks (id, blocker_address, blocked_address) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING", (uuid.uuid4(), blocker, blocked))
            self.unfriend(blocker, blocked)

    def unblock(self, blocker: str, blocked: str) -> None:
        self.conn.execute("DELETE FROM blocks WHERE blocker_address = %s AND "
                          "blocked_address = %s", (blocker, blocked))

    # ---------------------------------------------------------------- outage

    def refuse_connections(self) -> None:
        """Cut presenced off: no new connections, and every open one ended.

        (`REVOKE CONNECT` would not stop the trusted superuser.)
        """
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with _admin() as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,))

    def allow_connections(self) -> None:
        with _admin() as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
