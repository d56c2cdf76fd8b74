"""What an RPC module is: a table of procedures, each a handler of a small `Session`.

A module (`Module`) names itself as clients request it and lists its procedures in definition
order, which is the order of their ids on the wire. A procedure is one of three kinds:

- `Unary`: a synchronous handler returning the encoded response (the fast path: a heartbeat
  must not cost a task switch);
- `AsyncUnary`: an `async` handler, for answers that need I/O (the store); the server runs it
  in a task, a few at most per connection;
- `ServerStream`: a synchronous handler returning a `StreamSource`, which the server pumps,
  sending one item each time the client acknowledges the previous one.

Handlers see the connection only through `Session`: who is logged in, the engine, the clock, the
store's friend lists and the shared `Services`. They answer a bad request by raising
`ProcedureError` (a RemoteError for the client); a payload that does not parse raises protobuf's
`DecodeError`, which the server answers the same way for every procedure; a client that abuses
a procedure is disconnected by raising `CloseConnection`.

This layer sits above the engine and below the server: it knows presence, not sockets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from presenced.closes import Close
from presenced.engine import PresenceEngine
from presenced.model import Presence
from presenced.profiles import ProfileSource
from presenced.rpc.modules import ModuleSpec, ProcedureSpec

__all__ = [
    "AsyncUnary",
    "CloseConnection",
    "Module",
    "Procedure",
    "ProcedureError",
    "ServerStream",
    "Services",
    "Session",
    "StreamSource",
    "Unary",
]


@dataclass(slots=True)
class Services:
    """Helpers shared by every session of one server (filled in by the server).

    Modules that need something beyond the engine and the store (a profile source, say) add an
    optional field here; the server sets it when it is configured.
    """

    # Names and pictures of users (SocialService v2), when --profiles-url is given.
    profiles: ProfileSource | None = None


class Session(Protocol):
    """One logged-in connection, as a procedure handler sees it."""

    @property
    def address(self) -> str:
        """The logged-in user's address, lower-case."""
        ...

    @property
    def session_id(self) -> int:
        """The engine's id of this connection."""
        ...

    @property
    def engine(self) -> PresenceEngine:
        """The instance's presence engine (synchronous calls only)."""
        ...

    @property
    def services(self) -> Services: ...

    def now_ms(self) -> int:
        """Wall-clock time, Unix milliseconds (the engine's clock)."""
        ...

    async def friends_of(self, address: str) -> frozenset[str]:
        """Any user's friends, from the store (`ProcedureError` while it is unavailable)."""
        ...

    def record_delivery(self, presences: Sequence[Presence]) -> None:
        """Count a stream item carrying `presences` (updates delivered, notify latency)."""
        ...

    async def block_status(self, other: str) -> tuple[bool, bool]:
        """(this user blocks `other`, `other` blocks this user), from the store
        (`ProcedureError` while it is unavailable)."""
        ...

    async def blocks(self) -> tuple[frozenset[str], frozenset[str]]:
        """(whom this user blocks, who blocks this user), from the store."""
        ...

    def watch_blocks(self, on_change: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call `on_change(blocker, is_blocked)` whenever someone blocks or unblocks this
        user, here or on another instance; returns the function that stops it."""
        ...


class CloseConnection(Exception):
    """End the caller's connection with `close` (a client abusing the procedure)."""

    def __init__(self, close: Close, detail: str | None = None) -> None:
        super().__init__(close.text(detail))
        self.close = close
        self.detail = detail


class ProcedureError(Exception):
    """Answer the call with a RemoteError carrying `message` (and `code`)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class StreamSource(Protocol):
    """The items of one server stream, produced as the client can take them.

    The server calls `next_item` only when the client has acknowledged the previous item, so an
    item is built (and encoded) at the last moment: updates that arrive meanwhile coalesce, and a
    client that stops acknowledging stops costing work. `finished` ends the stream: the server
    closes it at once, dropping whatever `has_pending` still reported.
    """

    @property
    def finished(self) -> bool: ...

    def next_item(self) -> bytes | None:
        """The next encoded item, or None if nothing is ready now."""
        ...

    def has_pending(self) -> bool:
        """Items wait for the client (to find clients that stopped acknowledging)."""
        ...

    def bind(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever an item becomes ready or the stream finishes."""
        ...

    def cancel(self) -> int:
        """The stream is over (client cancel, port destroyed, connection closed).

        Returns how many presence updates it drops undelivered (for the metrics).
        """
        ...


UnaryHandler = Callable[[Session, bytes], bytes]
AsyncUnaryHandler = Callable[[Session, bytes], Awaitable[bytes]]
StreamHandler = Callable[[Session, bytes], StreamSource]


@dataclass(frozen=True, slots=True)
class Unary:
    name: str
    handler: UnaryHandler


@dataclass(frozen=True, slots=True)
class AsyncUnary:
    name: str
    handler: AsyncUnaryHandler


@dataclass(frozen=True, slots=True)
class ServerStream:
    name: str
    handler: StreamHandler
    # Streams of this procedure one connection may hold open at once (None: only the
    # connection's overall stream limit applies). Past it the call gets a RemoteError.
    max_live: int | None = None


Procedure = Unary | AsyncUnary | ServerStream


@dataclass(frozen=True, slots=True)
class Module:
    """An RPC module: its name on the wire and its procedures in definition order."""

    name: str
    procedures: tuple[Procedure, ...]

    @property
    def spec(self) -> ModuleSpec:
        """The declaration the protocol core needs (names and kinds only)."""
        return ModuleSpec(
            self.name,
            tuple(
                ProcedureSpec(p.name, server_streaming=isinstance(p, ServerStream))
                for p in self.procedures
            ),
        )

    def procedure(self, name: str) -> Procedure:
        for p in self.procedures:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no procedure {name}")
