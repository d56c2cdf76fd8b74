"""Shared fixtures and the test tiers. Several test modules add to this file: append.

Tiers: `pytest -m "not slow"` runs the pure and in-process tests in seconds; `slow` marks
every test that starts processes or servers (presenced serve, redis-server, node, the CLI).
This file imports nothing heavy at load time, so the fast tier starts fast: helpers that pull
in the CLI or redis-py are imported inside the fixtures that need them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon
    from tests.support.postgres import SocialDatabase
    from tests.support.redis_server import RedisServer

# Test modules whose tests start processes or servers, and fixtures that do.
SLOW_MODULES = frozenset({
    "test_admin_api", "test_cli_admin", "test_daemon", "test_docgen", "test_interop",
    "test_interop_v2",
    "test_redis_e2e", "test_redis_store", "test_simulate", "test_workers",
    "test_friends_db", "test_friends_db_daemon", "test_operators", "test_binary", "test_deploy",
})
SLOW_FIXTURES = frozenset({"redis_server", "store_daemon", "token_daemon", "social_db"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ------------------------------------------------- admin endpoint and CLI tests


@pytest.fixture(scope="module", params=["memory", "redis"])
def store_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A running `presenced serve` with the embedded store, then with Redis.

    Shared by the tests of a module (each uses its own fresh addresses); the
    Redis run is skipped where redis-server is not installed.
    """
    from tests.support.admin import redis_store_available
    from tests.support.daemon import Daemon

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
    from tests.support.daemon import Daemon

    with Daemon(env={"PRESENCED_ADMIN_TOKEN": ADMIN_TOKEN}) as daemon:
        yield daemon


# ------------------------------------------------------------- Redis store tests


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private, empty `redis-server` on a free loopback port (never 6379's).

    Function-scoped: tests kill and restart it. Skipped if redis-server is
    not installed (`.ci/run` installs it).
    """
    from tests.support.redis_server import RedisServer

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
    from tests.support.postgres import SocialDatabase, postgres_unavailable

    missing = postgres_unavailable()
    if missing is not None:
        pytest.skip(missing)
    db = SocialDatabase().create()
    try:
        yield db
    finally:
        db.drop()
