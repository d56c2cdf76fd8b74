"""The friend sets a shared store keeps in memory (no I/O).

A store that reads friendships from elsewhere (Redis) keeps the friend sets
of the users connected here, so that `friends_of` answers from memory and a
change feed can keep them current. Two things make that subtle, and both are
decided here:

- A fetch races with changes: Redis answers, and a change arrives before the
  answer reaches us. While fetches are in flight every applied change is
  logged, and each fetch replays the changes logged after it started on top
  of what Redis returned (`begin_fetch` / `end_fetch` / `store`).
- A full re-read (a resync) turns differences into events (`refresh`), except
  that after Redis lost its data a set that lacks a friendship proves nothing:
  missing there means unknown, not removed, so only additions count.

The cache is bounded: beyond `max_entries` the oldest entries are dropped
(a dropped entry is simply fetched again).
"""

from __future__ import annotations

from collections.abc import Iterator

from presenced.store.base import Friendship, FriendshipChanged, ordered_pair

# Friend sets kept in memory by default.
FRIENDS_CACHE_MAX = 200_000


class FriendCache:
    def __init__(self, max_entries: int = FRIENDS_CACHE_MAX) -> None:
        self.max_entries = max_entries
        self._sets: dict[str, set[str]] = {}
        # Fetches in flight, and the changes applied since the oldest began.
        self._fetching = 0
        self._log: list[FriendshipChanged] = []

    def __len__(self) -> int:
        return len(self._sets)

    def __contains__(self, address: object) -> bool:
        return address in self._sets

    def get(self, address: str) -> set[str] | None:
        return self._sets.get(address)

    def addresses(self) -> list[str]:
        return list(self._sets)

    def drop(self, address: str) -> None:
        """Forget a user (this instance no longer vouches for them)."""
        self._sets.pop(address, None)

    # ------------------------------------------------------------------ changes

    def apply(self, ev: FriendshipChanged) -> None:
        """A friendship changed (here, or on another instance through the feed)."""
        sets = self._sets
        fa = sets.get(ev.a)
        fb = sets.get(ev.b)
        if ev.added:
            if fa is not None:
                fa.add(ev.b)
            if fb is not None:
                fb.add(ev.a)
        else:
            if fa is not None:
                fa.discard(ev.b)
            if fb is not None:
                fb.discard(ev.a)
        if self._fetching:
            self._log.append(ev)

    # ------------------------------------------------------------------ fetches

    def begin_fetch(self) -> int:
        """A read of friend sets starts; returns its mark for `end_fetch`."""
        self._fetching += 1
        return len(self._log)

    def end_fetch(self, mark: int) -> list[FriendshipChanged]:
        """The read is over (answered or failed): the changes applied since it began."""
        logged = self._log[mark:]
        self._fetching -= 1
        if not self._fetching:
            self._log = []
        return logged

    def store(
        self, address: str, fetched: set[str], logged: list[FriendshipChanged]
    ) -> set[str]:
        """Cache a fetched set, with the changes that happened after the read."""
        _replay(address, fetched, logged)
        sets = self._sets
        sets[address] = fetched
        while len(sets) > self.max_entries:
            # Oldest first; a dropped entry is only fetched again.
            del sets[next(iter(sets))]
        return fetched

    def refresh(
        self, fresh: dict[str, set[str]], logged: list[FriendshipChanged], *,
        removals: bool = True,
    ) -> list[FriendshipChanged]:
        """Replace cached sets with a full re-read; the differences as events.

        `removals=False` after Redis lost data: a friendship missing from the
        re-read is unknown there, not removed, so it is kept (and no event
        says otherwise); additions still count.
        """
        sets = self._sets
        events: list[FriendshipChanged] = []
        seen: set[tuple[str, str, bool]] = set()
        for address, friends in fresh.items():
            _replay(address, friends, logged)
            old = sets.get(address)
            if old is None:
                continue
            for f in friends - old:
                a, b = ordered_pair(address, f)
                if (a, b, True) not in seen:
                    seen.add((a, b, True))
                    events.append(FriendshipChanged(a, b, True))
            if removals:
                for f in old - friends:
                    a, b = ordered_pair(address, f)
                    if (a, b, False) not in seen:
                        seen.add((a, b, False))
                        events.append(FriendshipChanged(a, b, False))
            else:
                friends |= old
            sets[address] = friends
        return events

    def pairs(self) -> Iterator[Friendship]:
        """Every cached friendship once (normalized a < b), to put back into a
        store that lost them. Safe to interleave with changes: it walks a copy
        of the addresses and reads each set when it gets there."""
        sets = self._sets
        for address in list(sets):
            friends = sets.get(address)
            if friends is None:
                continue
            for f in list(friends):
                # A pair between two cached users is in both sets: give it
                # once, unless the other set lacks it.
                other = sets.get(f)
                if address < f or other is None or address not in other:
                    yield ordered_pair(address, f)


def _replay(address: str, friends: set[str], logged: list[FriendshipChanged]) -> None:
    for ev in logged:
        if ev.a == address:
            other = ev.b
        elif ev.b == address:
            other = ev.a
        else:
            continue
        if ev.added:
            friends.add(other)
        else:
            friends.discard(other)
