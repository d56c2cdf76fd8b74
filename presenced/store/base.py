"""What presenced needs from shared state, whichever store provides it.

Two stores implement this: `MemoryStore` (one instance, nothing to run) and
`RedisStore` (many instances sharing one Redis). Both pass the same contract
test suite (tests/test_store_contract.py).

Stores report only what *other* instances did: an instance applies its own
changes to its engine directly, so nothing it does comes back to it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import trio

from presenced.histogram import Histogram
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
    """An *effective* friendship appeared or ended (`a < b`).

    Effective: the friendship is stored and no block exists in either
    direction. Blocking a friend therefore ends the effective friendship and
    unblocking restores it, so every stream and list follows blocks through
    the same path as friendship changes.
    """

    a: str
    b: str
    added: bool


@dataclass(frozen=True, slots=True)
class BlockChanged:
    """`blocker` started (`added`) or stopped blocking `blocked`."""

    blocker: str
    blocked: str
    added: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """A full picture of who is online, to replace whatever was missed.

    `owners` are the ids of the other instances vouching for each user.
    """

    records: tuple[tuple[Presence, frozenset[str]], ...]
    reason: str


StoreEvent = RemotePresence | RemoteLeave | Expired | FriendshipChanged | BlockChanged | Resync
EventSink = Callable[[Sequence[StoreEvent]], None]

# (address, online): a user went online anywhere, or offline everywhere.
StatusSink = Callable[[str, bool], None]

Friendship = tuple[str, str]
# (blocker, blocked): a block has a direction.
Block = tuple[str, str]
GraphEvent = FriendshipChanged | BlockChanged


@dataclass(slots=True)
class GraphChanges:
    """What one change of friendships or blocks did.

    `changed`: the stored pairs whose state changed (friendships normalized
    `a < b`, blocks as `(blocker, blocked)`); an idempotent repeat changes
    nothing. `events`: what this instance must apply to its own engine, in
    order: the effective friendships that appeared or ended, and the blocks
    added or removed. A friendship added under a block is `changed` without
    an event; a block between friends ends their effective friendship.
    """

    changed: list[tuple[str, str]] = field(default_factory=list)
    events: list[GraphEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed)


class BlockLists(NamedTuple):
    """Whom a user blocks, and who blocks them."""

    blocking: frozenset[str]
    blocked_by: frozenset[str]


class StoreUnavailable(Exception):
    """The shared store cannot be reached; the operation was not applied."""


@dataclass(slots=True)
class StoreStats:
    """A store's counters, read by the metrics layer (from the trio thread).

    `shared`: the store is shared with other instances through Redis; only
    such a store has the `presenced_redis_*` metrics, the embedded store's
    counters stay at zero.
    """

    shared: bool = False
    # Failed calls to the shared store, by kind (`flush`, `listener` (the
    # change feed dropped), `resync`, `read`, `claim`, `friends`, `audit`,
    # `login-claim` (`login-claim-dropped`: claims dropped while Redis was away);
    # `internal` counts bugs caught so that they cannot stop the daemon).
    errors: Counter[str] = field(default_factory=Counter)
    # Times the store went from healthy to unhealthy.
    outages: int = 0
    # Batches of presence changes written, and the changes in them.
    flushes: int = 0
    writes_flushed: int = 0
    # Seconds per batch written.
    flush_latency: Histogram = field(default_factory=Histogram)
    # Change messages received from other instances, and the changes in them.
    messages_received: int = 0
    events_received: int = 0
    # Full resynchronisations by reason (`start`, `feed-reconnected`,
    # `recovered`, `epoch`, `gap`, `audit`, `error`, `requested`), and how
    # long the last one took (read and decode).
    resyncs: Counter[str] = field(default_factory=Counter)
    last_resync_seconds: float = 0.0
    # Periodic change-feed audits that came back clean.
    audits: int = 0
    # Changes waiting for the next flush (grows while the store is away).
    pending_writes: int = 0


class FriendsSource(Protocol):
    """Where friendships (and blocks) come from (the `--friends` file, PostgreSQL).

    A store that may lose friendships (a Redis restarted without persistence)
    rebuilds them from its registered source; see `Store.set_friends_source`.
    """

    @property
    def name(self) -> str:
        """What to call the source in logs, e.g. "friends file /etc/friends.csv"."""
        ...

    def batches(self) -> AsyncIterator[Sequence[Friendship]]:
        """Every friendship of the source, in batches of a few thousand pairs."""
        ...

    def block_batches(self) -> AsyncIterator[Sequence[Block]]:
        """Every block of the source (blocker, blocked), in batches; none for a
        source of friendships only."""
        ...


class Store(Protocol):
    instance_id: str
    # If set, called (on the trio thread) once per transition of a user
    # between online anywhere and offline everywhere, by exactly one
    # instance across the cluster (--publish-social-status).
    on_status: StatusSink | None

    @property
    def healthy(self) -> bool:
        """False while the store cannot be reached (the instance is degraded)."""
        ...

    @property
    def stats(self) -> StoreStats:
        """The store's counters, current as of the call."""
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
        """`friends_of(address)` if known without I/O (a login then needs no task), else None."""
        ...

    async def friends_of(self, address: str) -> frozenset[str]:
        """The user's effective friends: friendships without a block either way."""
        ...

    async def add_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        """Add friendships; `changed` holds those that did not exist yet (a < b)."""
        ...

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        """Remove friendships; `changed` holds those that existed (a < b)."""
        ...

    async def add_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        """Add blocks (blocker, blocked); `changed` holds those that were new."""
        ...

    async def remove_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        """Remove blocks; `changed` holds those that existed."""
        ...

    async def block_status(self, a: str, b: str) -> tuple[bool, bool]:
        """(a blocks b, b blocks a)."""
        ...

    async def blocks_of(self, address: str) -> BlockLists: ...

    async def load_blocks(self, pairs: Iterable[Block]) -> int:
        """Add blocks in bulk, idempotently, like `load_friendships`; returns how many were new."""
        ...

    async def load_friendships(self, pairs: Iterable[Friendship]) -> int:
        """Add friendships in bulk, idempotently; returns how many were new.

        For loading a friends source before this instance takes connections:
        other instances hear of the new pairs as of any change, this one's
        engine is not told (it has no sessions yet, and a big load would cost
        it seconds for nothing).
        """
        ...

    def set_friends_source(self, source: FriendsSource | None) -> None:
        """Register where friendships come from. A store that can lose them
        (Redis restarted empty) reloads the source when it notices."""
        ...

    async def get_presence(self, address: str) -> Presence | None:
        """The user's shared presence if online anywhere, else None."""
        ...

    async def online_snapshot(self) -> list[tuple[Presence, frozenset[str]]]:
        """Everyone online, with the ids of the instances vouching for them."""
        ...

    def claim_login(self, key: bytes, expires_ms: int, on_refused: Callable[[], None]) -> None:
        """Claim a login frame (its replay key) for this instance until `expires_ms` (wall ms).

        The instance has accepted the frame already (`presenced.auth.SeenLogins` refuses a
        replay it saw itself). A shared store checks, soon and without the caller waiting,
        that no other instance claimed the same key, and calls `on_refused` (on the trio
        thread) if one did; the embedded store, alone, has nothing to check.
        """
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
