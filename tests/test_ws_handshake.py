"""presenced.ws.handshake: the opening handshake, both sides, against wsproto's h11 handshake."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import generate_accept_token

from presenced.ws.handshake import (
    Accepted,
    ClientHandshake,
    HandshakeFailed,
    Rejected,
    ServerHandshake,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request(*, method: str = "GET", version: str = "HTTP/1.1", headers: dict | None = None,
            drop: tuple[str, ...] = (), extra: str = "") -> bytes:
    fields = {"Host": "example.org", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": KEY.decode(), "Sec-WebSocket-Version": "13"}
    fields.update(headers or {})
    lines = [f"{method} /chat?x=1 {version}"]
    lines += [f"{k}: {v}" for k, v in fields.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def head_of(response: bytes) -> tuple[str, dict[str, str]]:
    head = response.split(b"\r\n\r\n")[0].decode()
    status, *lines = head.split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_a_valid_request_is_accepted_with_the_rfc_accept_token_and_trailing_bytes_kept():
    outcome = ServerHandshake().receive_data(request() + b"\x82\x80frame")
    assert isinstance(outcome, Accepted)
    status, headers = head_of(outcome.response)
    assert status == "HTTP/1.1 101 Switching Protocols"
    # RFC 6455 §1.3's own example.
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert "sec-websocket-extensions" not in headers
    assert outcome.trailing == b"\x82\x80frame"
    assert outcome.request.target == "/chat?x=1"
    assert outcome.request.headers["host"] == "example.org"


def test_a_request_arriving_byte_by_byte_needs_more_until_its_blank_line():
    handshake = ServerHandshake()
    data = request()
    for i in range(len(data) - 1):
        assert handshake.receive_data(data[i : i + 1]) is None
    assert isinstance(handshake.receive_data(data[-1:]), Accepted)


def test_offered_extensions_and_subprotocols_are_not_taken():
    outcome = ServerHandshake().receive_data(request(headers={
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        "Sec-WebSocket-Protocol": "chat"}))
    assert isinstance(outcome, Accepted)
    _, headers = head_of(outcome.response)
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers


def test_token_lists_and_case_are_read_as_http_says():
    outcome = ServerHandshake().receive_data(request(headers={
        "Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade"}))
    assert isinstance(outcome, Accepted)


def test_bare_lf_line_ends_are_tolerated():
    outcome = ServerHandshake().receive_data(request().replace(b"\r\n", b"\n"))
    assert isinstance(outcome, Accepted)


@pytest.mark.parametrize("data, status, why", [
    (request(drop=("Host",)), 400, "missing Host"),
    (request(method="POST"), 400, "not GET"),
    (request(version="HTTP/1.0"), 400, "HTTP/1.0"),
    (b"GET /\r\nHost: x\r\n\r\n", 400, "no version"),
    (request(drop=("Upgrade",)), 426, "no Upgrade"),
    (request(drop=("Connection",)), 426, "no Connection: Upgrade"),
    (request(headers={"Upgrade": "h2c"}), 426, "another upgrade"),
    (request(headers={"Sec-WebSocket-Version": "8"}), 426, "old version"),
    (request(drop=("Sec-WebSocket-Key",)), 400, "no key"),
    (request(headers={"Sec-WebSocket-Key": "c2hvcnQ="}), 400, "short key"),
    (request(headers={"Sec-WebSocket-Key": "not base64 at all!!!!!!="}), 400, "bad key"),
    (request(headers={"Content-Length": "5"}), 400, "a body"),
    (request(headers={"Transfer-Encoding": "chunked"}), 400, "a chunked body"),
    (request(extra="Bad Header : x\r\n"), 400, "space before the colon"),
    (request(extra="X: a\r\n folded\r\n"), 400, "obsolete line folding"),
    (request(extra="X: a\x00b\r\n"), 400, "NUL in a value"),
    (request(extra="X: a\rb\r\n"), 400, "bare CR"),
    (request(extra="Host: second.example\r\n"), 400, "two Hosts"),
])
def test_bad_requests_get_a_short_rejection(data, status, why):
    outcome = ServerHandshake().receive_data(data)
    assert isinstance(outcome, Rejected), why
    assert outcome.status == status, why
    line, headers = head_of(outcome.response)
    assert line.startswith(f"HTTP/1.1 {status} "), why
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(outcome.response.split(b"\r\n\r\n", 1)[1])
    if status == 426:
        assert headers["sec-websocket-version"] == "13"


def test_a_request_head_over_the_bound_is_rejected_without_waiting_for_its_end():
    handshake = ServerHandshake(max_bytes=1024)
    assert handshake.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 900) is None
    outcome = handshake.receive_data(b"a" * 200)
    assert isinstance(outcome, Rejected) and outcome.status == 400
    # In one piece too, end included.
    big = request(extra="X: " + "a" * 2000 + "\r\n")
    assert isinstance(ServerHandshake(max_bytes=1024).receive_data(big), Rejected)


def test_wsprotos_client_request_is_accepted_and_our_response_satisfies_it():
    client = H11Handshake(ConnectionType.CLIENT)
    data = client.send(Request(host="example.org", target="/"))
    outcome = ServerHandshake().receive_data(data)
    assert isinstance(outcome, Accepted)
    client.receive_data(outcome.response)
    assert [type(e) for e in client.events()] == [AcceptConnection]


def test_our_client_request_is_accepted_by_wsproto_and_by_us():
    ours = ClientHandshake("example.org:8085", "/x")
    server = H11Handshake(ConnectionType.SERVER)
    server.receive_data(ours.request)
    (event,) = list(server.events())
    assert isinstance(event, Request) and event.host == "example.org:8085"
    response = server.send(AcceptConnection())
    assert ours.receive_data(response + b"first") == b"first"
    outcome = ServerHandshake().receive_data(ClientHandshake("h").request)
    assert isinstance(outcome, Accepted)


def accept_response(handshake: ClientHandshake, extra: str = "") -> bytes:
    key = head_of(handshake.request)[1]["sec-websocket-key"].encode()
    token = generate_accept_token(key).decode()
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {token}\r\n{extra}\r\n").encode()


def test_the_client_waits_for_the_whole_response():
    handshake = ClientHandshake("h")
    response = accept_response(handshake)
    assert handshake.receive_data(response[:-1]) is None
    assert handshake.receive_data(response[-1:]) == b""


@pytest.mark.parametrize("response, status", [
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: wrong\r\n\r\n", 101),
    (b"SSH-2.0-OpenSSH\r\n\r\n", None),
])
def test_the_client_refuses_what_is_not_an_acceptance(response, status):
    with pytest.raises(HandshakeFailed) as info:
        ClientHandshake("h").receive_data(response)
    assert info.value.status == status


def test_the_client_refuses_an_extension_or_subprotocol_it_did_not_offer():
    handshake = ClientHandshake("h")
    with pytest.raises(HandshakeFailed, match="extension"):
        handshake.receive_data(accept_response(
            handshake, "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    handshake = ClientHandshake("h", subprotocols=["a"])
    with pytest.raises(HandshakeFailed, match="subprotocol"):
        handshake.receive_data(accept_response(handshake, "Sec-WebSocket-Protocol: b\r\n"))
    handshake = ClientHandshake("h", subprotocols=["a"])
    handshake.receive_data(accept_response(handshake, "Sec-WebSocket-Protocol: a\r\n"))
    assert handshake.subprotocol == "a"


def test_an_endless_response_head_fails_the_client():
    handshake = ClientHandshake("h", max_bytes=100)
    with pytest.raises(HandshakeFailed):
        handshake.receive_data(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 50)
