"""Shared fixtures. Several test modules add to this file: append, don't rewrite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.admin import redis_store_available
from tests.support.daemon import Daemon
from tests.support.postgres import SocialDatabase, postgres_unavailable
from tests.support.redis_server import RedisServer

# ------------------------------------------------- admin endpoint and CLI tests


@pytest.fixture(scope="module", params=["memory", "redis"])
def store_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A running `presenced serve` with the embedded store, then with Redis.

    Shared by the tests of a module (each uses its own fresh addresses); the
    Redis run is skipped until the Redis store exists.
    """
    if request.param == "memory":
        with Daemon() as daemon:
            yield daemon
        return
    missing = redis_store_available()
    if missing is not None:
        pytest.skip(f"Redis-backed run skipped: {missing}")
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis, Daemon("--redis-url", redis.url) as daemon:
        yield daemon


ADMIN_TOKEN = "test-token-5d1c"


@pytest.fixture(scope="module")
def token_daemon() -> Iterator[Daemon]:
    """A daemon whose admin endpoint requires ADMIN_TOKEN."""
    with Daemon(env={"PRESENCED_ADMIN_TOKEN": ADMIN_TOKEN}) as daemon:
        yield daemon


# ------------------------------------------------------------- Redis store tests


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private, empty `redis-server` on a free loopback port (never 6379's).

    Function-scoped: tests kill and restart it. Skipped if redis-server is
    not installed (`.ci/run` installs it).
    """
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------- friends database (PostgreSQL)


@pytest.fixture
def social_db() -> Iterator[SocialDatabase]:
    """A database of our own on the PostgreSQL at 127.0.0.1:5432, with the social
    service's schema; dropped afterwards. Skipped (saying why) if no server answers."""
    missing = postgres_unavailable()
    if missing is not None:
        pytest.skip(missing)
    db = SocialDatabase().create()
    try:
        yield db
    finally:
        db.drop()
