"""The admin endpoint against a web page in a local browser (issue 14 item 6), and imports
that never hold the event loop.

A page can make a browser send "simple" cross-origin requests (a text/plain POST) without
asking, and with DNS rebinding even read the answers under its own host name. The tokenless
loopback default must refuse both, while the CLI, curl and Prometheus keep working.
"""

from __future__ import annotations

import random
import threading
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import trio

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.server import admin
from presenced.server.admin import MAX_LISTED_ERRORS, ImportParser, create_app
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.server.hub import Hub
from presenced.store.memory import MemoryStore
from tests.support.admin import new_address

JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv; charset=utf-8"}


@asynccontextmanager
async def admin_app(nursery, **config):
    hub = Hub(ServerConfig(**config), MemoryStore())
    await nursery.start(hub.run)
    hub.ready = True  # as the server sets it once it listens
    transport = httpx.ASGITransport(app=create_app(hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8086") as c:
        yield c, hub


def presence_body(address: str) -> list[dict]:
    return [{"address": address, "realm": "main", "x": 1, "y": 1}]


# ------------------------------------------------------------------- CSRF


async def test_a_pages_text_plain_post_with_foreign_host_and_origin_is_refused(nursery):
    # The request of the issue: what `fetch(..., {mode: "no-cors", body})` sends from a page
    # served by evil.example whose name was rebound to 127.0.0.1.
    async with admin_app(nursery) as (client, hub):
        victim = new_address()
        response = await client.post(
            "/v1/presence", content=f'[{{"address": "{victim}", "realm": "r", "x": 0, "y": 0}}]',
            headers={"Host": "evil.example:8086", "Origin": "http://evil.example:8086",
                     "Content-Type": "text/plain;charset=UTF-8"})
        assert response.status_code == 403
        assert "error" in response.json()
        assert hub.presence_of(victim) is None


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:8086", "127.0.0.1.evil.example", "localhost.evil.example",
    "0.0.0.0:8086", "10.0.0.1", "[::2]:8086", "[::1", "",
])
async def test_a_foreign_host_is_refused_on_a_loopback_bind(nursery, host):
    async with admin_app(nursery) as (client, hub):
        response = await client.get("/v1/status", headers={"Host": host})
        assert response.status_code == 403
        assert "loopback" in response.json()["error"]
        assert hub.metrics.admin_refused["host"] == 1


@pytest.mark.parametrize("host", [
    "localhost", "localhost:8086", "LOCALHOST:8086", "127.0.0.1", "127.0.0.1:8086",
    "127.9.9.9:1", "[::1]", "[::1]:8086",
])
async def test_loopback_host_names_are_served(nursery, host):
    async with admin_app(nursery) as (client, _):
        assert (await client.get("/v1/status", headers={"Host": host})).status_code == 200
        assert (await client.get("/healthz", headers={"Host": host})).status_code == 200


async def test_any_host_is_served_off_loopback_where_the_token_guards(nursery):
    async with admin_app(nursery, admin_host="0.0.0.0", admin_token="t0k") as (client, _):
        response = await client.get("/v1/status", headers={
            "Host": "presence-1.internal:8086", "Authorization": "Bearer t0k"})
        assert response.status_code == 200
        response = await client.get("/v1/status", headers={
            "Host": "presence-1.internal:8086", "Authorization": "Bearer t0k",
            "Origin": "http://evil.example"})
        assert response.status_code == 403


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # sandboxed frames and file:// pages
    # Another port of this machine is another origin (a dev server, say).
    {"Origin": "http://127.0.0.1:3000"},
    {"Origin": "https://127.0.0.1:8086"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
async def test_cross_origin_requests_are_refused(nursery, headers, method):
    async with admin_app(nursery) as (client, hub):
        a, b = new_address(), new_address()
        path = {"GET": f"/v1/users/{a}/friends", "PUT": f"/v1/friendships/{a}/{b}",
                "POST": "/v1/presence"}[method]
        content = b"[]" if method == "POST" else None
        response = await client.request(method, path, content=content, headers={**JSON, **headers})
        assert response.status_code == 403, response.text
        assert hub.metrics.admin_refused["origin"] == 1
        assert await hub.store.friends_of(a) == frozenset()


@pytest.mark.parametrize("headers", [
    {"Origin": "http://127.0.0.1:8086"},  # the endpoint's own origin
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed into the address bar
])
async def test_same_origin_and_user_initiated_requests_are_served(nursery, headers):
    async with admin_app(nursery) as (client, _):
        assert (await client.get("/v1/status", headers=headers)).status_code == 200


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "text/csv", "application/jsonx",
])
async def test_presence_writes_need_application_json(nursery, content_type):
    async with admin_app(nursery) as (client, hub):
        user = new_address()
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/v1/presence", headers=headers,
                                     content=f'[{{"address": "{user}", "realm": "r", "x": 0, '
                                             '"y": 0}]')
        assert response.status_code == 415
        assert "application/json" in response.json()["error"]
        assert hub.presence_of(user) is None
        assert hub.metrics.admin_refused["content-type"] == 1
        response = await client.post("/v1/presence", json=presence_body(user))
        assert response.status_code == 200
        response = await client.post("/v1/presence", json=presence_body(user),
                                     headers={"Content-Type": "Application/JSON; charset=utf-8"})
        assert response.status_code == 200


