"""The admin app in-process, for states a real daemon cannot be put in on demand:
a degraded or failing store, store metrics, unexpected errors, the config check."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from presenced.server.admin import admin_config_problem, create_app, is_loopback
from presenced.server.config import ServerConfig
from presenced.server.hub import Hub
from presenced.store.base import StoreUnavailable
from presenced.store.memory import MemoryStore
from tests.support.admin import new_address


class FlakyStore(MemoryStore):
    """A store that can be made unhealthy or failing, and exposes Redis-style metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.boom = False
        self.stats.shared = True
        self.stats.errors.update({"timeout": 3, "connection": 1})

    @property
    def healthy(self) -> bool:
        return self.up

    async def friends_of(self, address: str) -> frozenset[str]:
        if self.boom:
            raise RuntimeError("a bug")
        if not self.up:
            raise StoreUnavailable("redis is down")
        return await super().friends_of(address)

    async def add_friendships(self, pairs):
        if not self.up:
            raise StoreUnavailable("redis is down")
        return await super().add_friendships(pairs)


@pytest.fixture
async def app(nursery):
    store = FlakyStore()
    hub = Hub(ServerConfig(), store)
    await nursery.start(hub.run)
    hub.ready = True  # as the server sets it once it listens
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client, hub, store


async def test_readyz_reports_a_degraded_store(app):
    client, hub, store = app
    assert (await client.get("/readyz")).status_code == 200
    store.up = False
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["reasons"] == ["store unavailable"]
    assert "store unavailable" in body["error"]
    assert (await client.get("/healthz")).status_code == 200


async def test_readyz_while_starting(app):
    client, hub, store = app
    hub.ready = False
    response = await client.get("/readyz")
    assert response.status_code == 503 and response.json()["reasons"] == ["starting"]


async def test_store_unavailable_is_503_json(app):
    client, hub, store = app
    store.up = False
    a, b = new_address(), new_address()
    for response in (await client.get(f"/v1/users/{a}/friends"),
                     await client.get(f"/v1/users/{a}/online-friends"),
                     await client.put(f"/v1/friendships/{a}/{b}")):
        assert response.status_code == 503
        assert "redis is down" in response.json()["error"]
    response = await client.post("/v1/friendships/import", content=f"{a},{b}\n",
                                 headers={"Content-Type": "text/csv"})
    assert response.status_code == 503 and response.json()["added"] == 0


async def test_unexpected_error_is_500_json_without_traceback(app, caplog):
    client, hub, store = app
    store.boom = True
    response = await client.get(f"/v1/users/{new_address()}/friends")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the daemon's log)"}
    assert "Traceback" not in response.text
    assert "a bug" in caplog.text  # but the daemon logs it


async def test_store_metrics_are_exported_when_the_store_has_them(app):
    client, hub, store = app
    store.stats.flush_latency.observe(0.003)
    store.stats.flush_latency.observe(0.2)
    store.up = False
    text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    errors = {s.labels["kind"]: s.value for s in families["presenced_redis_errors"].samples}
    assert errors == {"timeout": 3, "connection": 1}
    flush = {s.name: s for s in families["presenced_redis_flush_latency_seconds"].samples
             if s.name.endswith(("_count", "_sum"))}
    assert flush["presenced_redis_flush_latency_seconds_count"].value == 2
    assert flush["presenced_redis_flush_latency_seconds_sum"].value == pytest.approx(0.203)
    healthy = families["presenced_store_healthy"].samples[0].value
    assert healthy == 0


async def test_metrics_without_store_metrics(nursery):
    hub = Hub(ServerConfig(), MemoryStore())
    await nursery.start(hub.run)
    hub.ready = True  # as the server sets it once it listens
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        text = (await client.get("/metrics")).text
    assert "presenced_redis" not in text
    assert "presenced_connections " in text


async def test_openmetrics_on_request(app):
    client, hub, store = app
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
    ("example.com", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_admin_config_problem():
    assert admin_config_problem(ServerConfig()) is None
    assert admin_config_problem(ServerConfig(admin_host="0.0.0.0", admin_token="t")) is None
    problem = admin_config_problem(ServerConfig(admin_host="0.0.0.0"))
    assert problem is not None and "PRESENCED_ADMIN_TOKEN" in problem


async def test_ready_metric_says_what_readyz_says(app):
    client, hub, store = app

    async def ready_metric() -> str:
        text = (await client.get("/metrics")).text
        return next(line for line in text.splitlines() if line.startswith("presenced_ready "))

    assert await ready_metric() == "presenced_ready 1.0"
    hub.stopping = True
    assert (await client.get("/readyz")).json()["reasons"] == ["shutting down"]
    assert await ready_metric() == "presenced_ready 0.0"
    hub.stopping = False
    hub.ready = False  # started, but not listening yet
    assert await ready_metric() == "presenced_ready 0.0"
