"""One logged-in client: RPC frames in, procedure calls, stream items out. No I/O.

`ClientSession` joins the protocol core (`RpcServerConnection`) to the RPC modules
(presenced.services) and to the engine. The connection around it does the I/O: it hands every
inbound binary message to `receive`, and gives the session a `Transport` to send frames, end the
connection and start a task. So one heartbeat runs, synchronously, from `receive` through the
protocol core, the module's handler and the engine to `Transport.send`.

Stream items are not produced by tasks: a stream sends its next item the moment both conditions
hold (the client acknowledged the previous one and the source has an item), from whichever code
made the second one true: the engine delivering a friend's change (the source's wake-up) or
`receive` handling an ACK. So a delivered update costs no task switch.

Anything a client does wrong ends, at worst, its own connection: every handler runs under a
guard, and a failure there is answered with a RemoteError or a close, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import trio
from google.protobuf.message import DecodeError

from presenced.closes import Close
from presenced.engine import PresenceEngine
from presenced.model import Presence
from presenced.rpc.events import (
    PortClosed,
    StreamCancelled,
    StreamReady,
    StreamRequest,
    UnaryRequest,
)
from presenced.rpc.frames import ProtocolError
from presenced.rpc.server import RpcServerConnection
from presenced.services.base import (
    AsyncUnary,
    CloseConnection,
    ProcedureError,
    ServerStream,
    Services,
    StreamSource,
    Unary,
)
from presenced.store.base import StoreUnavailable

if TYPE_CHECKING:
    from presenced.server.hub import Hub

log = logging.getLogger("presenced.connection")

# Asynchronous calls (answers that need the store) in flight per connection; one more is
# refused with a RemoteError. Real clients make one or two at a time.
MAX_ASYNC_CALLS = 4


class Transport(Protocol):
    """What a session needs from the connection that carries it."""

    def send(self, frames: list[bytes]) -> bool:
        """Send binary messages; False if the client is too slow (the queue is full)."""
        ...

    def kill(self, close: Close, detail: str | None = None) -> None:
        """End the connection (synchronously: the I/O follows)."""
        ...

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task` while the connection lives."""
        ...


class _ClosedTransport:
    """Where a closed session's late output goes (an async call finishing): nowhere."""

    def send(self, frames: list[bytes]) -> bool:
        return True

    def kill(self, close: Close, detail: str | None = None) -> None:
        pass

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        pass


_CLOSED = _ClosedTransport()


class _ActiveStream:
    __slots__ = ("stream_id", "source", "procedure", "blocked_since")

    def __init__(self, stream_id: int, source: StreamSource, procedure: str) -> None:
        self.stream_id = stream_id
        self.source = source
        self.procedure = procedure
        # trio time since which items have been waiting for the client's ACK; None while
        # nothing waits. A client that lets this grow old is stuck.
        self.blocked_since: float | None = None