@pytest.mark.parametrize("content_type, status", [
    ("text/csv", 200), ("text/csv; charset=utf-8", 200), ("application/x-ndjson", 200),
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), (None, 415),
])
async def test_imports_need_a_friends_file_media_type(nursery, content_type, status):
    async with admin_app(nursery) as (client, _):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/v1/friendships/import", headers=headers,
                                     content=f"{new_address()},{new_address()}\n")
        assert response.status_code == status, response.text


async def test_bodiless_puts_and_deletes_need_no_media_type(nursery):
    # The CLI's `friends add/remove`; a browser must preflight PUT and DELETE anyway.
    async with admin_app(nursery) as (client, _):
        a, b = new_address(), new_address()
        assert (await client.put(f"/v1/friendships/{a}/{b}")).status_code == 201
        assert (await client.delete(f"/v1/friendships/{a}/{b}")).status_code == 200
        response = await client.put(f"/v1/friendships/{a}/{b}", content=b"x",
                                    headers={"Content-Type": "text/plain"})
        assert response.status_code == 415


async def test_refusals_are_counted_in_the_metrics(nursery):
    async with admin_app(nursery) as (client, _):
        await client.get("/metrics", headers={"Host": "evil.example"})
        await client.post("/v1/presence", content=b"[]", headers={"Content-Type": "text/plain"})
        text = (await client.get("/metrics")).text
    assert 'presenced_admin_requests_refused_total{reason="host"} 1.0' in text
    assert 'presenced_admin_requests_refused_total{reason="content-type"} 1.0' in text


# ------------------------------------------------------------ streamed imports


def _lines(n: int, rng: random.Random) -> list[str]:
    return [f"0x{rng.getrandbits(160):040x},0x{rng.getrandbits(160):040x}" for _ in range(n)]


def _parse_in_pieces(body: bytes, sizes: list[int]) -> ImportParser:
    parser = ImportParser()
    pos = 0
    for size in sizes:
        parser.feed(body[pos:pos + size])
        pos += size
    parser.feed(body[pos:], final=True)
    return parser


def _summary(parser: ImportParser) -> tuple:
    return (parser.lines, parser.paired_lines, list(parser.pairs),
            [(e.line, e.message) for e in parser.errors], parser.error_count)


@pytest.mark.parametrize("seed", range(20))
def test_an_import_parses_the_same_in_pieces_of_any_size(seed):
    rng = random.Random(seed)
    lines = _lines(30, rng)
    lines[3] = "bad line"
    lines[7] = '["0x' + "ab" * 20 + '", "0xé"]'  # non-ASCII: split inside a UTF-8 sequence
    lines[9] = "# comment ü"
    lines[12] = "  "  # blank (an empty one could join a \r before it into one \r\n)
    lines[15] = lines[14]  # a duplicate
    body = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines).encode()
    whole = _parse_in_pieces(body, [])
    assert whole.lines == 30 and whole.error_count == 2
    assert [e.line for e in whole.errors] == [4, 8]
    assert whole.paired_lines == 26 and len(whole.pairs) == 25
    sizes = [rng.choice([1, 2, 3, 7, 50]) for _ in range(len(body))]
    assert _summary(_parse_in_pieces(body, sizes)) == _summary(whole)


def test_a_bad_utf8_byte_is_reported_at_its_offset_in_the_body():
    body = b"# fine\n" * 10 + b"\xff\n"
    with pytest.raises(admin.ApiError, match=r"not UTF-8 \(byte 70\)"):
        _parse_in_pieces(body, [3] * 30)


