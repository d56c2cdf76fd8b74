"""One WebSocket connection over a non-blocking socket: handshake, codec, poller, send queue.

A `Transport` owns a connected socket. Its reads come from a `Poller`
(no task of its own): the opening handshake (`handshake`, either role),
then frames through its `Codec`, each event handed at once to the owner's
`Handler`. Its writes are synchronous: a frame goes to the kernel with one
non-blocking `send()` right away, and only what the kernel does not take
waits in a queue, bounded in bytes (a send that would pass the bound
returns False: a slow consumer, for the owner to deal with). A writer task
is started, through the `spawn` function the owner gives (a nursery's
`start_soon`), only while bytes wait, and ends when they are written. So an
idle connection has no task at all.

The end of a connection, whichever way it comes, is reported once, by
`handler.on_closed(code, reason)`, as soon as no more messages will be
delivered:

- the peer closes: its code; the answer goes out and the socket is closed
  (the closing handshake is complete);
- we close (`close()`): the peer's answer's code when it comes; messages
  after our close are dropped; with no answer within `close_timeout_s`
  (a task started for the closing only), 1006 and the socket is dropped;
- the peer breaks the protocol or the size limit (`codec.Failed`), the
  handler fails, or the peer pings faster than it reads: our close code at
  once; the close frame is sent, then the write side is shut and input is
  drained until the peer closes or the timeout (closing a socket with
  unread input makes the kernel reset it, which can destroy the close frame
  before the peer reads it);
- the stream ends or breaks, or the handshake fails: 1006.

In the client role the socket may carry TLS (`connect(ssl_context=...)`):
an `ssl.SSLObject` between the socket and the codec, in memory, so a wss://
connection is read by the same poller and written by the same queue.

The handler's methods run in the poller's task and must not block; an
exception from one is logged and ends the connection with 1011. A handler
may call the transport from them (send, close) and from anywhere else in
the same trio run.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from presenced.closes import Close
from presenced.ws.codec import (
    ABNORMAL_CLOSURE,
    NORMAL_CLOSURE,
    CloseReceived,
    Codec,
    ConnectionLost,
    ConnectionState,
    Failed,
    Pong,
)
from presenced.ws.handshake import (
    MAX_REQUEST_BYTES,
    ClientHandshake,
    HandshakeFailed,
    Rejected,
    ServerHandshake,
    UpgradeRequest,
)
from presenced.ws.poller import Poller

__all__ = ["Handler", "Spawn", "Transport", "accept", "connect", "open_socket"]

log = logging.getLogger("presenced.ws")

RECV_BYTES = 65536
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class Handler(Protocol):
    """What a transport reports to its owner (see the module docstring)."""

    def on_open(self, request: UpgradeRequest | None) -> None:
        """The handshake is done (server: the client's request; client: None)."""

    def on_message(self, message: bytes | str) -> None: ...

    def on_pong(self, payload: bytes) -> None: ...

    def on_closed(self, code: int, reason: str) -> None: ...


_TLS_HANDSHAKE = -1
_HANDSHAKE = 0
_OPEN = 1
_CLOSING = 2
_CLOSED = 3

# What the writer does once the queue is empty.
_THEN_NOTHING = 0
_THEN_SHUTDOWN = 1
_THEN_CLOSE = 2


class Transport:
    """Use `accept()` (server) or `connect()` (client)."""

    __slots__ = ("sock", "fd", "codec", "handler", "poller", "spawn", "queue_limit_bytes",
                 "close_timeout_s", "opened", "handshake_error", "tls", "_state", "_handshake",
                 "_pending", "_writing", "_then", "_notified", "_timer", "_done")

    def __init__(self, sock: socket.socket, codec: Codec,
                 handshake: ServerHandshake | ClientHandshake, poller: Poller,
                 handler: Handler, *, spawn: Spawn, queue_limit_bytes: int,
                 close_timeout_s: float, tls: _Tls | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.codec = codec
        self.handler = handler
        self.poller = poller
        self.spawn = spawn
        self.queue_limit_bytes = queue_limit_bytes
        self.close_timeout_s = close_timeout_s
        # The handshake succeeded (on_open was called).
        self.opened = False
        # Client: why the server did not accept the upgrade.
        self.handshake_error: HandshakeFailed | None = None
        # TLS (client role only), done in memory between the socket and the codec.
        self.tls = tls
        self._state = _TLS_HANDSHAKE if tls is not None else _HANDSHAKE
        self._handshake: ServerHandshake | ClientHandshake | None = handshake
        self._pending = bytearray()
        self._writing = False
        self._then = _THEN_NOTHING
        self._notified = False
        self._timer = False
        self._done: trio.Event | None = None

    # ------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        """Messages may be sent and will be delivered."""
        return self._state is _OPEN

    @property
    def closed(self) -> bool:
        """The socket is closed."""
        return self._state is _CLOSED

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def detach(self) -> None:
        """Forget the handler and `spawn` (at the owner's end: they usually hold it)."""
        self.handler = _NO_HANDLER
        self.spawn = _no_spawn

    # ------------------------------------------------------------- sending

    def send_binary(self, payload: bytes) -> bool:
        """Send one binary message; False (nothing queued) if the queue would pass its bound.

        True without sending once the connection is closing.
        """
        if self._state is not _OPEN:
            return True
        data = self.codec.binary(payload)
        pending = self._pending
        if pending and len(pending) + len(data) > self.queue_limit_bytes:
            return False
        self._write(data)
        return True

    def send_binaries(self, payloads: list[bytes]) -> bool:
        """Several binary messages at once (one `send()`); False as `send_binary`."""
        if self._state is not _OPEN:
            return True
        data = self.codec.binaries(payloads)
        pending = self._pending
        if pending and len(pending) + len(data) > self.queue_limit_bytes:
            return False
        self._write(data)
        return True

    def send_text(self, text: str) -> bool:
        if self._state is not _OPEN:
            return True
        data = self.codec.text(text)
        pending = self._pending
        if pending and len(pending) + len(data) > self.queue_limit_bytes:
            return False
        self._write(data)
        return True

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (the pong comes to `handler.on_pong`); outside the queue's bound."""
        if self._state is _OPEN:
            self._write(self.codec.ping(payload))

    # ------------------------------------------------------------- closing

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (see the module docstring); returns at once."""
        state = self._state
        if state is _HANDSHAKE or state is _TLS_HANDSHAKE:
            self._notify(ABNORMAL_CLOSURE, "closed during the handshake")
            self._teardown()
        elif state is _OPEN:
            self._state = _CLOSING
            # A close frame is tiny and sent once: it may pass the bound.
            self._write(self.codec.close(code, reason))
            self._start_timer()

    async def aclose(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """`close()`, then wait until the socket is closed."""
        self.close(code, reason)
        await self.wait_closed()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a closing handshake."""
        self._notify(ABNORMAL_CLOSURE, reason)
        self._teardown()

    async def wait_closed(self) -> None:
        if self._state is _CLOSED:
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    # ------------------------------------------------------------- reading

    def _start(self, first: bytes = b"") -> None:
        if self.tls is not None:
            self.poller.add(self.fd, self._on_readable)
            self._tls_handshake(None)
            return
        if first:
            self._write(first)
        self.poller.add(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        """The poller saw the socket readable (or ended)."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if self.tls is not None:
            self._on_tls_data(data)
        elif data and self._state is _OPEN:
            self._deliver(self.codec.receive(data))
        else:
            self._on_plaintext(data)

    def _on_plaintext(self, data: bytes) -> None:
        state = self._state
        if state is _HANDSHAKE:
            self._on_handshake_data(data)
        elif state is _OPEN or state is _CLOSING and self.opened:
            codec = self.codec
            if data:
                self._deliver(codec.receive(data))
            else:
                self._deliver(codec.receive_eof())
                # The peer is gone (after the close, or after our failure's close).
                self._teardown()
        elif state is _CLOSING and not data:
            self._teardown()  # a refused handshake: the client has read the answer
        # Else closed, or a refused handshake's client still sending: dropped.

    def _deliver(self, events: list[object]) -> None:
        handler = self.handler
        try:
            for event in events:
                kind = type(event)
                if kind is bytes or kind is str:
                    if self._state is _OPEN:
                        handler.on_message(event)  # type: ignore[arg-type]
                elif kind is Pong:
                    handler.on_pong(event.payload)  # type: ignore[attr-defined]
                else:
                    self._on_end(event)
        except Exception:
            log.exception("a WebSocket handler failed")
            self._fail(Close.INTERNAL_ERROR)
        if self.codec.outgoing:
            self._send_outgoing()

    def _on_end(self, event: object) -> None:
        self._send_outgoing()
        if type(event) is CloseReceived:
            # Both close frames are out: the closing handshake is complete.
            if self._state is _OPEN:
                self._state = _CLOSING
            self._notify(event.code, event.reason)  # type: ignore[attr-defined]
            self._after_flush(_THEN_CLOSE)
        elif type(event) is Failed:
            close = event.close  # type: ignore[attr-defined]
            self._notify(close.code, close.text(event.detail))  # type: ignore[attr-defined]
            self._state = _CLOSING
            self._after_flush(_THEN_SHUTDOWN)
            self._start_timer()
        else:
            assert type(event) is ConnectionLost
            self._notify(ABNORMAL_CLOSURE, "connection lost")
            self._teardown()

    def _on_handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        if not data:
            self._notify(ABNORMAL_CLOSURE, "connection closed during the handshake")
            self._teardown()
            return
        if type(handshake) is ServerHandshake:
            outcome = handshake.receive_data(data)
            if outcome is None:
                return
            self._handshake = None
            self._write(outcome.response)
            if type(outcome) is Rejected:
                self._state = _CLOSING
                self._notify(ABNORMAL_CLOSURE,
                             f"handshake refused: {outcome.status} {outcome.reason}")
                self._after_flush(_THEN_SHUTDOWN)
                self._start_timer()
                return
            request: UpgradeRequest | None = outcome.request  # type: ignore[union-attr]
            trailing = outcome.trailing  # type: ignore[union-attr]
        else:
            assert isinstance(handshake, ClientHandshake)
            try:
                received = handshake.receive_data(data)
            except HandshakeFailed as e:
                self.handshake_error = e
                self._notify(ABNORMAL_CLOSURE, str(e))
                self._teardown()
                return
            if received is None:
                return
            self._handshake = None
            request, trailing = None, received
        self._state = _OPEN
        self.opened = True
        try:
            self.handler.on_open(request)
        except Exception:
            log.exception("a WebSocket handler failed")
            self._fail(Close.INTERNAL_ERROR)
            return
        if trailing and self._state is _OPEN:
            self._deliver(self.codec.receive(trailing))

    # ----------------------------------------------------------------- TLS

    def _tls_handshake(self, data: bytes | None) -> None:
        tls = self.tls
        assert tls is not None
        if data is not None:
            tls.feed(data)
        try:
            tls.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._write_raw(tls.take())
            if data == b"":
                self._handshake_failed("connection closed during the TLS handshake")
            return
        except (ssl.SSLError, ValueError) as e:
            self._write_raw(tls.take())
            self._handshake_failed(f"TLS: {e}")
            return
        self._write_raw(tls.take())
        self._state = _HANDSHAKE
        handshake = self._handshake
        assert isinstance(handshake, ClientHandshake)
        self._write(handshake.request)

    def _handshake_failed(self, reason: str) -> None:
        self.handshake_error = HandshakeFailed(reason)
        self._notify(ABNORMAL_CLOSURE, reason)
        self._teardown()

    def _on_tls_data(self, raw: bytes) -> None:
        tls = self.tls
        assert tls is not None
        state = self._state
        if state is _TLS_HANDSHAKE:
            self._tls_handshake(raw)
            if self._state is not _HANDSHAKE:
                return
            # Data may have come with the last handshake records: read on.
        elif state is _CLOSED:
            return
        else:
            tls.feed(raw)
        data, ended = tls.decrypt()
        answer = tls.take()  # TLS's own records (alerts, key updates)
        if answer:
            self._write_raw(answer)
        if data:
            self._on_plaintext(data)
        if ended and self._state is not _CLOSED:
            self._on_plaintext(b"")

    # ----------------------------------------------------------- the end

    def _notify(self, code: int, reason: str) -> None:
        if self._notified:
            return
        self._notified = True
        try:
            self.handler.on_closed(code, reason)
        except Exception:
            log.exception("a WebSocket handler failed while closing")

    def _fail(self, close: Close, detail: str | None = None) -> None:
        """End the connection from our side with `close`, reported at once."""
        if self._state is _OPEN:
            self._state = _CLOSING
            self._write(self.codec.close(close.code, close.text(detail)))
            self._start_timer()
        elif self._state is _HANDSHAKE or self._state is _TLS_HANDSHAKE:
            self._teardown()
        self._notify(close.code, close.text(detail))

    def _send_outgoing(self) -> None:
        codec = self.codec
        if not codec.outgoing:
            return
        data = codec.take_outgoing()
        pending = self._pending
        if (codec.state is ConnectionState.OPEN and pending
                and len(pending) + len(data) > self.queue_limit_bytes):
            # Only pongs are due while the codec is open: the peer pings
            # faster than it reads what we send.
            self._fail(Close.SLOW_CONSUMER, "pings unanswered")
            return
        self._write(data)

    def _after_flush(self, then: int) -> None:
        if self._pending:
            self._then = max(self._then, then)
            if then == _THEN_CLOSE:
                self._start_timer()
        elif then == _THEN_CLOSE:
            self._teardown()
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _start_timer(self) -> None:
        if not self._timer and self._state is not _CLOSED:
            self._timer = True
            self.spawn(self._close_timer)

    async def _close_timer(self) -> None:
        with trio.move_on_after(self.close_timeout_s):
            await self.wait_closed()
        if self._state is not _CLOSED:
            self._notify(ABNORMAL_CLOSURE, "closing handshake timed out")
            self._teardown()

    def _teardown(self) -> None:
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        self._handshake = None
        self.poller.remove(self.fd)
        sock = self.sock
        trio.lowlevel.notify_closing(sock)
        sock.close()
        self._pending.clear()
        if self._done is not None:
            self._done.set()

    # ------------------------------------------------------------- writing

    def _write(self, data: bytes) -> None:
        """Send now what the kernel takes; queue the rest for the writer (no bound here)."""
        if self.tls is not None:
            if self._state is _CLOSED:
                return
            try:
                data = self.tls.encrypt(data)
            except ssl.SSLError:
                return  # broken: reading will see it
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        pending = self._pending
        if not pending:
            if self._state is _CLOSED:
                return
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # The peer is gone: reading will see it and end the connection.
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        pending += data
        if not self._writing:
            self._writing = True
            self.spawn(self._writer)

    async def _writer(self) -> None:
        """Write what the synchronous path could not, then end."""
        sock = self.sock
        pending = self._pending
        try:
            while pending:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(pending)
                except BlockingIOError:
                    continue
                del pending[:sent]
        except (OSError, trio.ClosedResourceError):
            # Broken (reading will see it) or torn down under us.
            pending.clear()
            return
        finally:
            self._writing = False
        then, self._then = self._then, _THEN_NOTHING
        if then == _THEN_CLOSE:
            self._teardown()
        elif then == _THEN_SHUTDOWN:
            self._shutdown_write()


class _Tls:
    """A TLS client in memory (`ssl.SSLObject` over two BIOs)."""

    __slots__ = ("obj", "_in", "_out")

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    def feed(self, raw: bytes) -> None:
        if raw:
            self._in.write(raw)
        else:
            self._in.write_eof()

    def take(self) -> bytes:
        """Bytes TLS wants sent."""
        return self._out.read()

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self._out.read()

    def decrypt(self) -> tuple[bytes, bool]:
        """(the plaintext available, the stream ended)."""
        chunks = []
        ended = False
        try:
            while chunk := self.obj.read(RECV_BYTES):
                chunks.append(chunk)
            ended = True  # read() returns b"" at a clean end
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            ended = True  # an unclean end or a broken stream: lost either way
        return b"".join(chunks), ended


class _NoHandler:
    def on_open(self, request: UpgradeRequest | None) -> None:
        pass

    def on_message(self, message: bytes | str) -> None:
        pass

    def on_pong(self, payload: bytes) -> None:
        pass

    def on_closed(self, code: int, reason: str) -> None:
        pass


_NO_HANDLER = _NoHandler()


def _no_spawn(task: Callable[[], Awaitable[None]]) -> None:
    pass


def accept(sock: socket.socket, poller: Poller, handler: Handler, *, spawn: Spawn,
           max_message_bytes: int, queue_limit_bytes: int, close_timeout_s: float = 5.0,
           max_request_bytes: int = MAX_REQUEST_BYTES) -> Transport:
    """Serve a connection a client just opened: the handshake, then frames."""
    transport = Transport(sock, Codec(client=False, max_message_bytes=max_message_bytes),
                          ServerHandshake(max_request_bytes), poller, handler, spawn=spawn,
                          queue_limit_bytes=queue_limit_bytes, close_timeout_s=close_timeout_s)
    transport._start()
    return transport


def connect(sock: socket.socket, poller: Poller, handler: Handler, *, host: str,
            resource: str = "/", spawn: Spawn, max_message_bytes: int,
            queue_limit_bytes: int, close_timeout_s: float = 5.0,
            ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
            ) -> Transport:
    """Open a WebSocket over a connected socket: the request goes out now (after
    the TLS handshake with `ssl_context`), the outcome comes to
    `handler.on_open` (or `on_closed`, with `handshake_error`)."""
    handshake = ClientHandshake(host, resource)
    tls = None
    if ssl_context is not None:
        tls = _Tls(ssl_context, server_hostname or host.rpartition(":")[0] or host)
    transport = Transport(sock, Codec(client=True, max_message_bytes=max_message_bytes),
                          handshake, poller, handler, spawn=spawn,
                          queue_limit_bytes=queue_limit_bytes, close_timeout_s=close_timeout_s,
                          tls=tls)
    transport._start(handshake.request)
    return transport


async def open_socket(host: str, port: int, *, local_address: str | None = None
                      ) -> socket.socket:
    """A connected non-blocking TCP socket (from `local_address` if given), TCP_NODELAY set."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if local_address is not None:
        family = socket.AF_INET6 if ":" in local_address else socket.AF_INET
        infos = [i for i in infos if i[0] == family] or infos
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address is not None:
            # Leave the port to connect(), which may reuse one already taken for
            # another destination: a bind() alone would reserve a whole port.
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local_address, 0))
        err = sock.connect_ex(address)
        if err not in (0, 115):  # EINPROGRESS
            raise OSError(err, os.strerror(err))
        if err:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock
