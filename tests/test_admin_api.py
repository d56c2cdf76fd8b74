"""The admin HTTP endpoint of a real `presenced serve` process (docs/admin-api.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from tests.conftest import ADMIN_TOKEN
from tests.support.admin import admin_client, new_address, redis_store_available
from tests.support.daemon import Daemon, free_port
from tests.support.waits import wait_for

# Writes declare their body's media type (a browser's text/plain POST is refused).
CSV = {"Content-Type": "text/csv"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def http(store_daemon):
    with admin_client(store_daemon.admin_url) as client:
        yield client


def metrics(http) -> dict[str, object]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def sample(families, family: str, name: str | None = None, **labels) -> float:
    for s in families[family].samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v
                                                    for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name or family} {labels}")


# ------------------------------------------------------------------ probes


def test_healthz(http):
    response = http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_when_ready(http):
    response = http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["ready"] is True
    assert response.json()["reasons"] == []


def test_status(http, store_daemon):
    body = http.get("/v1/status").json()
    assert body["ready"] is True
    assert body["engine"]["ttl_ms"] == 120_000
    assert body["engine"]["bounds"] == {"min_x": -1000, "min_y": -1000, "max_x": 1000,
                                        "max_y": 1000}


def test_metrics_parse_and_cover_every_counter(http, store_daemon):
    families = metrics(http)
    expected = {
        "presenced_connections": "gauge",
        "presenced_connections_opened": "counter",
        "presenced_accept_pauses": "counter",
        "presenced_accept_paused_seconds": "counter",
        "presenced_listen_queue": "gauge",
        "presenced_listen_queue_limit": "gauge",
        "presenced_logins": "counter",
        "presenced_heartbeats": "counter",
        "presenced_updates_delivered": "counter",
        "presenced_updates_coalesced": "counter",
        "presenced_updates_dropped": "counter",
        "presenced_updates_enqueued": "counter",
        "presenced_stream_items_sent": "counter",
        "presenced_notify_latency_seconds": "histogram",
        "presenced_slow_clients_disconnected": "counter",
        "presenced_disconnects": "counter",
        "presenced_bad_input": "counter",
        "presenced_expiries": "counter",
        "presenced_online_users": "gauge",
        "presenced_handler_errors": "counter",
        "presenced_store_healthy": "gauge",
        "presenced_ready": "gauge",
        "process_resident_memory_bytes": "gauge",
    }
    for name, kind in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
    assert sample(families, "presenced_ready") == 1
    if "--redis-url" in store_daemon.args:
        assert families["presenced_redis_flush_latency_seconds"].type == "histogram"
        assert families["presenced_redis_errors"].type == "counter"
        assert families["presenced_redis_pending_writes"].type == "gauge"
    buckets = [s for s in families["presenced_notify_latency_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf"


async def test_metrics_follow_real_traffic(store_daemon):
    alice, bob = Identity.generate(), Identity.generate()
    with admin_client(store_daemon.admin_url) as http:
        before = metrics(http)
        assert http.put(f"/v1/friendships/{alice.address}/{bob.address}").status_code == 201
        async with PresenceClient.connect(store_daemon.url, alice) as a:
            async with a.subscribe() as updates:
                async with PresenceClient.connect(store_daemon.url, bob) as b:
                    await b.heartbeat("main", 1, 1)
                    with trio.fail_after(10):
                        while True:
                            batch = await updates.next_batch()
                            if any(p.address == bob.address and p.position.x == 1
                                   for p in batch):
                                break
                    during = metrics(http)
    assert sample(during, "presenced_connections") >= 2
    assert sample(during, "presenced_online_users") >= 2

    def grew(family, name=None, **labels):
        return sample(during, family, name, **labels) - sample(before, family, name, **labels)

    assert grew("presenced_connections_opened", "presenced_connections_opened_total") >= 2
    assert grew("presenced_heartbeats", result="accepted") >= 1
    assert grew("presenced_updates_delivered", "presenced_updates_delivered_total") >= 1
    assert grew("presenced_stream_items_sent", "presenced_stream_items_sent_total") >= 1
    assert sample(during, "presenced_logins", result="ok") >= 2


# ------------------------------------------------------------------- users


def test_presence_of_unknown_user_is_offline(http):
    address = new_address()
    body = http.get(f"/v1/users/{address}/presence").json()
    assert body["address"] == address and body["online"] is False
    assert isinstance(body["now_ms"], int)


def test_bad_address_is_400(http):
    for path in ("/v1/users/nope/presence", "/v1/users/0x123/friends",
                 "/v1/users/xyz/online-friends"):
        response = http.get(path)
        assert response.status_code == 400, path
        assert "not an address" in response.json()["error"]
    response = http.put(f"/v1/friendships/{new_address()}/bogus")
    assert response.status_code == 400


def test_addresses_are_case_insensitive(http):
    a, b = new_address(), new_address()
    assert http.put(f"/v1/friendships/{a.upper().replace('0X', '0x')}/{b}").status_code == 201
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [b]


def test_add_list_remove_friendship(http):
    a, b, c = new_address(), new_address(), new_address()
    first = http.put(f"/v1/friendships/{a}/{b}")
    assert first.status_code == 201 and first.json()["added"] is True
    again = http.put(f"/v1/friendships/{b}/{a}")
    assert again.status_code == 200 and again.json()["added"] is False
    http.put(f"/v1/friendships/{a}/{c}")
    body = http.get(f"/v1/users/{a}/friends").json()
    assert body == {"address": a, "friends": sorted([b, c]), "count": 2}
    removed = http.delete(f"/v1/friendships/{b}/{a}")
    assert removed.status_code == 200 and removed.json()["removed"] is True
    assert http.delete(f"/v1/friendships/{b}/{a}").json()["removed"] is False
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [c]


def test_self_friendship_is_400(http):
    a = new_address()
    response = http.put(f"/v1/friendships/{a}/{a}")
    assert response.status_code == 400
    assert "own friend" in response.json()["error"]


def test_online_friends(http):
    a, b, c, d = (new_address() for _ in range(4))
    for friend in (b, c, d):
        http.put(f"/v1/friendships/{a}/{friend}")
    users = [{"address": c, "realm": "main", "x": 5, "y": -5},
             {"address": b, "realm": "dg", "x": 0, "y": 7}]
    assert http.post("/v1/presence", json=users).json()["injected"] == 2
    body = http.get(f"/v1/users/{a}/online-friends").json()
    assert body["friends_count"] == 3 and body["online_count"] == 2
    got = [(p["address"], p["realm"], p["x"], p["y"], p["online"])
           for p in body["online_friends"]]
    assert got == sorted([(b, "dg", 0, 7, True), (c, "main", 5, -5, True)])
    now = body["now_ms"]
    assert all(0 <= now - p["last_seen_ms"] < 10_000 for p in body["online_friends"])


# ------------------------------------------------------------------- import


def test_import_csv_and_json_lines(http):
    a, b, c, d = (new_address() for _ in range(4))
    http.put(f"/v1/friendships/{a}/{b}")
    body = "\n".join([
        "# a comment",
        f"{a},{b}",
        f"{a.upper().replace('0X', '0x')} , {c}  # trailing comment",
        json.dumps([a, d]),
        json.dumps({"a": c, "b": d}),
        f"{c},{a}",
        "",
    ])
    response = http.post("/v1/friendships/import", content=body, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json() == {"lines": 6, "friendships": 4, "duplicates": 1, "added": 3,
                               "existing": 1}
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == sorted([b, c, d])


def test_import_with_any_malformed_line_applies_nothing(http):
    a, b = new_address(), new_address()
    body = "\r\n".join([
        f"{a},{b}",
        "not,addresses",
        f"{a},{a}",
        f"{a}",
        "[1, 2]",
        '{"a": "0x1"',
        f"{b},{new_address()}",
    ])
    response = http.post("/v1/friendships/import", content=body, headers=CSV)
    assert response.status_code == 400
    error = response.json()
    assert "5 malformed lines" in error["error"] and "nothing was imported" in error["error"]
    assert error["error_count"] == 5
    assert [e["line"] for e in error["errors"]] == [2, 3, 4, 5, 6]
    assert "not an address" in error["errors"][0]["message"]
    assert "own friend" in error["errors"][1]["message"]
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == []


def test_import_line_numbers_continue_from_first_line(http):
    response = http.post("/v1/friendships/import", params={"first_line": 1001}, headers=CSV,
                         content=f"{new_address()},{new_address()}\nbad line\n")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"line": 1002, "message": "expected two comma-separated addresses"}]
    assert http.post("/v1/friendships/import", params={"first_line": "x"}, headers=CSV,
                     content="").status_code == 400


def test_import_not_utf8_is_400(http):
    response = http.post("/v1/friendships/import", content=b"\xff\xfe,\n", headers=CSV)
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]


def test_large_import_is_applied_in_chunks(http):
    hub = new_address()
    friends = sorted(new_address() for _ in range(25_000))
    body = "".join(f"{hub},{f}\n" for f in friends)
    response = http.post("/v1/friendships/import", content=body, headers=CSV)
    assert response.status_code == 200
    assert response.json()["added"] == 25_000
    listed = http.get(f"/v1/users/{hub}/friends").json()
    assert listed["count"] == 25_000 and listed["friends"] == friends


# ---------------------------------------------------------------- presence


def test_inject_presence_validates_like_a_heartbeat(http):
    good = new_address()
    users = [
        {"address": good, "realm": "main", "x": 1, "y": 1},
        {"address": "nope", "realm": "main", "x": 1, "y": 1},
        {"address": new_address(), "realm": "", "x": 1, "y": 1},
        {"address": new_address(), "realm": "main", "x": 5000, "y": 1},
        {"address": new_address(), "realm": "main", "x": 1.5, "y": 1},
        {"address": new_address(), "realm": "main", "x": True, "y": 1},
        {"address": new_address(), "realm": "x" * 200, "x": 1, "y": 1},
        {"address": new_address(), "realm": "main"},
        "not an object",
    ]
    response = http.post("/v1/presence", json={"users": users})
    assert response.status_code == 400
    body = response.json()
    assert body["error_count"] == 8
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    messages = [e["message"] for e in body["errors"]]
    assert "not an address" in messages[0]
    assert "realm must not be empty" in messages[1]
    assert "x outside" in messages[2]
    assert "integers" in messages[3] and "integers" in messages[4]
    assert "longer than" in messages[5]
    assert "missing x, y" in messages[6]
    # Nothing applied, not even the valid user.
    assert http.get(f"/v1/users/{good}/presence").json()["online"] is False


def test_inject_presence_marks_users_online(http):
    a = new_address()
    response = http.post("/v1/presence", json=[{"address": a, "realm": "main", "x": -3,
                                                "y": 4}])
    assert response.status_code == 200
    body = http.get(f"/v1/users/{a}/presence").json()
    assert (body["online"], body["realm"], body["x"], body["y"]) == (True, "main", -3, 4)


@pytest.mark.parametrize("payload", [b"{", b"[1,", b'"text"', b"{}", b"42", b"\xff"])
def test_inject_presence_bad_json_is_400(http, payload):
    response = http.post("/v1/presence", content=payload, headers=JSON)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_request_body_is_bounded(http):
    response = http.post("/v1/presence", content=b" " * (8 * 1024 * 1024 + 1),
                         headers=JSON)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_unknown_path_and_method_are_json(http):
    response = http.get("/v1/nothing")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = http.delete("/v1/presence")
    assert response.status_code == 405 and "error" in response.json()


def test_injected_presence_expires_like_anyone():
    with Daemon("--ttl", "1", "--sweep-interval", "0.1") as daemon, \
            admin_client(daemon.admin_url) as http:
        a, b = new_address(), new_address()
        http.put(f"/v1/friendships/{a}/{b}")
        http.post("/v1/presence", json=[{"address": b, "realm": "main", "x": 0, "y": 0}])
        assert http.get(f"/v1/users/{a}/online-friends").json()["online_count"] == 1
        deadline = time.monotonic() + 10
        while http.get(f"/v1/users/{b}/presence").json()["online"]:
            assert time.monotonic() < deadline, "injected user never expired"
            time.sleep(0.1)
        assert http.get(f"/v1/users/{a}/online-friends").json()["online_count"] == 0
        assert sample(metrics(http), "presenced_expiries", "presenced_expiries_total") == 1


def test_readyz_is_503_while_redis_is_away():
    missing = redis_store_available()
    if missing is not None:
        pytest.skip(missing)
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis, Daemon("--redis-url", redis.url) as daemon, \
            admin_client(daemon.admin_url) as http:
        wait_for(lambda: http.get("/readyz").status_code == 200)
        redis.kill()
        # Writing makes the outage visible at the next flush.
        http.post("/v1/presence", json=[{"address": new_address(), "realm": "main", "x": 0,
                                         "y": 0}])
        wait_for(lambda: http.get("/readyz").status_code == 503)
        body = http.get("/readyz").json()
        assert body["ready"] is False and "store unavailable" in body["reasons"]
        assert http.get("/healthz").status_code == 200
        response = http.get(f"/v1/users/{new_address()}/friends")
        assert response.status_code == 503 and "error" in response.json()
        families = metrics(http)
        assert sample(families, "presenced_store_healthy") == 0
        redis.start()
        wait_for(lambda: http.get("/readyz").status_code == 200)


# -------------------------------------------------------------------- token


def test_token_required_everywhere_but_healthz(token_daemon):
    a = new_address()
    paths = [("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/status"),
             ("GET", f"/v1/users/{a}/presence"), ("GET", f"/v1/users/{a}/friends"),
             ("GET", f"/v1/users/{a}/online-friends"),
             ("PUT", f"/v1/friendships/{a}/{new_address()}"),
             ("DELETE", f"/v1/friendships/{a}/{new_address()}"),
             ("POST", "/v1/friendships/import"), ("POST", "/v1/presence"),
             ("GET", "/v1/unknown")]
    for token in (None, "wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):
        with admin_client(token_daemon.admin_url, token) as http:
            assert http.get("/healthz").status_code == 200
            for method, path in paths:
                response = http.request(method, path)
                assert response.status_code == 401, (token, method, path)
                assert response.json() == {"error": "missing or wrong bearer token"}
                assert response.headers["www-authenticate"].startswith("Bearer")
    with admin_client(token_daemon.admin_url) as http:
        assert http.get("/readyz", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}
                        ).status_code == 401
    with admin_client(token_daemon.admin_url, ADMIN_TOKEN) as http:
        assert http.get("/readyz").status_code == 200
        assert http.get(f"/v1/users/{a}/presence").status_code == 200
        assert http.get("/v1/users/bad/presence").status_code == 400
        metrics(http)


# -------------------------------------------------------- refusing to start


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    return subprocess.run(
        [sys.executable, "-m", "presenced", "serve", "--port", str(free_port()), *args],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.com", "10.1.2.3"])
def test_non_loopback_admin_host_without_token_refuses_to_start(host):
    result = _serve("--admin-host", host, "--admin-port", str(free_port()))
    assert result.returncode == 2
    assert "refusing to serve the admin endpoint" in result.stderr
    assert "PRESENCED_ADMIN_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_loopback_admin_host_with_token_starts():
    with Daemon("--admin-host", "0.0.0.0", env={"PRESENCED_ADMIN_TOKEN": ADMIN_TOKEN}) as d:
        with admin_client(d.admin_url, ADMIN_TOKEN) as http:
            assert http.get("/readyz").status_code == 200
        with admin_client(d.admin_url) as http:
            assert http.get("/readyz").status_code == 401


def test_admin_port_in_use_refuses_to_start(store_daemon):
    result = _serve("--admin-port", str(store_daemon.admin_port))
    assert result.returncode == 2
    assert "cannot serve the admin endpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_endpoint_stops_with_the_daemon():
    with Daemon() as daemon:
        with admin_client(daemon.admin_url) as http:
            assert http.get("/healthz").status_code == 200
        assert daemon.stop() == 0
    with admin_client(daemon.admin_url) as http, pytest.raises(httpx.ConnectError):
        http.get("/healthz")
