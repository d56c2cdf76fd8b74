"""The embedded store: everything in this process, for a single instance.

It is the default: `presenced serve` needs nothing else to run. It keeps the
friendship graph, the blocks and a copy of the presence this instance wrote,
with the same semantics as the Redis store so that both pass one contract
suite.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable

import trio

from presenced.model import Presence, PresenceOp, PresenceWrite
from presenced.store.base import (
    Block,
    BlockChanged,
    BlockLists,
    EventSink,
    Friendship,
    FriendshipChanged,
    FriendsSource,
    GraphChanges,
    StatusSink,
    StoreStats,
    ordered_pair,
)


class MemoryStore:
    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or secrets.token_hex(6)
        self.stats = StoreStats()
        # Stored friendships, blocked or not; friends_of filters out blocks.
        self._friends: dict[str, set[str]] = {}
        # blocker -> whom they block, and blocked -> who blocks them.
        self._blocking: dict[str, set[str]] = {}
        self._blocked_by: dict[str, set[str]] = {}
        # By time of the last write, oldest first, so expiry pops the front.
        self._presence: OrderedDict[str, Presence] = OrderedDict()
        # Told of every online/offline transition (the only instance sees all).
        self.on_status: StatusSink | None = None

    @property
    def healthy(self) -> bool:
        return True

    async def run(
        self, sink: EventSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # No other instance exists, so nothing ever reaches the sink.
        task_status.started()
        await trio.sleep_forever()

    def write(self, op: PresenceOp) -> None:
        presence = self._presence
        if isinstance(op, PresenceWrite):
            address = op.presence.address
            if self.on_status is not None and address not in presence:
                self.on_status(address, True)
            presence[address] = op.presence
            presence.move_to_end(address)
        elif presence.pop(op.address, None) is not None and self.on_status is not None:
            self.on_status(op.address, False)

    # ------------------------------------------------------------- friendships

    async def load_friendships(self, pairs: Iterable[Friendship]) -> int:
        """Bulk load at start-up (a file, the friends database); returns how many were new.

        No events: nobody is connected yet. Consumes `pairs` as it goes, so a
        generator streaming a large source is never held twice.
        """
        added = 0
        friends = self._friends
        for a, b in pairs:
            if a == b:
                continue
            fa = friends.get(a)
            if fa is None:
                fa = friends[a] = set()
            if b not in fa:
                fa.add(b)
                fb = friends.get(b)
                if fb is None:
                    fb = friends[b] = set()
                fb.add(a)
                added += 1
        return added

    async def load_blocks(self, pairs: Iterable[Block]) -> int:
        """Bulk load of blocks (blocker, blocked) at start-up; returns how many were new."""
        added = 0
        for blocker, blocked in pairs:
            if blocker != blocked and self._set_block(blocker, blocked, True):
                added += 1
        return added

    def cached_friends(self, address: str) -> frozenset[str]:
        return self._effective_friends(address)

    def _effective_friends(self, address: str) -> frozenset[str]:
        friends = self._friends.get(address)
        if not friends:
            return frozenset()
        blocking = self._blocking.get(address)
        blocked_by = self._blocked_by.get(address)
        if not blocking and not blocked_by:
            return frozenset(friends)
        hidden = (blocking or set()) | (blocked_by or set())
        return frozenset(f for f in friends if f not in hidden)

    def set_friends_source(self, source: FriendsSource | None) -> None:
        # Friendships live as long as the process: nothing to rebuild them for.
        pass

    async def friends_of(self, address: str) -> frozenset[str]:
        return self._effective_friends(address)

    async def add_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        changes = GraphChanges()
        for a, b in pairs:
            if a != b and b not in self._friends.get(a, ()):
                self._friends.setdefault(a, set()).add(b)
                self._friends.setdefault(b, set()).add(a)
                pair = ordered_pair(a, b)
                changes.changed.append(pair)
                if not self._blocked_either_way(a, b):
                    changes.events.append(FriendshipChanged(*pair, True))
        return changes

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        changes = GraphChanges()
        for a, b in pairs:
            fa = self._friends.get(a)
            if fa is not None and b in fa:
                fa.discard(b)
                self._friends[b].discard(a)
                for x in (a, b):
                    if not self._friends[x]:
                        del self._friends[x]
                pair = ordered_pair(a, b)
                changes.changed.append(pair)
                if not self._blocked_either_way(a, b):
                    changes.events.append(FriendshipChanged(*pair, False))
        return changes

    @property
    def friendship_count(self) -> int:
        return sum(len(f) for f in self._friends.values()) // 2

    # ------------------------------------------------------------------ blocks

    async def add_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        changes = GraphChanges()
        for blocker, blocked in pairs:
            if blocker == blocked:
                continue
            # The effective friendship ends with the first block either way.
            was_effective = self._effective(blocker, blocked)
            if not self._set_block(blocker, blocked, True):
                continue
            changes.changed.append((blocker, blocked))
            if was_effective:
                changes.events.append(FriendshipChanged(*ordered_pair(blocker, blocked), False))
            changes.events.append(BlockChanged(blocker, blocked, True))
        return changes

    async def remove_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        changes = GraphChanges()
        for blocker, blocked in pairs:
            if blocker == blocked or not self._set_block(blocker, blocked, False):
                continue
            changes.changed.append((blocker, blocked))
            changes.events.append(BlockChanged(blocker, blocked, False))
            # ... and comes back with the last one removed.
            if self._effective(blocker, blocked):
                changes.events.append(FriendshipChanged(*ordered_pair(blocker, blocked), True))
        return changes

    async def block_status(self, a: str, b: str) -> tuple[bool, bool]:
        return b in self._blocking.get(a, ()), a in self._blocking.get(b, ())

    async def blocks_of(self, address: str) -> BlockLists:
        return BlockLists(frozenset(self._blocking.get(address, ())),
                          frozenset(self._blocked_by.get(address, ())))

    @property
    def block_count(self) -> int:
        return sum(len(b) for b in self._blocking.values())

    def _blocked_either_way(self, a: str, b: str) -> bool:
        return b in self._blocking.get(a, ()) or a in self._blocking.get(b, ())

    def _effective(self, a: str, b: str) -> bool:
        return b in self._friends.get(a, ()) and not self._blocked_either_way(a, b)

    def _set_block(self, blocker: str, blocked: str, on: bool) -> bool:
        """Add or remove one block; False if it already was so."""
        targets = self._blocking.get(blocker)
        if on:
            if targets is None:
                targets = self._blocking[blocker] = set()
            elif blocked in targets:
                return False
            targets.add(blocked)
            self._blocked_by.setdefault(blocked, set()).add(blocker)
            return True
        if targets is None or blocked not in targets:
            return False
        targets.discard(blocked)
        if not targets:
            del self._blocking[blocker]
        sources = self._blocked_by[blocked]
        sources.discard(blocker)
        if not sources:
            del self._blocked_by[blocked]
        return True

    # ---------------------------------------------------------------- presence

    async def get_presence(self, address: str) -> Presence | None:
        return self._presence.get(address)

    async def online_snapshot(self) -> list[tuple[Presence, frozenset[str]]]:
        me = frozenset((self.instance_id,))
        return [(p, me) for p in self._presence.values()]

    def claim_login(self, key: bytes, expires_ms: int, on_refused: Callable[[], None]) -> None:
        # One instance: the hub's SeenLogins has checked everything there is to check.
        pass

    async def claim_expired(self, now_ms: int, ttl_ms: int) -> list[str]:
        cutoff = now_ms - ttl_ms
        presence = self._presence
        expired = []
        while presence:
            address, p = next(iter(presence.items()))
            if p.last_seen_ms > cutoff:
                break
            del presence[address]
            expired.append(address)
            if self.on_status is not None:
                self.on_status(address, False)
        return expired

    async def aclose(self) -> None:
        pass
