"""One client connection: login, then RPC frames in and out.

Each connection runs three tasks in its own nursery: the reader (frames in,
through the protocol core, into the engine), the writer (frames out to the
socket) and the keepalive (pings, and the check for stuck subscribers).

Stream items are not produced by tasks: a subscription sends its next item
the moment both conditions hold (the client acked the previous one and the
mailbox has updates), from whichever code made the second one true, the
engine delivering a friend's change or the reader handling an ACK. So a
delivered update costs no task switch beyond the writer's.

Anything a connection does wrong ends that connection only: the handler
catches everything, and a slow client's queue overflows into a disconnect,
never into anyone else's latency.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from sys import intern

import trio
from google.protobuf.message import DecodeError
from trio_websocket import ConnectionClosed, WebSocketConnection

from presenced.auth import AuthError, verify_login
from presenced.engine import BadRequest, Mailbox
from presenced.rpc.events import (
    PortClosed,
    StreamCancelled,
    StreamReady,
    StreamRequest,
    UnaryRequest,
)
from presenced.rpc.frames import ProtocolError
from presenced.rpc.modules import module_registry
from presenced.rpc.server import RpcServerConnection
from presenced.server import closecodes
from presenced.server.hub import Hub
from presenced.server.presence_module import (
    BATCH_SIZE,
    GET_ONLINE_FRIENDS,
    MODULE_NAME,
    POSITION_HEARTBEAT,
    PRESENCE_MODULE,
    SUBSCRIBE,
    decode_payload,
    decode_position_payload,
    encode_bad_request,
    encode_heartbeat_outcome,
    encode_presences,
)
from presenced.server.ws_receiver import attach_receiver, detach_receiver
from presenced.server.ws_sender import FrameSender
from presenced.store.base import StoreUnavailable

log = logging.getLogger("presenced.connection")

MODULES = module_registry(PRESENCE_MODULE)


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


class _Stream:
    """A server stream; `pump` sends its next item when it may."""

    __slots__ = ("conn", "stream_id", "blocked_since")

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        # trio time since which items have been waiting for the client's ACK;
        # None while nothing waits. A client that lets this grow old is stuck.
        self.blocked_since: float | None = None

    def pump(self) -> None:
        raise NotImplementedError

    def has_pending(self) -> bool:
        raise NotImplementedError

    def cancel(self) -> None:
        """The client cancelled, the port closed or the connection ended."""


class _OnlineFriendsStream(_Stream):
    __slots__ = ("batches",)

    def __init__(self, conn: Connection, stream_id: int, batches: list[bytes]) -> None:
        super().__init__(conn, stream_id)
        self.batches = batches
        self.blocked_since = trio.current_time()

    def has_pending(self) -> bool:
        return bool(self.batches)

    def pump(self) -> None:
        conn = self.conn
        rpc = conn.rpc
        if not rpc.stream_can_send(self.stream_id):
            return
        if self.batches:
            rpc.stream_send(self.stream_id, self.batches.pop(0))
            self.blocked_since = trio.current_time() if self.batches else None
        else:
            rpc.stream_close(self.stream_id)
            conn.streams.pop(self.stream_id, None)
        conn.flush()


class _SubscriptionStream(_Stream):
    __slots__ = ("mailbox",)

    def __init__(self, conn: Connection, stream_id: int, mailbox: Mailbox) -> None:
        super().__init__(conn, stream_id)
        self.mailbox = mailbox
        mailbox.on_ready = self._pump_safely

    def _pump_safely(self) -> None:
        # Runs inside whichever connection's handler changed a friend's
        # presence: a failure here must end this connection, not that one.
        try:
            self.pump()
        except Exception:
            self.conn.hub.metrics.handler_errors += 1
            log.exception("sending to %s failed", self.conn._who())
            self.conn.kill(closecodes.INTERNAL_ERROR, "internal error", "error")

    def has_pending(self) -> bool:
        return bool(self.mailbox.pending)

    def pump(self) -> None:
        conn = self.conn
        rpc = conn.rpc
        mailbox = self.mailbox
        if mailbox.closed:
            # Replaced by a newer subscription on this connection.
            mailbox.on_ready = None
            if conn.streams.pop(self.stream_id, None) is not None:
                rpc.stream_close(self.stream_id)
                conn.flush()
            return
        if not mailbox.pending:
            return
        if not rpc.stream_can_send(self.stream_id):
            if self.blocked_since is None:
                self.blocked_since = trio.current_time()
            return
        batch = mailbox.take(BATCH_SIZE)
        rpc.stream_send(self.stream_id, encode_presences(batch))
        self.blocked_since = trio.current_time() if mailbox.pending else None
        metrics = conn.hub.metrics
        metrics.updates_delivered += len(batch)
        metrics.stream_items_sent += 1
        # Only changes are timed: snapshots of friends already online (at
        # subscribe time, or a new friendship) announce no change.
        now = conn.hub.now_ms()
        observe = metrics.notify_latency.observe
        for presence in batch:
            changed = presence.changed_ms
            if changed is not None:
                observe(max(0, now - changed) / 1000.0)
        conn.flush()

    def cancel(self) -> None:
        self.mailbox.on_ready = None
        self.conn.hub.engine.unsubscribe(self.conn.session_id, self.mailbox)


class Connection:
    def __init__(self, hub: Hub, ws: WebSocketConnection, peer: str) -> None:
        self.hub = hub
        self.ws = ws
        self.peer = peer
        self.address: str | None = None
        self.session_id = 0
        self.rpc = RpcServerConnection(MODULES, hub.port_ids)
        self.streams: dict[int, _Stream] = {}
        self.sender = FrameSender(ws, hub.config.send_queue_bytes, self._spawn)
        # trio time of the last frame received; the hub's keepalive reads it.
        self.last_rx = trio.current_time()
        self._touched_rx = self.last_rx
        self._pinging = False
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._close: tuple[int, str, str] | None = None

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Serve the connection until it ends; never raises (but Cancelled)."""
        hub = self.hub
        metrics = hub.metrics
        metrics.connections_opened += 1
        hub.live.add(self)
        close: tuple[int, str] = (closecodes.INTERNAL_ERROR, "internal error")
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._close is None:
                    await self._serve()
            code, reason, cause = self._close or (1000, "", "client")
            metrics.disconnects[cause] += 1
            if cause not in ("client", "shutdown", "auth"):
                log.info("closing %s (%s): %s", self._who(), cause, reason)
            close = (code, reason)
        except Exception:
            metrics.handler_errors += 1
            log.exception("connection %s failed", self._who())
        finally:
            # The session ends now, not after the closing handshake, which an
            # unresponsive client can stretch to the full timeout.
            hub.live.discard(self)
            if self.session_id:
                self._cleanup()
        try:
            await self._close_now(*close)
        finally:
            detach_receiver(self.ws)
            self.sender.detach()

    async def _serve(self) -> None:
        hub = self.hub
        address = await self._login()
        if address is None:
            return
        # The same string as in friends' friend sets (the stores intern them).
        address = intern(address)
        try:
            friends = await hub.store.friends_of(address)
        except StoreUnavailable:
            self._close = (closecodes.TRY_AGAIN_LATER, "store unavailable, try again", "store")
            return
        self.address = address
        self.session_id = next(hub.session_ids)
        hub.engine.open_session(self.session_id, address, friends, hub.now_ms())
        # This frame lives as long as the connection: keep no second copy.
        del friends
        hub.connections[self.session_id] = self
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.rpc.server_ready()
            self.flush()
            # Frames are handled in trio-websocket's reader task from here on;
            # this task only waits for the end.
            attach_receiver(self.ws, self._on_message)
            try:
                await self.ws.get_message()
            except ConnectionClosed as e:
                cause = self._closed_cause(e)
                if self._close is None:
                    self._close = (1000, "", cause)
            nursery.cancel_scope.cancel()
        self._nursery = None

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(task)

    def kill(self, code: int, reason: str, cause: str) -> None:
        """End this connection from anywhere, without waiting (sync on purpose)."""
        if self._close is None:
            self._close = (code, reason, cause)
        if self._scope is not None:
            self._scope.cancel()

    def _who(self) -> str:
        return f"{self.address or '-'}@{self.peer}"

    async def _close_now(self, code: int, reason: str) -> None:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            await self.ws.aclose(code, _close_reason(reason))

    def _cleanup(self) -> None:
        hub = self.hub
        hub.connections.pop(self.session_id, None)
        dropped = 0
        for stream in self.streams.values():
            if isinstance(stream, _SubscriptionStream):
                dropped += len(stream.mailbox.pending)
            stream.cancel()
        hub.metrics.updates_dropped += dropped
        self.streams.clear()
        self.rpc.close()
        hub.engine.close_session(self.session_id, hub.now_ms())

    # ---------------------------------------------------------------- login

    async def _login(self) -> str | None:
        hub = self.hub
        config = hub.config
        metrics = hub.metrics
        with trio.move_on_after(config.auth_timeout_s) as scope:
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed as e:
                cause = self._closed_cause(e)
                metrics.logins["failed", cause] += 1
                self._close = (1000, "", cause)
                return None
        if scope.cancelled_caught:
            metrics.logins["failed", "timeout"] += 1
            log.info("login timeout from %s", self.peer)
            self._close = (closecodes.AUTH_TIMEOUT, "Authorization timeout", "auth")
            return None
        try:
            address = verify_login(frame, now_ms=hub.now_ms(), window_ms=config.auth_window_ms)
        except AuthError as e:
            metrics.logins["failed", e.reason] += 1
            log.info("login refused from %s: %s (%s)", self.peer, e.message, e.reason)
            self._close = (closecodes.UNAUTHORIZED, f"Unauthorized: {e.message}", "auth")
            return None
        metrics.logins["ok", ""] += 1
        return address

    def _closed_cause(self, e: ConnectionClosed) -> str:
        code = e.reason.code if e.reason is not None else None
        if code == closecodes.MESSAGE_TOO_BIG:
            self.hub.metrics.bad_input["oversized"] += 1
            log.info("frame too large from %s: closed with 1009", self._who())
            return "oversized"
        return "client"

    # ------------------------------------------------------------ frames in

    def _on_message(self, data: bytes | str) -> None:
        """One inbound message; runs in trio-websocket's reader task, never raises."""
        if self._close is not None:
            return
        if isinstance(data, str):
            data = data.encode()
        self.last_rx = trio.current_time()
        try:
            events = self.rpc.receive_frame(data)
        except ProtocolError as e:
            self.hub.metrics.bad_input["protocol-error"] += 1
            self.kill(closecodes.PROTOCOL_ERROR, f"protocol error: {e}", "protocol-error")
            return
        except Exception:
            self.hub.metrics.handler_errors += 1
            log.exception("parsing a frame from %s failed", self._who())
            self.kill(closecodes.INTERNAL_ERROR, "internal error", "error")
            return
        for event in events:
            try:
                self._dispatch(event)
            except Exception:
                self.hub.metrics.handler_errors += 1
                log.exception("handling %r from %s failed", event, self._who())
                number = getattr(event, "number", None) or getattr(event, "stream_id", None)
                if number is not None:
                    self.rpc.fail(number, "internal error")
        try:
            self.flush()
        except Exception:
            self.hub.metrics.handler_errors += 1
            log.exception("sending to %s failed", self._who())
            self.kill(closecodes.INTERNAL_ERROR, "internal error", "error")

    def _dispatch(self, event: object) -> None:
        if isinstance(event, StreamReady):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.pump()
        elif isinstance(event, UnaryRequest):
            self._on_unary(event)
        elif isinstance(event, StreamRequest):
            self._on_stream_request(event)
        elif isinstance(event, StreamCancelled):
            self._end_stream(event.stream_id)
        elif isinstance(event, PortClosed):
            for stream_id in event.stream_ids:
                self._end_stream(stream_id)

    def _end_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.cancel()

    def _on_unary(self, request: UnaryRequest) -> None:
        hub = self.hub
        hub.metrics.requests[request.procedure] += 1
        if request.module != MODULE_NAME or request.procedure != POSITION_HEARTBEAT:
            self.rpc.fail(request.number, f"procedure {request.procedure} is not unary")
            return
        try:
            position = decode_position_payload(request.payload)
        except DecodeError:
            self._bad_payload(request.number, request.procedure)
            return
        if position is None:
            outcome = BadRequest("position is required")
            self.rpc.respond(request.number, encode_bad_request(outcome.message))
            return
        outcome = hub.engine.heartbeat(self.session_id, position, hub.now_ms())
        self.rpc.respond(request.number, encode_heartbeat_outcome(outcome))

    def _on_stream_request(self, request: StreamRequest) -> None:
        hub = self.hub
        hub.metrics.requests[request.procedure] += 1
        try:
            decode_payload(request.payload)
        except DecodeError:
            self._bad_payload(request.stream_id, request.procedure)
            return
        stream: _Stream
        if request.procedure == SUBSCRIBE:
            # Ends this connection's previous subscription, if any (its pump
            # sees the closed mailbox and closes that stream).
            mailbox = hub.engine.subscribe(self.session_id)
            stream = _SubscriptionStream(self, request.stream_id, mailbox)
        elif request.procedure == GET_ONLINE_FRIENDS:
            friends = hub.engine.online_friends(self.session_id)
            batches = [
                encode_presences(friends[i : i + BATCH_SIZE])
                for i in range(0, len(friends), BATCH_SIZE)
            ]
            stream = _OnlineFriendsStream(self, request.stream_id, batches)
        else:
            self.rpc.stream_fail(request.stream_id, f"unknown procedure {request.procedure}")
            return
        self._end_stream(request.stream_id)
        self.streams[request.stream_id] = stream

    def _bad_payload(self, number: int, procedure: str) -> None:
        self.hub.metrics.bad_input["invalid-payload"] += 1
        log.info("invalid %s payload from %s", procedure, self._who())
        self.rpc.fail(number, f"invalid payload for {procedure}")

    # ----------------------------------------------------------- frames out

    def flush(self) -> None:
        """Send what the protocol core produced; a full queue ends the connection."""
        frames = self.rpc.data_to_send()
        if not frames or self._close is not None:
            return
        if not self.sender.send(frames):
            self.hub.metrics.bad_input["slow-consumer"] += 1
            self.kill(closecodes.POLICY_VIOLATION, "slow consumer: send queue full",
                      "slow-consumer")

    # -------------------------------------------------------------- keepalive

    def keepalive(self, now: float, now_ms: int) -> None:
        """Called by the hub every few seconds for every logged-in connection.

        Any frame is a sign of life, recorded in the engine here rather than
        per frame (ACKs arrive once per delivered update). A connection silent
        for a ping interval is pinged; most never are, because clients send a
        heartbeat every 30 s anyway, so no task per connection waits on a timer.
        """
        config = self.hub.config
        if self.last_rx != self._touched_rx:
            self._touched_rx = self.last_rx
            self.hub.engine.touch(self.session_id, now_ms)
        elif (
            now - self.last_rx >= self.hub.ping_interval_s
            and not self._pinging
            and self._nursery is not None
        ):
            self._pinging = True
            self._nursery.start_soon(self._ping)
        limit = now - config.stuck_timeout_s
        for stream in self.streams.values():
            since = stream.blocked_since
            if since is not None and since < limit and stream.has_pending():
                self.kill(closecodes.POLICY_VIOLATION, "slow consumer: stream not acknowledged",
                          "slow-consumer")
                return

    async def _ping(self) -> None:
        with trio.move_on_after(self.hub.config.ping_timeout_s) as scope:
            try:
                await self.ws.ping()
            except ConnectionClosed:
                self.kill(1000, "", "client")
                return
        self._pinging = False
        if scope.cancelled_caught:
            self.kill(closecodes.INTERNAL_ERROR, "keepalive timeout", "ping-timeout")
        else:
            self.last_rx = trio.current_time()  # the pong
