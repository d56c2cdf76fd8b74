"""What the friends-database source has applied to the store, kept compactly.

The full comparison must find friendships that vanished from the database,
so the source remembers what it applied. A million friendships as Python
tuples in a set would cost ~100 MB; here they cost ~4 bytes each.

Addresses are numbered in order of first sight (`AddressIds`, interned, so
the store's friend sets share the strings). A friendship is stored once,
under the smaller number: `adjacency[i]` is a sorted array of the numbers
greater than `i` it is friends with. The arrays hold the last full read;
an overlay holds what changed since (events and incremental passes). A
friendship's key, for the overlay and for changes, is `(i << 32) | j`.

Every operation on the whole picture is made of small steps (one user's
array at a time), never one long C call: a full read runs in a worker
thread, and a long call would hold the GIL and stall the event loop.

Pure: no I/O. `AddressIds.id` may be called from a worker thread (a full
read numbers new addresses while the trio thread handles events), hence its
lock; everything else runs on one thread at a time.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from sys import intern

_LOW = 0xFFFF_FFFF
_EMPTY = array("I")

Adjacency = list[array]


class AddressIds:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._addresses: list[str] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._addresses)

    def id(self, address: str) -> int:
        """The address's number, assigned on first sight."""
        number = self._ids.get(address)
        if number is not None:
            return number
        with self._lock:
            number = self._ids.get(address)
            if number is None:
                address = intern(address)
                number = len(self._addresses)
                self._addresses.append(address)
                self._ids[address] = number
            return number

    def address(self, number: int) -> str:
        return self._addresses[number]

    def pair_key(self, a: str, b: str) -> int:
        """A friendship's key, the same whichever way round."""
        i, j = self.id(a), self.id(b)
        return (i << 32) | j if i < j else (j << 32) | i

    def pair(self, key: int) -> tuple[str, str]:
        """The friendship of a key, as addresses with `a < b`."""
        a, b = self._addresses[key >> 32], self._addresses[key & _LOW]
        return (a, b) if a < b else (b, a)

    def block_key(self, blocker: str, blocked: str) -> int:
        return (self.id(blocker) << 32) | self.id(blocked)

    def block(self, key: int) -> tuple[str, str]:
        """(blocker, blocked) of a block key."""
        return self._addresses[key >> 32], self._addresses[key & _LOW]

    def adjacency(self, pairs: Iterable[tuple[str, str]]) -> Adjacency:
        """The friendships `pairs` as sorted arrays by smaller number (duplicates dropped)."""
        builder = AdjacencyBuilder(self)
        builder.add(pairs)
        return builder.finish()


class AdjacencyBuilder:
    """Builds an adjacency from batches of address pairs (a full read's rows).

    The per-row loop is the cost of a full read (a million rows): kept to
    two dict lookups and an append, with the addresses lower-cased only if
    they are not already.
    """

    def __init__(self, ids: AddressIds) -> None:
        self._ids = ids
        self._lists: list[list[int] | None] = []

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        get = self._ids._ids.get
        number = self._ids.id
        lists = self._lists
        for a, b in pairs:
            i = get(a)
            if i is None:
                i = number(a if a.islower() else a.lower())
            j = get(b)
            if j is None:
                j = number(b if b.islower() else b.lower())
            if i > j:
                i, j = j, i
            elif i == j:
                continue
            try:
                friends = lists[i]
            except IndexError:
                lists.extend([None] * (i + 1 - len(lists)))
                friends = None
            if friends is None:
                lists[i] = [j]
            else:
                friends.append(j)

    def finish(self) -> Adjacency:
        lists, self._lists = self._lists, []
        return [_EMPTY if f is None else array("I", sorted(set(f))) for f in lists]


def adjacency_size(adjacency: Adjacency) -> int:
    return sum(len(f) for f in adjacency)


def diff_adjacency(old: Adjacency, new: Adjacency) -> tuple[list[int], list[int]]:
    """(keys only in `new`, keys only in `old`)."""
    added: list[int] = []
    removed: list[int] = []
    for i in range(max(len(old), len(new))):
        before = old[i] if i < len(old) else _EMPTY
        after = new[i] if i < len(new) else _EMPTY
        if before == after:
            continue
        high = i << 32
        b, a = set(before), set(after)
        added.extend(high | j for j in a - b)
        removed.extend(high | j for j in b - a)
    return added, removed


def contains(adjacency: Adjacency, key: int) -> bool:
    i = key >> 32
    if i >= len(adjacency):
        return False
    friends = adjacency[i]
    j = key & _LOW
    k = bisect_left(friends, j)
    return k < len(friends) and friends[k] == j


class FriendshipPicture:
    """Friendship keys: the last full read (`base`) and an overlay of later changes.

    A key's state is True (applied), False (not there) or None (unknown: an
    application failed, so the next pass must apply it whatever it finds).
    """

    def __init__(self) -> None:
        self.base: Adjacency = []
        self.overlay: dict[int, bool | None] = {}
        self._count = 0

    def __len__(self) -> int:
        """Friendships known to be applied."""
        return self._count

    def state(self, key: int) -> bool | None:
        overlay = self.overlay
        if key in overlay:
            return overlay[key]
        return contains(self.base, key)

    def set(self, key: int, state: bool | None) -> None:
        before = self.state(key)
        if state is not None and state == contains(self.base, key):
            self.overlay.pop(key, None)
        else:
            self.overlay[key] = state
        self._count += (state is True) - (before is True)

    def replace(self, base: Adjacency, keep: dict[int, bool | None]) -> None:
        """A new full read becomes the base; `keep` are overlay states that stay."""
        self.base = base
        self.overlay = {}
        self._count = adjacency_size(base)
        for key, state in keep.items():
            self.set(key, state)

    def keys(self) -> Iterator[int]:
        """Every applied key (to load or rebuild a store)."""
        overlay = self.overlay
        for i, friends in enumerate(self.base):
            high = i << 32
            for j in friends:
                key = high | j
                if key not in overlay:
                    yield key
        for key, state in overlay.items():
            if state is True:
                yield key


class BlockPicture:
    """Block keys; blocks are few next to friendships, so a plain set."""

    def __init__(self) -> None:
        self.present: set[int] = set()
        self.unknown: set[int] = set()

    def __len__(self) -> int:
        return len(self.present)

    def state(self, key: int) -> bool | None:
        if key in self.unknown:
            return None
        return key in self.present

    def set(self, key: int, state: bool | None) -> None:
        if state is None:
            self.unknown.add(key)
            self.present.discard(key)
            return
        self.unknown.discard(key)
        if state:
            self.present.add(key)
        else:
            self.present.discard(key)
