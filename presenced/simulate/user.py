"""One virtual user's life over a real WebSocket: log in, beat, move, listen, churn.

A user is a single task while it waits; its connection is read by the run's
one poller task, which hands every stream item to the worker synchronously
(see `wire`): nothing is spawned per heartbeat or per update. Its worker owns the shared state
(counters, send log, receipts); the user only calls into it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import trio
from google.protobuf.message import DecodeError
from trio_websocket import ConnectionClosed, HandshakeError

from presenced.auth.identity import Identity
from presenced.client import ConnectionEnded, RemoteError
from presenced.rpc.frames import ProtocolError
from presenced.simulate.measure import (
    OFFLINE,
    ONLINE,
    SENDER_SHIFT,
    Counters,
    Histogram,
    unpack_position,
)
from presenced.simulate.plan import SimConfig, UserPlan
from presenced.simulate.v2 import (
    SOCIAL_SERVICE,
    SUBSCRIBE_CONNECTIVITY,
    decode_connectivity_update,
)
from presenced.simulate.wire import StreamEndedError, WireClient
from presenced.v1 import presence_pb2 as pb


class UserHost(Protocol):
    """What a virtual user needs from the worker process that runs it.

    The worker (presenced/simulate/worker.py) implements it; users never import the worker,
    as the server's connections talk to the hub through small protocols.
    """

    config: SimConfig
    counters: Counters
    login_latency: Histogram
    stopping: bool
    exiting: bool
    exit_event: trio.Event

    async def sleep_until(self, deadline: float, user: VirtualUser | None = None) -> bool:
        """Sleep until `deadline` (trio time); True if the run is stopping meanwhile."""
        ...

    def quiesce(self, user: VirtualUser) -> None:
        """`user` has stopped for good."""
        ...

    def attempt_done(self) -> None:
        """A first login attempt finished (the ramp counts them)."""
        ...

    def log_send(self, key: int, t: float) -> None:
        """A change was sent at monotonic time `t` (matched with its deliveries)."""
        ...

    def back_after_storm(self, user: VirtualUser, seconds: float) -> None: ...

    def failure(self, e: BaseException, login: bool, user: VirtualUser) -> None: ...

    def record_error(self, kind: str, detail: str, user: VirtualUser) -> None: ...

    def on_updates(self, user: VirtualUser, batch: Sequence[Any], now: float) -> None:
        """A stream item for `user` arrived at monotonic time `now`."""
        ...

# Close codes a client can see without anything being wrong: its own
# normal close (churn) as echoed by the server.
_CLEAN_CLOSE = {1000}
# Seconds to wait before logging in again after a failure (scaled by --speed
# like any other interval, but never below this floor).
_RETRY_FLOOR_S = 0.5


class VirtualUser:
    __slots__ = ("worker", "index", "identity", "target", "target_index", "source", "subscriber",
                 "churns", "plan", "sender", "accepted", "connected", "view", "since", "attempted",
                 "quiet", "client", "dropped_at")

    def __init__(
        self, worker: UserHost, index: int, identity: Identity, target: str,
        source: str | None, subscriber: bool, target_index: int = 0, churns: bool = True,
    ) -> None:
        self.worker = worker
        self.index = index
        self.identity = identity
        self.target = target
        self.target_index = target_index
        self.source = source
        self.subscriber = subscriber
        self.churns = churns
        self.plan = UserPlan(worker.config, index)
        self.sender = index << SENDER_SHIFT
        # Position key of the last heartbeat the server accepted this session.
        self.accepted: int | None = None
        self.connected = False
        # Friend index -> position key (ONLINE without a position), as the
        # subscription stream said; None while not subscribed.
        self.view: dict[int, int] | None = None
        self.since = math.inf
        self.attempted = False
        self.quiet = False
        # The live connection (the storm drops it), and when the storm did.
        self.client: WireClient | None = None
        self.dropped_at: float | None = None

    def final_key(self) -> int:
        """What friends should see of this user once everything settled."""
        if not self.connected:
            return OFFLINE
        return self.accepted if self.accepted is not None else ONLINE

    # -------------------------------------------------------------- the life

    async def run(self, start_at: float) -> None:
        """Log in at `start_at` (trio time), then live until the worker stops."""
        worker = self.worker
        if await worker.sleep_until(start_at):
            self._attempt_done()
            worker.quiesce(self)
            return
        while True:
            delay = await self._session()
            if worker.stopping:
                worker.quiesce(self)
                return
            if await worker.sleep_until(trio.current_time() + delay):
                worker.quiesce(self)
                return

    async def _session(self) -> float:
        """One connection, from login to its end; returns the delay before the next."""
        worker = self.worker
        counters = worker.counters
        counters.login_attempts += 1
        self.accepted = None
        started = time.monotonic()
        worker.log_send(self.sender | ONLINE, started)
        # Whether this session logged in: `self.connected` is reset when the session ends, so
        # the error handler below cannot tell from it whether a failure was the login's.
        established = False
        try:
            async with WireClient.connect(
                self.target, self.identity, local_address=self.source,
                connect_timeout=worker.config.connect_timeout_s,
            ) as client:
                now = time.monotonic()
                worker.login_latency.add((now - started) * 1000.0)
                if self.dropped_at is not None:
                    worker.back_after_storm(self, now - self.dropped_at)
                    self.dropped_at = None
                self.connected = established = True
                self.client = client
                counters.logins += 1
                counters.connected += 1
                self._attempt_done()
                try:
                    if worker.config.heartbeats:
                        await self._heartbeat(client, self.plan.spawn())
                    if self.subscriber:
                        await self._subscribe(client)
                    await self._live(client)
                finally:
                    self.client = None
                    self._disconnected()
            if self.dropped_at is not None:
                return self.plan.storm_delay()
            return self.plan.offline_gap()
        except Exception as e:  # every failure is classified and counted, then retried
            was_connected = established
            self.client = None
            self._disconnected()
            self._attempt_done()
            if self.dropped_at is not None and was_connected:
                # The storm dropped this connection under a call: expected.
                return self.plan.storm_delay()
            if not worker.exiting:
                worker.failure(e, login=not was_connected, user=self)
            return max(_RETRY_FLOOR_S, self.plan.offline_gap())

    def drop(self, now: float) -> bool:
        """The storm: lose the connection at once (the session then ends quietly)."""
        client = self.client
        if client is None or not self.connected:
            return False
        self.dropped_at = now
        client.drop()
        return True

    def _disconnected(self) -> None:
        if self.connected:
            self.connected = False
            self.worker.counters.connected -= 1
            # Friends hear OFFLINE after the server's grace period; log when
            # the connection went so that delay can be measured.
            self.worker.log_send(self.sender | OFFLINE, time.monotonic())
        if self.view is not None:
            self.view = None
            self.worker.counters.subscribed -= 1

    async def _live(self, client: WireClient) -> None:
        """Beat and move until churn ends the session or the worker stops."""
        worker = self.worker
        plan = self.plan
        beating = worker.config.heartbeats
        leave_at = trio.current_time() + (plan.session_length() if self.churns else math.inf)
        while True:
            due = trio.current_time() + plan.heartbeat_delay() if beating else leave_at
            if await worker.sleep_until(min(due, leave_at), self):
                # Stopped: stay online and listening until the worker exits.
                worker.quiesce(self)
                await worker.exit_event.wait()
                return
            if self.dropped_at is not None:
                return
            if trio.current_time() >= leave_at:
                worker.counters.churn_disconnects += 1
                return
            await self._heartbeat(client, plan.next_position())

    async def _heartbeat(self, client: WireClient, key: int | None) -> None:
        worker = self.worker
        counters = worker.counters
        if key is None:
            # Standing still: the server sees no change and tells nobody.
            key = self.accepted
            if key is None:
                key = self.plan.spawn()
        realm, x, y = unpack_position(key)
        payload = pb.PositionPayload(
            position=pb.Position(realm=worker.config.realms[realm], x=x, y=y)
        ).SerializeToString()
        if key != self.accepted:
            worker.log_send(self.sender | key, time.monotonic())
        counters.heartbeats += 1
        with trio.fail_after(worker.config.connect_timeout_s):
            response = await client.heartbeat_raw(payload)
        outcome = response.WhichOneof("response")
        if outcome == "position":
            self.accepted = key
            counters.heartbeats_accepted += 1
        else:
            detail = getattr(response, outcome).message if outcome else "empty response"
            worker.record_error((outcome or "empty-response").replace("_", "-"), detail, self)

    async def _subscribe(self, client: WireClient) -> None:
        """From now on the connection's reader hands each stream item to the worker.

        The stream ending or failing ends the session (the client raises),
        and the error is classified like any other. A v2 subscriber loads the
        SocialService module on the same port and opens its connectivity
        stream instead (what today's explorers do).
        """
        worker = self.worker
        procedure = decode = None
        if worker.config.subscribe_protocol == "v2":
            procedures = await client.load_module(SOCIAL_SERVICE)
            procedure = procedures[SUBSCRIBE_CONNECTIVITY]
            decode = decode_connectivity_update
        self.view = {}
        worker.counters.subscribed += 1
        self.since = time.monotonic()
        on_updates = worker.on_updates
        client.subscribe(lambda batch, now: on_updates(self, batch, now), procedure, decode)

    def _attempt_done(self) -> None:
        if not self.attempted:
            self.attempted = True
            self.worker.attempt_done()


def classify(e: BaseException, login: bool) -> tuple[str, str]:
    """An error kind (for the breakdown) and a one-line detail."""
    leaves = _leaves(e)
    # The most telling failure: a server close or remote error beats the
    # cancellations and broken sockets it caused.
    for leaf in leaves:
        if isinstance(leaf, ConnectionEnded):
            code = leaf.code
            if code == 3003:
                return "login-refused", str(leaf)
            if code in _CLEAN_CLOSE:
                return ("closed-during-login" if login else "closed-by-server"), str(leaf)
            return f"closed-{code if code is not None else 'abnormally'}", str(leaf)
    for leaf in leaves:
        if isinstance(leaf, RemoteError):
            return "remote-error", str(leaf)
        if isinstance(leaf, (ProtocolError, DecodeError)):
            return "bad-frame", f"{type(leaf).__name__}: {leaf}"
        if isinstance(leaf, StreamEndedError):
            return "stream-ended", str(leaf)
        if isinstance(leaf, HandshakeError):
            cause = leaf.__cause__ or leaf.__context__
            reason = f"{type(leaf).__name__}: {cause or leaf}"
            return "connect-failed", reason
        if isinstance(leaf, trio.TooSlowError):
            if login:
                return "login-timeout", "no SERVER_READY or module within --connect-timeout"
            return "heartbeat-timeout", "no answer to a heartbeat within --connect-timeout"
        if isinstance(leaf, (ConnectionClosed, OSError, trio.BrokenResourceError)):
            return "connection-lost", f"{type(leaf).__name__}: {leaf}"
    first = leaves[0] if leaves else e
    return "internal", f"{type(first).__name__}: {first}"


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in e.exceptions:
            out.extend(_leaves(sub))
        return out
    return [e]
