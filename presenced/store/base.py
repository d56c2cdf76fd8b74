"""What presenced needs from shared state, whichever store provides it.

Two stores implement this: `MemoryStore` (one instance, nothing to run) and
`RedisStore` (many instances sharing one Redis). Both pass the same contract
test suite (tests/test_store_contract.py).

Stores report only what *other* instances did: an instance applies its own
changes to its engine directly, so nothing it does comes back to it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from presenced.model import Presence, PresenceOp


@dataclass(frozen=True, slots=True)
class RemotePresence:
    """Another instance vouches for a user (came online, moved, or refreshed)."""

    presence: Presence
    instance: str


@dataclass(frozen=True, slots=True)
class RemoteLeave:
    """Another instance no longer vouches for a user."""

    address: str
    instance: str


@dataclass(frozen=True, slots=True)
class Expired:
    """A user's TTL ran out cluster-wide; exactly one instance claims it."""

    address: str


@dataclass(frozen=True, slots=True)
class FriendshipChanged:
    a: str
    b: str
    added: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """A full picture of who is online, to replace whatever was missed.

    `owners` are the ids of the other instances vouching for each user.
    """

    records: tuple[tuple[Presence, frozenset[str]], ...]
    reason: str


StoreEvent = RemotePresence | RemoteLeave | Expired | FriendshipChanged | Resync
EventSink = Callable[[Sequence[StoreEvent]], None]

Friendship = tuple[str, str]


class StoreUnavailable(Exception):
    """The shared store cannot be reached; the operation was not applied."""


class Store(Protocol):
    instance_id: str

    @property
    def healthy(self) -> bool:
        """False while the store cannot be reached (the instance is degraded)."""
        ...

    async def run(
        self, sink: EventSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load state, start following other instances, then report started.

        Runs until cancelled; `sink` receives other instances' changes in
        batches, always from the trio thread.
        """
        ...

    def write(self, op: PresenceOp) -> None:
        """Record a presence change of this instance. Never blocks, never raises."""
        ...

    def cached_friends(self, address: str) -> frozenset[str] | None:
        """`address`'s friends if known without I/O (a login then needs no task), else None."""
        ...

    async def friends_of(self, address: str) -> frozenset[str]: ...

    async def add_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        """Add friendships; returns those that did not exist yet (normalized a < b)."""
        ...

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        """Remove friendships; returns those that existed (normalized a < b)."""
        ...

    async def get_presence(self, address: str) -> Presence | None:
        """The user's shared presence if online anywhere, else None."""
        ...

    async def online_snapshot(self) -> list[tuple[Presence, frozenset[str]]]:
        """Everyone online, with the ids of the instances vouching for them."""
        ...

    async def claim_expired(self, now_ms: int, ttl_ms: int) -> list[str]:
        """Remove and return users silent for longer than `ttl_ms`.

        Each expired user is returned by exactly one call, on one instance,
        and other instances hear of it as an `Expired` event.
        """
        ...

    async def aclose(self) -> None: ...


def ordered_pair(a: str, b: str) -> Friendship:
    return (a, b) if a < b else (b, a)
