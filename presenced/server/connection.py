"""One client connection: the handler of its `presenced.ws` transport. No task of its own.

A `Connection` is created for every accepted socket. The WebSocket layer calls it from the
poller's task (one task for every socket of the process): `on_open` when the upgrade is
done, `on_message` for each message, `on_pong`, and `on_closed` once at the end. What a
message means in each phase, and why a connection ended, is decided by
`presenced.server.lifecycle` (pure); this module does the I/O around it:

- **login**: the first message is verified at once, synchronously (`verify_login_once`, with
  the hub's cache of verified ephemeral links and its table of logins seen, which refuses a
  replayed frame; the store then claims the frame cluster-wide and closes this connection
  if another instance accepted it first). The friend set comes from the store's cache
  without waiting when it is there (always, for the embedded store), else from a short task
  (Redis); messages sent right behind the login (Unity does) are held until the session
  starts. The login deadline and the per-address limits are the hub's (one deadline heap
  for all sockets, `presenced.server.admission`);
- **established**: every message goes to the `ClientSession`, which runs the RPC protocol,
  the procedures and the engine synchronously and answers through `send`, one non-blocking
  `send()` (a writer task exists only while bytes wait for the socket);
- **keepalive**: the hub's loop calls `keepalive()` every few seconds; a silent connection is
  pinged, one that stays silent past the ping timeout is closed;
- **the end**: `kill()` starts the closing handshake and ends the session at once (from a
  task, because a kill can come from inside the engine's fan-out, which must not see its
  subscriptions change under it); `on_closed` ends it when the client closes or vanishes.
  Then the references back to this object are dropped, so that it is freed by reference
  counting, not by the garbage collector.

Anything a connection does wrong ends that connection only: every handler is guarded, and a
slow client's full queue is a disconnect, never anyone else's latency.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from sys import intern

import trio

from presenced.auth import AuthError, verify_login_once
from presenced.closes import Close
from presenced.server.hub import Hub
from presenced.server.lifecycle import (
    AWAITING_LOGIN,
    Inbound,
    Phase,
    Step,
    advance,
    end_cause,
    inbound,
    login_failure,
)
from presenced.server.session import ClientSession
from presenced.store.base import StoreUnavailable
from presenced.ws.handshake import UpgradeRequest
from presenced.ws.transport import Transport

log = logging.getLogger("presenced.connection")

# Messages a client may send between its login frame and the start of its session (while
# its friend set is fetched). Unity sends two; more is a client not waiting for anything.
MAX_HELD_MESSAGES = 32
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_ESTABLISHED = Phase.ESTABLISHED
_ENDED = Phase.ENDED
_current_time = trio.current_time

# Kills for what the client sent: its further input is dropped unread.
_ABUSE = frozenset({Close.FLOOD, Close.HEARTBEAT_FLOOD, Close.PROTOCOL_ERROR})

# Causes not worth a log line each: the normal ends, and the login failures (logged when
# refused, or counted: a flood of silent sockets must not flood the log).
_QUIET = frozenset({Close.CLIENT, Close.SHUTDOWN, Close.UNAUTHORIZED, Close.AUTH_TIMEOUT,
                    Close.LOGIN_LIMIT, Close.FULL})


class Connection:
    """The transport's `Handler`, the session's `Transport` and the hub's `LiveConnection`."""

    __slots__ = ("hub", "source", "peer", "accepted_at", "transport", "phase", "address",
                 "session", "last_rx", "_touched_rx", "_ping_sent", "_held", "admission_ticket",
                 "_tasks", "__weakref__")

    def __init__(self, hub: Hub, source: str, peer: str, now: float) -> None:
        self.hub = hub
        # The address the per-address limits count (an IPv6 /64), and "host:port" for logs.
        self.source = source
        self.peer = peer
        self.accepted_at = now
        # Set right after construction (the transport needs its handler first).
        self.transport: Transport = None  # type: ignore[assignment]
        self.phase = Phase.HANDSHAKE
        self.address: str | None = None
        self.session: ClientSession | None = None
        # trio time of the last frame received; the keepalive pass reads it.
        self.last_rx = now
        self._touched_rx = now
        # When the unanswered ping went out (None: none is).
        self._ping_sent: float | None = None
        # Messages received while the friend set loads.
        self._held: list[bytes | str] | None = None
        # Cancel scopes of this connection's tasks (friend set fetch, asynchronous calls).
        self._tasks: set[trio.CancelScope] | None = None
        # The hub's admission keeps this socket's login deadline here.
        self.admission_ticket: list | None = None

    @property
    def awaiting_login(self) -> bool:
        return self.phase in AWAITING_LOGIN

    # ------------------------------------------------------ transport handler

    def on_open(self, request: UpgradeRequest | None) -> None:
        self.phase = advance(self.phase, Step.OPENED)
        hub = self.hub
        hub.metrics.connections_opened += 1
        if hub.admission.full():
            self.kill(Close.FULL)

    def on_message(self, message: bytes | str) -> None:
        session = self.session
        if session is not None and self.phase is _ESTABLISHED:
            if type(message) is str:
                message = message.encode()  # type: ignore[union-attr]
            self.last_rx = now = _current_time()
            session.receive(message, now)  # type: ignore[arg-type]
            return
        action = inbound(self.phase)
        if action is Inbound.VERIFY:
            self._login(message)
        elif action is Inbound.HOLD:
            held = self._held
            if held is None:
                held = self._held = []
            if len(held) >= MAX_HELD_MESSAGES:
                self.hub.metrics.bad_input[Close.FLOOD.label] += 1
                self.kill(Close.FLOOD, "messages before the session started")
            else:
                held.append(message)

    def on_pong(self, payload: bytes) -> None:
        self.last_rx = _current_time()

    def on_closed(self, code: int, reason: str) -> None:
        """The transport's end: no more messages will come (the socket is closed or closing)."""
        if self.phase is not _ENDED:
            self._end(None)
        hub = self.hub
        hub.live.discard(self)
        hub.admission.closed()
        hub.room_freed()
        # The transport holds this object as its handler: the cycle ends here (its spawn is
        # the hub's, still needed if the closing handshake has bytes to write or a timer).
        self.transport.detach(keep_spawn=True)

    # ------------------------------------------------------------------ login

    def _login(self, frame: bytes | str) -> None:
        hub = self.hub
        config = hub.config
        try:
            login = verify_login_once(frame, now_ms=hub.now_ms(), window_ms=config.auth_window_ms,
                                      verified_links=hub.verified_links,
                                      seen_logins=hub.seen_logins)
        except AuthError as e:
            self._refuse_login(e)
            return
        # Other instances may have seen this frame: the shared store checks, after the fact
        # (a login never waits for Redis), and closes this connection if one did.
        hub.store.claim_login(login.replay_key, login.expires_ms, self._replayed_elsewhere)
        address = login.address
        if hub.admission.full():
            self.kill(Close.FULL)
            return
        self.phase = advance(self.phase, Step.VERIFIED)
        # The same string as in friends' friend sets (the stores intern them).
        self.address = address = intern(address)
        friends = hub.store.cached_friends(address)
        if friends is not None:
            self._establish(friends)
        else:
            self.spawn(self._load_friends)

    def _refuse_login(self, e: AuthError) -> None:
        self.hub.metrics.logins["failed", e.reason] += 1
        log.info("login refused from %s: %s (%s)", self.peer, e.message, e.reason)
        self.kill(Close.UNAUTHORIZED, e.message)

    def _replayed_elsewhere(self) -> None:
        """The store found this login frame accepted by another instance first."""
        if self.phase is not _ENDED:
            self._refuse_login(AuthError(
                "replayed", "these signed headers were used for a login on another instance"))

    async def _load_friends(self) -> None:
        address = self.address
        assert address is not None
        try:
            friends = await self.hub.store.friends_of(address)
        except StoreUnavailable:
            self.kill(Close.STORE_UNAVAILABLE)
            return
        if self.phase is Phase.LOADING:
            self._establish(friends)

    def _establish(self, friends: frozenset[str]) -> None:
        hub = self.hub
        address = self.address
        assert address is not None
        session = self.session = ClientSession(hub, self, address, next(hub.session_ids))
        hub.engine.open_session(session.session_id, address, friends, hub.now_ms())
        hub.connections[session.session_id] = self
        self.phase = advance(self.phase, Step.LOADED)
        hub.admission.left_login(self, logged_in=True)
        hub.room_freed()
        hub.metrics.logins["ok", ""] += 1
        self.last_rx = self._touched_rx = _current_time()
        session.start()
        held = self._held
        if held:
            self._held = None
            for message in held:
                if self.phase is not _ESTABLISHED:
                    break
                self.on_message(message)

    # -------------------------------------------------------- the Transport

    def send(self, frames: list[bytes]) -> bool:
        if len(frames) == 1:
            return self.transport.send_binary(frames[0])
        return self.transport.send_binaries(frames)

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task` while the connection lives (cancelled at its end); its errors are
        contained: logged, counted, and this connection closed."""
        if self.phase is _ENDED:
            return
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        scope = trio.CancelScope()
        tasks.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await task()
            except Exception:
                self.hub.metrics.handler_errors += 1
                log.exception("a task of connection %s failed", self._who())
                self.kill(Close.INTERNAL_ERROR)
            finally:
                tasks.discard(scope)

        self.hub.spawn(run)

    def kill(self, close: Close, detail: str | None = None) -> None:
        """End this connection from anywhere, synchronously (the closing handshake follows)."""
        if self.phase is _ENDED:
            return
        self._end((close, detail))

    # ---------------------------------------------------------------- the end

    def _end(self, killed: tuple[Close, str | None] | None) -> None:
        phase = self.phase
        self.phase = advance(phase, Step.ENDED)
        hub = self.hub
        metrics = hub.metrics
        transport = self.transport
        cause = end_cause(killed[0] if killed else None, transport.failed_with)
        if phase is not Phase.HANDSHAKE or killed is not None:
            metrics.disconnects[cause.label] += 1
        failure = login_failure(phase, cause)
        if failure is not None:
            metrics.logins["failed", failure] += 1
        if cause is Close.MESSAGE_TOO_BIG or (cause is Close.PROTOCOL_ERROR and not killed):
            metrics.bad_input[cause.label] += 1
        if cause not in _QUIET:
            detail = killed[1] if killed else None
            log.info("closing %s (%s): %s", self._who(), cause.label, cause.text(detail))
        elif cause is Close.AUTH_TIMEOUT:
            log.info("login timeout from %s", self.peer)
        if phase in AWAITING_LOGIN:
            hub.admission.left_login(self, logged_in=False)
            hub.room_freed()
        elif phase is _ESTABLISHED:
            hub.admission.logged_out()
        self._held = None
        tasks = self._tasks
        if tasks:
            for scope in tasks:
                scope.cancel()
        if killed is not None:
            # A client thrown out for what it sent is not read any further.
            transport.close(cause.code, cause.text(killed[1]), discard_input=cause in _ABUSE)
        session = self.session
        if session is not None:
            if killed is not None:
                # A kill may come from inside the engine's fan-out (a subscriber too slow
                # for the update being delivered): end the session right after it.
                hub.spawn(self._end_session)
            else:
                self._end_session_now(session)

    async def _end_session(self) -> None:
        session = self.session
        if session is not None:
            self._end_session_now(session)

    def _end_session_now(self, session: ClientSession) -> None:
        self.session = None
        hub = self.hub
        hub.connections.pop(session.session_id, None)
        session.close()
        hub.engine.close_session(session.session_id, hub.now_ms())

    def _who(self) -> str:
        return f"{self.address or '-'}@{self.peer}"

    # -------------------------------------------------------------- keepalive

    def keepalive(self, now: float, now_ms: int) -> None:
        """Called by the hub every few seconds for every logged-in connection.

        Any frame is a sign of life, recorded in the engine here rather than per frame (ACKs
        arrive once per delivered update). A connection silent for a ping interval is pinged;
        most never are, because clients send a heartbeat every 30 s anyway.
        """
        session = self.session
        if session is None or self.phase is not _ESTABLISHED:
            return
        hub = self.hub
        last_rx = self.last_rx
        if last_rx != self._touched_rx:
            self._touched_rx = last_rx
            hub.engine.touch(session.session_id, now_ms)
        sent = self._ping_sent
        if sent is not None and last_rx >= sent:
            sent = self._ping_sent = None  # answered (a pong, or any frame)
        if sent is None:
            if now - last_rx >= hub.ping_interval_s:
                self._ping_sent = now
                self.transport.ping()
        elif now - sent >= hub.config.ping_timeout_s:
            self.kill(Close.PING_TIMEOUT)
            return
        if session.stuck(now, hub.config.stuck_timeout_s):
            self.kill(Close.STUCK_STREAM)

    def idle(self) -> bool:
        """Whether this socket awaiting login waits on its client (nothing unread from it)."""
        if self.phase is Phase.LOADING:
            return False  # waiting on the store, not on the client
        try:
            return self.transport.sock.recv(1, _PEEK) == b""
        except BlockingIOError:
            return True
        except OSError:
            return True
