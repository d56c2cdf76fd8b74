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
