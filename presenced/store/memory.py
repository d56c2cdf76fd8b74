"""The embedded store: everything in this process, for a single instance.

It is the default: `presenced serve` needs nothing else to run. It keeps the
friendship graph and a copy of the presence this instance wrote, with the
same semantics as the Redis store so that both pass one contract suite.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable

import trio

from presenced.model import Presence, PresenceOp, PresenceWrite
from presenced.store.base import EventSink, Friendship, FriendsSource, StoreStats, ordered_pair


class MemoryStore:
    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or secrets.token_hex(6)
        self.stats = StoreStats()
        self._friends: dict[str, set[str]] = {}
        # By time of the last write, oldest first, so expiry pops the front.
        self._presence: OrderedDict[str, Presence] = OrderedDict()

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
        if isinstance(op, PresenceWrite):
            self._presence[op.presence.address] = op.presence
            self._presence.move_to_end(op.presence.address)
        else:
            self._presence.pop(op.address, None)

    # ------------------------------------------------------------- friendships

    async def load_friendships(self, pairs: Iterable[Friendship]) -> int:
        added = 0
        friends = self._friends
        for a, b in pairs:
            if a == b:
                continue
            fa = friends.setdefault(a, set())
            if b not in fa:
                fa.add(b)
                friends.setdefault(b, set()).add(a)
                added += 1
        return added

    def cached_friends(self, address: str) -> frozenset[str] | None:
        return frozenset(self._friends.get(address, ()))

    def set_friends_source(self, source: FriendsSource | None) -> None:
        # Friendships live as long as the process: nothing to rebuild them for.
        pass

    async def friends_of(self, address: str) -> frozenset[str]:
        return frozenset(self._friends.get(address, ()))

    async def add_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        added = []
        for a, b in pairs:
            if a != b and b not in self._friends.get(a, ()):
                self._friends.setdefault(a, set()).add(b)
                self._friends.setdefault(b, set()).add(a)
                added.append(ordered_pair(a, b))
        return added

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        removed = []
        for a, b in pairs:
            fa = self._friends.get(a)
            if fa is not None and b in fa:
                fa.discard(b)
                self._friends[b].discard(a)
                for x in (a, b):
                    if not self._friends[x]:
                        del self._friends[x]
                removed.append(ordered_pair(a, b))
        return removed

    @property
    def friendship_count(self) -> int:
        return sum(len(f) for f in self._friends.values()) // 2

    # ---------------------------------------------------------------- presence

    async def get_presence(self, address: str) -> Presence | None:
        return self._presence.get(address)

    async def online_snapshot(self) -> list[tuple[Presence, frozenset[str]]]:
        me = frozenset((self.instance_id,))
        return [(p, me) for p in self._presence.values()]

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
        return expired

    async def aclose(self) -> None:
        pass
