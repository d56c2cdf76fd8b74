"""Value types shared by every layer: what a user's presence is.

They sit at the bottom of the import graph so that the engine, the stores and
the server can all speak about presence without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class Position:
    realm: str
    x: int
    y: int


class Presence:
    """An immutable snapshot of one user's presence, as friends see it.

    One snapshot is shared by every recipient of a change, so the wire
    encoding is cached on it (`wire`) and computed once, not per recipient.
    `changed_ms` (never sent) is when the change it announces happened, for
    measuring notify latency; None for snapshots that announce no change.
    """

    __slots__ = ("address", "online", "position", "last_seen_ms", "wire", "changed_ms")

    def __init__(
        self,
        address: str,
        online: bool,
        position: Position | None,
        last_seen_ms: int,
        changed_ms: int | None = None,
    ) -> None:
        self.address = address
        self.online = online
        self.position = position
        self.last_seen_ms = last_seen_ms
        self.wire: bytes | None = None
        self.changed_ms = changed_ms

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Presence):
            return NotImplemented
        return (
            self.address == other.address
            and self.online == other.online
            and self.position == other.position
            and self.last_seen_ms == other.last_seen_ms
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"Presence({self.address} {state} {self.position} @{self.last_seen_ms})"


def normalize_address(address: str) -> str:
    """Lower-case a 0x address and check its shape; raises ValueError."""
    a = address.strip().lower()
    if not _ADDRESS.fullmatch(a):
        raise ValueError(f"not an address: {address!r}")
    return a


@dataclass(frozen=True, slots=True)
class PresenceWrite:
    """This instance vouches for a user: store their presence and refresh their TTL.

    `changed` says whether friends elsewhere must hear about it (online, realm
    or position changed) or whether it only keeps the shared copy fresh.
    """

    presence: Presence
    changed: bool


@dataclass(frozen=True, slots=True)
class PresenceLeave:
    """This instance no longer vouches for a user (last connection gone or expired)."""

    address: str
    last_seen_ms: int


PresenceOp = PresenceWrite | PresenceLeave
