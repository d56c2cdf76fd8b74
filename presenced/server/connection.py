"""One client connection's I/O: the WebSocket, the login, keepalive, sending.

After the login, every inbound binary message goes to the connection's `ClientSession`
(presenced/server/session.py), which runs the RPC protocol, the modules' procedures and the
engine synchronously and sends its answers back through this connection (`send`). A
connection holds one task (`run`, which after the login only waits for the end); inbound
messages are handled inside trio-websocket's reader task (`ws_receiver`), pings are sent from
the hub's keepalive loop, and a writer task exists only while bytes wait for the socket
(`ws_sender`).

Anything a connection does wrong ends that connection only: the handler catches everything,
and a slow client's queue overflows into a disconnect, never into anyone else's latency.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from sys import intern

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from presenced.auth import AuthError, verify_login
from presenced.closes import Close
from presenced.server.hub import Hub
from presenced.server.session import ClientSession
from presenced.server.ws_receiver import attach_receiver, detach_receiver
from presenced.server.ws_sender import FrameSender
from presenced.store.base import StoreUnavailable

log = logging.getLogger("presenced.connection")


class Connection:
    """Implements the session's `Transport` and the hub's `LiveConnection`."""

    def __init__(self, hub: Hub, ws: WebSocketConnection, peer: str) -> None:
        self.hub = hub
        self.ws = ws
        self.peer = peer
        self.address: str | None = None
        self.session: ClientSession | None = None
        self.sender = FrameSender(ws, hub.config.send_queue_bytes, self.spawn)
        # trio time of the last frame received; the hub's keepalive reads it.
        self.last_rx = trio.current_time()
        self._touched_rx = self.last_rx
        self._pinging = False
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._close: tuple[Close, str | None] | None = None

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Serve the connection until it ends; never raises (but Cancelled)."""
        hub = self.hub
        metrics = hub.metrics
        metrics.connections_opened += 1
        hub.live.add(self)
        close: tuple[Close, str | None] = (Close.INTERNAL_ERROR, None)
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._close is None:
                    await self._serve()
            close = self._close or (Close.CLIENT, None)
            cause = close[0]
            metrics.disconnects[cause.label] += 1
            if cause not in (Close.CLIENT, Close.SHUTDOWN, Close.UNAUTHORIZED,
                             Close.AUTH_TIMEOUT):
                log.info("closing %s (%s): %s", self._who(), cause.label, cause.text(close[1]))
        except Exception:
            metrics.handler_errors += 1
            log.exception("connection %s failed", self._who())
        finally:
            # The session ends now, not after the closing handshake, which an
            # unresponsive client can stretch to the full timeout.
            hub.live.discard(self)
            if self.session is not None:
                self._end_session(self.session)
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
            self._close = (Close.STORE_UNAVAILABLE, None)
            return
        self.address = address
        session = self.session = ClientSession(hub, self, address, next(hub.session_ids))
        hub.engine.open_session(session.session_id, address, friends, hub.now_ms())
        # This frame lives as long as the connection: keep no second copy.
        del friends
        hub.connections[session.session_id] = self
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            session.start()
            # Frames are handled in trio-websocket's reader task from here on;
            # this task only waits for the end.
            attach_receiver(self.ws, self._on_message)
            try:
                await self.ws.get_message()
            except ConnectionClosed as e:
                cause = self._closed_cause(e)
                if self._close is None:
                    self._close = (cause, None)
            nursery.cancel_scope.cancel()
        self._nursery = None

    def _end_session(self, session: ClientSession) -> None:
        hub = self.hub
        hub.connections.pop(session.session_id, None)
        session.close()
        hub.engine.close_session(session.session_id, hub.now_ms())

    def _who(self) -> str:
        return f"{self.address or '-'}@{self.peer}"

    async def _close_now(self, close: Close, detail: str | None) -> None:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            await self.ws.aclose(close.code, close.text(detail))

    # ----------------------------------------------------- the Transport

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(task)

    def kill(self, close: Close, detail: str | None = None) -> None:
        """End this connection from anywhere, without waiting (sync on purpose)."""
        if self._close is None:
            self._close = (close, detail)
        if self._scope is not None:
            self._scope.cancel()

    def send(self, frames: list[bytes]) -> bool:
        if self._close is not None:
            return True
        return self.sender.send(frames)

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
                metrics.logins["failed", cause.label] += 1
                self._close = (cause, None)
                return None
        if scope.cancelled_caught:
            metrics.logins["failed", "timeout"] += 1
            log.info("login timeout from %s", self.peer)
            self._close = (Close.AUTH_TIMEOUT, None)
            return None
        try:
            address = verify_login(frame, now_ms=hub.now_ms(), window_ms=config.auth_window_ms)
        except AuthError as e:
            metrics.logins["failed", e.reason] += 1
            log.info("login refused from %s: %s (%s)", self.peer, e.message, e.reason)
            self._close = (Close.UNAUTHORIZED, e.message)
            return None
        metrics.logins["ok", ""] += 1
        return address

    def _closed_cause(self, e: ConnectionClosed) -> Close:
        code = e.reason.code if e.reason is not None else None
        if code == Close.MESSAGE_TOO_BIG.code:
            self.hub.metrics.bad_input[Close.MESSAGE_TOO_BIG.label] += 1
            log.info("frame too large from %s: closed with 1009", self._who())
            return Close.MESSAGE_TOO_BIG
        return Close.CLIENT

    # ------------------------------------------------------------ frames in

    def _on_message(self, data: bytes | str) -> None:
        """One inbound message; runs in trio-websocket's reader task, never raises."""
        if self._close is not None or self.session is None:
            return
        if isinstance(data, str):
            data = data.encode()
        self.last_rx = now = trio.current_time()
        self.session.receive(data, now)

    # -------------------------------------------------------------- keepalive

    def keepalive(self, now: float, now_ms: int) -> None:
        """Called by the hub every few seconds for every logged-in connection.

        Any frame is a sign of life, recorded in the engine here rather than
        per frame (ACKs arrive once per delivered update). A connection silent
        for a ping interval is pinged; most never are, because clients send a
        heartbeat every 30 s anyway, so no task per connection waits on a timer.
        """
        session = self.session
        if session is None:
            return
        hub = self.hub
        if self.last_rx != self._touched_rx:
            self._touched_rx = self.last_rx
            hub.engine.touch(session.session_id, now_ms)
        elif (
            now - self.last_rx >= hub.ping_interval_s
            and not self._pinging
            and self._nursery is not None
        ):
            self._pinging = True
            self._nursery.start_soon(self._ping)
        if session.stuck(now, hub.config.stuck_timeout_s):
            self.kill(Close.STUCK_STREAM)

    async def _ping(self) -> None:
        with trio.move_on_after(self.hub.config.ping_timeout_s) as scope:
            try:
                await self.ws.ping()
            except ConnectionClosed:
                self.kill(Close.CLIENT)
                return
        self._pinging = False
        if scope.cancelled_caught:
            self.kill(Close.PING_TIMEOUT)
        else:
            self.last_rx = trio.current_time()  # the pong
