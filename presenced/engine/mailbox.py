"""A subscriber's pending updates, coalesced per friend."""

from __future__ import annotations

from collections.abc import Callable

from presenced.model import Presence


class Mailbox:
    """Updates waiting for one subscription stream.

    The stream is paced by the client's ACKs, so updates pile up while it
    waits; only the latest state of each friend is worth sending, which also
    bounds the mailbox by the subscriber's friend count.
    """

    __slots__ = ("address", "pending", "closed", "on_ready")

    def __init__(self, address: str) -> None:
        self.address = address
        self.pending: dict[str, Presence] = {}
        # Set when the subscription was replaced or ended: the stream must close.
        self.closed = False
        # Called when the mailbox goes from empty to non-empty, or closes, so
        # the sender can sleep without polling. Set by the server.
        self.on_ready: Callable[[], None] | None = None

    def put(self, presence: Presence) -> bool:
        """Queue an update; returns True when it replaced an unsent one."""
        pending = self.pending
        replaced = presence.address in pending
        pending[presence.address] = presence
        if not replaced and len(pending) == 1 and self.on_ready is not None:
            self.on_ready()
        return replaced

    def take(self, limit: int) -> list[Presence]:
        """Remove and return up to `limit` pending updates, oldest first."""
        pending = self.pending
        if len(pending) <= limit:
            batch = list(pending.values())
            pending.clear()
            return batch
        batch = []
        for address in list(pending)[:limit]:
            batch.append(pending.pop(address))
        return batch

    def close(self) -> None:
        self.closed = True
        if self.on_ready is not None:
            self.on_ready()


class TransitionMailbox(Mailbox):
    """A subscription that hears only online/offline transitions (the v2 connectivity stream).

    The engine puts only transitions here, so a pending entry always differs from what the
    subscriber last received: a second transition of the same friend before it was sent
    brings them back to what the subscriber already believes, and both are dropped (no
    ONLINE twice in a row, no OFFLINE for a friend they never saw online).
    """

    __slots__ = ()

    def put(self, presence: Presence) -> bool:
        pending = self.pending
        old = pending.get(presence.address)
        if old is not None:
            if old.online != presence.online:
                del pending[presence.address]
            else:
                pending[presence.address] = presence
            return True
        pending[presence.address] = presence
        if len(pending) == 1 and self.on_ready is not None:
            self.on_ready()
        return False


class FriendshipFeed:
    """Friendships of one session's user that began or ended, for its v2 friendship stream.

    Coalesced per friend like a mailbox (an end that follows an unsent beginning cancels it:
    the subscriber never knew), and bounded: past `limit` pending events the oldest is dropped
    (counted in `dropped`), so a user whose friendships churn cannot grow the server's memory.
    """

    __slots__ = ("address", "pending", "limit", "dropped", "closed", "on_ready")

    def __init__(self, address: str, limit: int) -> None:
        self.address = address
        # Friend -> True when the friendship began, False when it ended.
        self.pending: dict[str, bool] = {}
        self.limit = max(1, limit)
        self.dropped = 0
        self.closed = False
        self.on_ready: Callable[[], None] | None = None

    def put(self, friend: str, added: bool) -> None:
        pending = self.pending
        old = pending.get(friend)
        if old is not None:
            if old != added:
                del pending[friend]
            return
        if len(pending) >= self.limit:
            del pending[next(iter(pending))]
            self.dropped += 1
        pending[friend] = added
        if len(pending) == 1 and self.on_ready is not None:
            self.on_ready()

    def take(self, limit: int) -> list[tuple[str, bool]]:
        """Remove and return up to `limit` (friend, began) events, oldest first."""
        pending = self.pending
        batch: list[tuple[str, bool]] = []
        for friend in list(pending)[:limit]:
            batch.append((friend, pending.pop(friend)))
        return batch

    def close(self) -> None:
        self.closed = True
        if self.on_ready is not None:
            self.on_ready()
