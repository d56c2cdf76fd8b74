"""Events the protocol cores return from ``receive_frame``.

Server-side events tell the application what to run; client-side events mirror every frame a
server can send. All are immutable values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ClientEvent",
    "ModuleLoaded",
    "PortClosed",
    "PortCreated",
    "RemoteErrorReceived",
    "ResponseReceived",
    "ServerEvent",
    "ServerReady",
    "StreamCancelled",
    "StreamEnded",
    "StreamItem",
    "StreamOffered",
    "StreamReady",
    "StreamRequest",
    "UnaryRequest",
]


# --- server side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnaryRequest:
    """Answer with ``respond(number, ...)`` or ``fail(number, ...)``."""

    number: int
    port_id: int
    procedure: str
    payload: bytes
    module: str = ""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A server-streaming call. The offer is already queued; wait for ``StreamReady``."""

    stream_id: int
    port_id: int
    procedure: str
    payload: bytes
    module: str = ""


@dataclass(frozen=True, slots=True)
class StreamReady:
    """The client acknowledged the last frame: exactly one ``stream_send`` is allowed now."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The client closed the stream; it no longer exists in the core."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PortClosed:
    """DESTROY_PORT: the port and these streams (and its pending unary calls) are gone."""

    port_id: int
    stream_ids: tuple[int, ...]


ServerEvent = UnaryRequest | StreamRequest | StreamReady | StreamCancelled | PortClosed


# --- client side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerReady:
    """SERVER_READY (number 0)."""


@dataclass(frozen=True, slots=True)
class PortCreated:
    number: int
    port_id: int


@dataclass(frozen=True, slots=True)
class ModuleLoaded:
    number: int
    port_id: int
    procedures: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    number: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RemoteErrorReceived:
    number: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class StreamOffered:
    """The server opened stream ``number``; ack seq 0 to receive the first item."""

    number: int
    port_id: int


@dataclass(frozen=True, slots=True)
class StreamItem:
    number: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The server closed the stream; ``seq`` is the last item's sequence number."""

    number: int
    seq: int = 0


ClientEvent = (
    ServerReady
    | PortCreated
    | ModuleLoaded
    | ResponseReceived
    | RemoteErrorReceived
    | StreamOffered
    | StreamItem
    | StreamEnded
)
