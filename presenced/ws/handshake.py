"""The WebSocket opening handshake (RFC 6455 §4), both sides, without I/O.

Server side: `ServerHandshake` reads an HTTP/1.1 upgrade request from bytes
as they arrive (at most `max_bytes` of it), and answers with the bytes of a
101 response (`Accepted`) or of a short 400/426 rejection (`Rejected`);
bytes the client sent after the request are kept (`Accepted.trailing`), they
are its first frames. Client side: `ClientHandshake` builds the request and
checks the response, keeping what follows it the same way.

Why our own parser rather than wsproto's `H11Handshake` (h11): a login
begins with this handshake, and logins must be cheap (issue 11 asks for
3,000 full logins per second per core, AuthChain verification included).
bench/ws_handshake.py measures the server side of both on the same request;
h11's general HTTP/1.1 machinery (event objects, header normalisation,
state tracking for a connection that will never speak HTTP again) costs
several times what this does. The accept token is wsproto's
(`generate_accept_token`), and the connection after the handshake is a
`wsproto.connection.Connection` (see `codec`), as hypercorn's ws_stream does.

No extension is ever negotiated, and an offered one is ignored (RFC 6455
lets a server accept none): permessage-deflate, the only one in use, keeps
a zlib stream per direction per connection (hundreds of KiB at the default
window; even the smallest windows are several times our 12 KiB per user),
costs CPU to compress messages of a few dozen bytes that do not shrink, and
marks every frame with RSV1, which the splitter (`frames`) must leave to
wsproto. No subprotocol is selected either: the clients of presenced
(Decentraland's @dcl/rpc over a plain WebSocket) do not ask for one.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from wsproto.utilities import generate_accept_token

__all__ = [
    "MAX_REQUEST_BYTES",
    "Accepted",
    "ClientHandshake",
    "HandshakeFailed",
    "Rejected",
    "ServerHandshake",
    "UpgradeRequest",
]

# Browsers send a few hundred bytes; cookies for the site can add a few KiB.
MAX_REQUEST_BYTES = 8192
MAX_RESPONSE_BYTES = 16384

# What a header name (an HTTP token) is made of.
_TOKEN_CHARS = (b"!#$%&'*+-.^_`|~0123456789"
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_RESPONSE_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: ")
_REASONS = {400: "Bad Request", 426: "Upgrade Required"}
# What a 426 tells the client to do instead.
_UPGRADE_HEADERS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"


class UpgradeRequest:
    """The request a client upgraded with: its target and its headers.

    `headers` maps lower-case names to values (repeated headers joined with
    ", ", as HTTP allows); names and values are decoded as Latin-1.
    """

    __slots__ = ("target", "headers")

    def __init__(self, target: str, headers: dict[str, str]) -> None:
        self.target = target
        self.headers = headers

    def __repr__(self) -> str:
        return f"UpgradeRequest({self.target!r}, {self.headers!r})"


class Accepted:
    """Server: send `response`, then speak WebSocket; `trailing` are the first frame bytes."""

    __slots__ = ("response", "request", "trailing")

    def __init__(self, response: bytes, request: UpgradeRequest, trailing: bytes) -> None:
        self.response = response
        self.request = request
        self.trailing = trailing


class Rejected:
    """Server: send `response` and close the connection."""

    __slots__ = ("response", "status", "reason")

    def __init__(self, status: int, reason: str, extra_headers: str = "") -> None:
        self.status = status
        self.reason = reason
        body = (reason + "\n").encode()
        self.response = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n{extra_headers}"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

    def __repr__(self) -> str:
        return f"Rejected({self.status}, {self.reason!r})"


class HandshakeFailed(Exception):
    """Client: the server refused the upgrade or answered something that is not one.

    `status` is the response's HTTP status when there was a status line.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Head:
    """Accumulates bytes until the blank line that ends an HTTP head."""

    __slots__ = ("max_bytes", "_buf", "_scanned")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = b""
        # Where the search for the blank line resumes: a slow client sending
        # one byte at a time costs a scan of the new bytes only.
        self._scanned = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """(head without the blank line, bytes after it) once complete, else None.

        Raises ValueError past `max_bytes` without a complete head.
        """
        buf = self._buf + data if self._buf else data
        start = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", start)
        if end >= 0:
            after = end + 4
        else:
            # Bare LF line ends, as h11 tolerates (rare: looked for second).
            end = buf.find(b"\n\n", start)
            if end >= 0:
                after = end + 2
                if end and buf[end - 1] == 0x0D:  # "\r\n\n"
                    end -= 1
            elif (end := buf.find(b"\n\r\n", start)) >= 0:
                after = end + 3
        if end < 0:
            if len(buf) > self.max_bytes:
                raise ValueError(f"no end of the head within {self.max_bytes} bytes")
            self._buf = buf
            self._scanned = len(buf)
            return None
        if end > self.max_bytes:
            raise ValueError(f"no end of the head within {self.max_bytes} bytes")
        self._buf = b""
        return buf[:end], buf[after:]