class ClientSession:
    """The RPC side of one logged-in connection (implements `services.Session`)."""

    def __init__(self, hub: Hub, transport: Transport, address: str, session_id: int) -> None:
        self.hub = hub
        self.address = address
        self.session_id = session_id
        config = hub.config
        self.rpc = RpcServerConnection(
            hub.module_specs,
            hub.port_ids,
            max_ports=config.max_ports_per_connection,
            max_port_name_bytes=config.max_port_name_bytes,
            max_streams=config.max_streams_per_connection,
        )
        self.streams: dict[int, _ActiveStream] = {}
        self._rate = config.max_messages_per_s
        self._burst = float(config.message_burst)
        self._budget = self._burst
        self._budget_at = trio.current_time()
        self._transport = transport
        self._async_calls = 0
        self._closed = False

    # ------------------------------------------------- services.Session

    @property
    def engine(self) -> PresenceEngine:
        return self.hub.engine

    @property
    def services(self) -> Services:
        return self.hub.services

    def now_ms(self) -> int:
        return self.hub.now_ms()

    async def friends_of(self, address: str) -> frozenset[str]:
        try:
            return await self.hub.store.friends_of(address)
        except StoreUnavailable:
            # The client may retry; it is not a bug worth a traceback.
            raise ProcedureError("the store is unavailable, try again later") from None

    async def block_status(self, other: str) -> tuple[bool, bool]:
        try:
            return await self.hub.store.block_status(self.address, other)
        except StoreUnavailable:
            raise ProcedureError("the store is unavailable, try again later") from None

    async def blocks(self) -> tuple[frozenset[str], frozenset[str]]:
        try:
            lists = await self.hub.store.blocks_of(self.address)
        except StoreUnavailable:
            raise ProcedureError("the store is unavailable, try again later") from None
        return lists.blocking, lists.blocked_by

    def watch_blocks(self, on_change: Callable[[str, bool], None]) -> Callable[[], None]:
        return self.hub.watch_blocks(self.address, on_change)

    def record_delivery(self, presences: Sequence[Presence]) -> None:
        metrics = self.hub.metrics
        metrics.updates_delivered += len(presences)
        metrics.stream_items_sent += 1
        # Only changes are timed: snapshots of friends already online (at subscribe time, or a
        # new friendship) announce no change.
        now = self.hub.now_ms()
        observe = metrics.notify_latency.observe
        for presence in presences:
            changed = presence.changed_ms
            if changed is not None:
                observe(max(0, now - changed) / 1000.0)

    # ------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Send SERVER_READY (the first frame after the login)."""
        self.rpc.server_ready()
        self.flush()

    def close(self) -> None:
        """The connection ended: end every stream and the engine session."""
        if self._closed:
            return
        self._closed = True
        dropped = 0
        for active in self.streams.values():
            dropped += active.source.cancel()
        self.hub.metrics.updates_dropped += dropped
        self.streams.clear()
        self.rpc.close()
        # The transport (the connection) holds this session: dropping the way back breaks the
        # cycle, so both are freed by reference counting, not at the next GC pass.
        self._transport = _CLOSED


    # ------------------------------------------------------- frames in

    def receive(self, data: bytes, now: float) -> None:
        """Handle one inbound binary message received at trio time `now`; never raises."""
        hub = self.hub
        # Token bucket over every inbound message: far above what any real client sends, so
        # only a flood empties it.
        budget = min(self._burst, self._budget + (now - self._budget_at) * self._rate)
        self._budget_at = now
        if budget < 1.0:
            hub.metrics.bad_input[Close.FLOOD.label] += 1
            self._transport.kill(Close.FLOOD)
            return
        self._budget = budget - 1.0
        try:
            events = self.rpc.receive_frame(data)
        except ProtocolError as e:
            hub.metrics.bad_input[Close.PROTOCOL_ERROR.label] += 1
            self._transport.kill(Close.PROTOCOL_ERROR, str(e))
            return
        except Exception:
            hub.metrics.handler_errors += 1
            log.exception("parsing a frame from %s failed", self.address)
            self._transport.kill(Close.INTERNAL_ERROR)
            return
        for event in events:
            try:
                if isinstance(event, StreamReady):
                    active = self.streams.get(event.stream_id)
                    if active is not None:
                        self._pump(active)
                elif isinstance(event, UnaryRequest):
                    self._call(event)
                elif isinstance(event, StreamRequest):
                    self._open_stream(event)
                elif isinstance(event, StreamCancelled):
                    self._end_stream(event.stream_id)
                elif isinstance(event, PortClosed):
                    for stream_id in event.stream_ids:
                        self._end_stream(stream_id)
            except Exception:
                hub.metrics.handler_errors += 1
                log.exception("handling %r from %s failed", event, self.address)
                number = getattr(event, "number", None) or getattr(event, "stream_id", None)
                if number is not None:
                    self.rpc.fail(number, "internal error")
        self.flush()

    def _call(self, request: UnaryRequest) -> None:
        hub = self.hub
        hub.metrics.requests[request.procedure] += 1
        procedure = hub.procedures[request.module, request.procedure]
        if isinstance(procedure, AsyncUnary):
            self._call_async(request, procedure)
            return
        assert isinstance(procedure, Unary)
        try:
            response = procedure.handler(self, request.payload)
        except DecodeError:
            self._bad_payload(request.number, request.procedure)
            return
        except ProcedureError as e:
            self.rpc.fail(request.number, e.message, e.code)
            return
        except CloseConnection as e:
            self._abuse(e)
            return
        self.rpc.respond(request.number, response)

    def _call_async(self, request: UnaryRequest, procedure: AsyncUnary) -> None:
        if self._async_calls >= MAX_ASYNC_CALLS:
            self.rpc.fail(request.number, "too many calls in flight on this connection")
            return
        self._async_calls += 1
        number = request.number

        async def run() -> None:
            try:
                response = await procedure.handler(self, request.payload)
            except DecodeError:
                self._bad_payload(number, request.procedure)
            except ProcedureError as e:
                self.rpc.fail(number, e.message, e.code)
            except CloseConnection as e:
                self._abuse(e)
            except Exception:
                self.hub.metrics.handler_errors += 1
                log.exception("%s from %s failed", request.procedure, self.address)
                self.rpc.fail(number, "internal error")
            else:
                # False if the call was dropped meanwhile (its port destroyed).
                self.rpc.respond(number, response)
            finally:
                self._async_calls -= 1
            self.flush()

        self._transport.spawn(run)

    def _open_stream(self, request: StreamRequest) -> None:
        hub = self.hub
        hub.metrics.requests[request.procedure] += 1
        procedure = hub.procedures[request.module, request.procedure]
        assert isinstance(procedure, ServerStream)
        stream_id = request.stream_id
        if procedure.max_live is not None and procedure.max_live <= sum(
            1 for active in self.streams.values() if active.procedure == request.procedure
        ):
            hub.metrics.bad_input["too-many-streams"] += 1
            self.rpc.stream_fail(
                stream_id, f"at most {procedure.max_live} {request.procedure} at a time")
            return
        try:
            source = procedure.handler(self, request.payload)
        except DecodeError:
            self._bad_payload(stream_id, request.procedure)
            return
        except ProcedureError as e:
            self.rpc.stream_fail(stream_id, e.message, e.code)
            return
        except CloseConnection as e:
            self._abuse(e)
            return
        self._end_stream(stream_id)
        active = self.streams[stream_id] = _ActiveStream(stream_id, source, request.procedure)
        source.bind(lambda: self._wake(active))
        self._pump(active)

    def _abuse(self, e: CloseConnection) -> None:
        self.hub.metrics.bad_input[e.close.label] += 1
        self._transport.kill(e.close, e.detail)

    def _bad_payload(self, number: int, procedure: str) -> None:
        self.hub.metrics.bad_input["invalid-payload"] += 1
        log.info("invalid %s payload from %s", procedure, self.address)
        self.rpc.fail(number, f"invalid payload for {procedure}")

    def _end_stream(self, stream_id: int) -> None:
        active = self.streams.pop(stream_id, None)
        if active is not None:
            # Cancelled by the client or its port destroyed: what was queued is never sent.
            self.hub.metrics.updates_dropped += active.source.cancel()

    # ------------------------------------------------------ frames out

    def _wake(self, active: _ActiveStream) -> None:
        # Runs inside whichever connection's handler changed a friend's presence: a failure
        # here must end this connection, not that one.
        try:
            if self.streams.get(active.stream_id) is active:
                self._pump(active)
        except Exception:
            self.hub.metrics.handler_errors += 1
            log.exception("sending to %s failed", self.address)
            self._transport.kill(Close.INTERNAL_ERROR)

    def _pump(self, active: _ActiveStream) -> None:
        """Send the stream's next item if the client may take it, or close a finished one."""
        source = active.source
        stream_id = active.stream_id
        rpc = self.rpc
        if not source.finished:
            if not rpc.stream_can_send(stream_id):
                if active.blocked_since is None and source.has_pending():
                    active.blocked_since = trio.current_time()
                return
            item = source.next_item()
            if item is not None:
                rpc.stream_send(stream_id, item)
                active.blocked_since = trio.current_time() if source.has_pending() else None
                self.flush()
                return
            if not source.finished:
                active.blocked_since = None
                return
        del self.streams[stream_id]
        source.cancel()
        rpc.stream_close(stream_id)
        self.flush()

    def flush(self) -> None:
        """Send what the protocol core produced; a full queue ends the connection."""
        frames = self.rpc.data_to_send()
        if frames and not self._closed and not self._transport.send(frames):
            self.hub.metrics.bad_input[Close.SLOW_CONSUMER.label] += 1
            self._transport.kill(Close.SLOW_CONSUMER)

    # ------------------------------------------------------- keepalive

    def stuck(self, now: float, stuck_timeout_s: float) -> bool:
        """Whether a stream has had items waiting for an ACK for longer than the timeout."""
        limit = now - stuck_timeout_s
        for active in self.streams.values():
            since = active.blocked_since
            if since is not None and since < limit and active.source.has_pending():
                return True
        return False