def test_only_the_first_errors_are_kept_but_all_are_counted():
    parser = ImportParser()
    parser.feed(b"bad\n" * (MAX_LISTED_ERRORS + 500), final=True)
    assert parser.error_count == MAX_LISTED_ERRORS + 500
    assert len(parser.errors) == MAX_LISTED_ERRORS


async def test_an_import_over_the_limit_without_a_length_is_refused_as_it_streams(
        nursery, monkeypatch):
    # Driven as ASGI directly: a chunked body whose length nobody declared.
    monkeypatch.setattr(admin, "MAX_IMPORT_BYTES", 100_000)
    hub = Hub(ServerConfig(), MemoryStore())
    await nursery.start(hub.run)
    hub.ready = True  # as the server sets it once it listens
    app = create_app(hub)
    line = f"{new_address()},{new_address()}\n".encode()
    sent = 0
    out: list[dict] = []

    async def receive():
        nonlocal sent
        sent += len(line) * 100
        return {"type": "http.request", "body": line * 100, "more_body": sent < 10_000_000}

    async def send(message):
        out.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/friendships/import",
             "raw_path": b"/v1/friendships/import", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8086"), (b"content-type", b"text/csv"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8086)}
    await app(scope, receive, send)
    assert out[0]["status"] == 413
    assert sent < 200_000  # refused once past the limit, not after reading everything


async def test_a_large_import_is_applied_across_parse_steps(nursery, monkeypatch):
    monkeypatch.setattr(admin, "IMPORT_STEP_BYTES", 4096)
    hub_user = new_address()
    friends = sorted(new_address() for _ in range(3000))
    body = "".join(f"{hub_user},{f}\n" for f in friends).encode()
    async with admin_app(nursery) as (client, hub):
        response = await client.post("/v1/friendships/import", content=body, headers=CSV,
                                     params={"first_line": 10})
        assert response.json() == {"lines": 3000, "friendships": 3000, "duplicates": 0,
                                   "added": 3000, "existing": 0}
        assert sorted(await hub.store.friends_of(hub_user)) == friends
        broken = body + b"not a line\n"
        response = await client.post("/v1/friendships/import", content=broken, headers=CSV,
                                     params={"first_line": 10})
        assert response.status_code == 400
        assert response.json()["errors"] == [
            {"line": 3010, "message": "expected two comma-separated addresses"}]


async def test_a_canary_is_served_while_an_import_is_being_parsed(nursery, monkeypatch):
    """The parse runs off the event loop: with a step of the parse held still, a logged-in
    user's heartbeat is answered. (Parsed on the loop, the held step would hold every
    connection with it, and the import would fail when the hold gives up.)"""
    marker = "0x" + "ab" * 20
    reached = threading.Event()
    release = threading.Event()
    real_parse = admin.parse_friendship_line

    def parse_holding_at_the_marker(text: str):
        if text.startswith(marker):
            reached.set()
            assert release.wait(10), "the canary was not served while the parse was held"
        return real_parse(text)

    monkeypatch.setattr(admin, "parse_friendship_line", parse_holding_at_the_marker)
    rng = random.Random(7)
    lines = _lines(40_000, rng)  # ~3.4 MB, several parse steps
    lines[25_000] = f"{marker},0x{'cd' * 20}"
    body = ("\n".join(lines) + "\n").encode()
    canary = Identity.generate(random.Random(1))
    config = ServerConfig(port=0, admin_port=0)
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, store=MemoryStore(), task_status=task_status))
    url = f"ws://127.0.0.1:{hub.listen_port}/"
    result: dict[str, httpx.Response] = {}

    async def do_import() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub.admin_port}",
                                     trust_env=False, timeout=60) as http:
            result["import"] = await http.post("/v1/friendships/import", content=body,
                                               headers=CSV)

    try:
        async with PresenceClient.connect(url, canary) as client:
            async with trio.open_nursery() as inner:
                inner.start_soon(do_import)
                await trio.to_thread.run_sync(reached.wait, 30)
                assert reached.is_set()
                response = await client.heartbeat("main", 1, 2)
                assert response.WhichOneof("response") == "position"
                assert "import" not in result  # still parsing: the step is held
                release.set()
        assert result["import"].status_code == 200, result["import"].text
        assert result["import"].json()["added"] == 40_000
    finally:
        release.set()
        shutdown.set()


def test_server_config_defaults_keep_the_admin_on_loopback():
    assert admin.is_loopback(replace(ServerConfig()).admin_host)