def _parse_head(head: bytes) -> tuple[bytes, dict[str, str]]:
    """(start line, headers) of an HTTP head; ValueError when it is malformed."""
    text = head.replace(b"\r\n", b"\n")
    if b"\r" in text or b"\x00" in text:
        raise ValueError("stray CR or NUL in the head")
    lines = text.split(b"\n")
    start = lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_CHARS):
            # Also refuses obsolete line folding and whitespace before the colon.
            raise ValueError(f"malformed header line {line[:40]!r}")
        key = name.lower().decode("latin-1")
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "host":
                raise ValueError("more than one Host header")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    return start, headers


def _tokens(value: str | None) -> list[str]:
    return [t.strip().lower() for t in value.split(",")] if value else []


class ServerHandshake:
    """The server side of one connection's opening handshake."""

    __slots__ = ("_head",)

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self._head = _Head(max_bytes)

    def receive_data(self, data: bytes) -> Accepted | Rejected | None:
        """The outcome once the request is complete; None while more is needed."""
        try:
            parts = self._head.feed(data)
        except ValueError:
            return Rejected(400, "request head too large")
        if parts is None:
            return None
        head, trailing = parts
        try:
            start, headers = _parse_head(head)
        except ValueError as e:
            return Rejected(400, str(e))
        return _judge(start, headers, trailing)


def _judge(start: bytes, headers: dict[str, str], trailing: bytes) -> Accepted | Rejected:
    method, _, rest = start.partition(b" ")
    target, _, version = rest.partition(b" ")
    if not target or b" " in version or not version.startswith(b"HTTP/"):
        return Rejected(400, "malformed request line")
    if version != b"HTTP/1.1":
        return Rejected(400, "a WebSocket upgrade needs HTTP/1.1")
    if method != b"GET":
        return Rejected(400, "a WebSocket upgrade is a GET request")
    if "host" not in headers:
        return Rejected(400, "missing Host header")
    if "websocket" not in _tokens(headers.get("upgrade")) or "upgrade" not in _tokens(
            headers.get("connection")):
        return Rejected(426, "this is a WebSocket endpoint", _UPGRADE_HEADERS)
    if headers.get("sec-websocket-version") != "13":
        return Rejected(426, "unsupported WebSocket version (13 only)",
                        "Sec-WebSocket-Version: 13\r\n")
    key = headers.get("sec-websocket-key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return Rejected(400, "invalid Sec-WebSocket-Key")
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        # Its body would be read as WebSocket frames.
        return Rejected(400, "an upgrade request has no body")
    response = _RESPONSE_101 + generate_accept_token(key.encode()) + b"\r\n\r\n"
    return Accepted(response, UpgradeRequest(target.decode("latin-1"), headers), trailing)


class ClientHandshake:
    """The client side: `request` to send, then `receive_data` until it returns bytes.

    `host` is the Host header's value (with the port unless it is the
    scheme's default), `resource` the path and query.
    """

    __slots__ = ("request", "subprotocols", "subprotocol", "_accept", "_head")

    def __init__(self, host: str, resource: str = "/", *, subprotocols: Sequence[str] = (),
                 extra_headers: Sequence[tuple[str, str]] = (),
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        key = base64.b64encode(os.urandom(16))
        self._accept = generate_accept_token(key).decode()
        self.subprotocols = tuple(subprotocols)
        # The subprotocol the server chose, if any.
        self.subprotocol: str | None = None
        lines = [f"GET {resource} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
                 "Sec-WebSocket-Version: 13"]
        if self.subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(self.subprotocols))
        lines += [f"{name}: {value}" for name, value in extra_headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._head = _Head(max_bytes)

    def receive_data(self, data: bytes) -> bytes | None:
        """The bytes after the response once it accepted the upgrade; None while
        more is needed. Raises `HandshakeFailed` when the server did not accept."""
        try:
            parts = self._head.feed(data)
        except ValueError as e:
            raise HandshakeFailed(f"bad handshake response: {e}") from None
        if parts is None:
            return None
        head, trailing = parts
        try:
            status_line, headers = _parse_head(head)
        except ValueError as e:
            raise HandshakeFailed(f"bad handshake response: {e}") from None
        version, _, rest = status_line.partition(b" ")
        code, _, phrase = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise HandshakeFailed(f"not an HTTP response: {status_line[:60]!r}")
        status = int(code)
        if status != 101:
            text = phrase.decode("latin-1")
            raise HandshakeFailed(f"handshake refused: {status} {text}".rstrip(), status)
        if "websocket" not in _tokens(headers.get("upgrade")) or "upgrade" not in _tokens(
                headers.get("connection")):
            raise HandshakeFailed("bad handshake response: no Upgrade: websocket", status)
        if headers.get("sec-websocket-accept") != self._accept:
            raise HandshakeFailed("bad handshake response: wrong Sec-WebSocket-Accept", status)
        if headers.get("sec-websocket-extensions"):
            raise HandshakeFailed("bad handshake response: an extension nobody offered",
                                  status)
        chosen = headers.get("sec-websocket-protocol")
        if chosen is not None:
            if chosen not in self.subprotocols:
                raise HandshakeFailed(f"bad handshake response: subprotocol {chosen!r} "
                                      "was not offered", status)
            self.subprotocol = chosen
        return trailing
