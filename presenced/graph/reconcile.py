"""Deciding what to apply: events, incremental passes and full comparisons.

Every source of truth is turned into *desired states* (this pair should be
friends, this block should exist) and compared with what the source has
applied (`picture`); only differences become `Change`s, which the caller
applies to the store in the order they were decided. Pure: no database, no
Redis, no clock; the database's own timestamps come in with the results.

**Watermark and overlap.** `friendships.updated_at` is set by `now()`, the
*start* of the writing transaction, so a row may commit with an
`updated_at` older than the moment we last read. Each incremental pass
therefore re-reads rows changed since the previous pass's watermark (the
database's clock at that pass's start) *minus an overlap*; a transaction
that stays open longer than the overlap is caught by the periodic full
comparison.

**Blocks** have no update time: `blocked_at` finds new blocks, but an
unblock deletes the row. Each incremental pass also counts the blocks; a
count that differs from what we applied asks for a full re-read of the
(small) blocks table.

**Events against passes.** An event is newer than any pass that started
before it arrived, so a pass's verdict on a pair touched by an event since
the pass was planned is not applied (the pass read an older snapshot); the
pair is verified by the next pass instead. Every pair an event touched is
verified against the database by the next pass: an event for a row that
does not exist (yet) is undone, and one that was lost is found by the
overlap window. The database always wins, and nothing is applied twice: a
desired state already in the picture produces no change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from presenced.graph.picture import (
    AddressIds,
    Adjacency,
    BlockPicture,
    FriendshipPicture,
    contains,
)
from presenced.graph.social_events import BlockWanted, FriendshipWanted, Wanted

# Event-touched pairs verified by one incremental pass; beyond it the next
# pass is a full comparison instead (a burst, or the database away).
MAX_VERIFY = 10_000


class PassKind(Enum):
    INCREMENTAL = "incremental"
    FULL = "full"
    BLOCKS = "blocks"


class Kind(Enum):
    FRIENDSHIP = "friendship"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Change:
    """Make `pair` a friendship / block (`active`) or not.

    Friendships as `(a, b)` with `a < b`, blocks as `(blocker, blocked)`.
    `origin` is what decided it: `event`, `incremental`, `full`, `blocks`.
    """

    kind: Kind
    key: int
    pair: tuple[str, str]
    active: bool
    origin: str


@dataclass(slots=True)
class PassPlan:
    kind: PassKind
    # Incremental: friendships changed at or after this (database clock).
    since: datetime | None
    # Pairs touched by events, to read whatever the window says.
    friendships: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)
    # Events decided before the plan; later ones win over its result.
    seq: int = 0


@dataclass(slots=True)
class IncrementalResult:
    """What an incremental pass read, in one snapshot.

    `friendships`: (a, b, active) with a < b for every pair changed in the
    window or asked for; `blocks`: (blocker, blocked, present) for blocks
    created in the window and every pair asked for; `block_count`: rows of
    the blocks table.
    """

    watermark: datetime
    friendships: list[tuple[str, str, bool]]
    blocks: list[tuple[str, str, bool]]
    block_count: int


@dataclass(slots=True)
class FullResult:
    """A full read: every active friendship (as adjacency arrays) and every block.

    `added` and `removed` are the differences from the picture's base,
    computed where the read ran (off the trio thread). A blocks-only pass
    has `friendships` None.
    """

    watermark: datetime
    friendships: Adjacency | None
    added: list[int]
    removed: list[int]
    blocks: set[int]


class Reconciler:
    def __init__(self, overlap: timedelta, max_verify: int = MAX_VERIFY) -> None:
        self.overlap = overlap
        self.max_verify = max_verify
        self.ids = AddressIds()
        self.friendships = FriendshipPicture()
        self.blocks = BlockPicture()
        # The database's clock at the start of the last successful pass.
        self.watermark: datetime | None = None
        # Events decided so far, and the last one to touch each pair.
        self.seq = 0
        self._touched_friendships: dict[int, int] = {}
        self._touched_blocks: dict[int, int] = {}
        self.full_needed = False
        self.blocks_needed = False

    # ------------------------------------------------------------- start-up

    def loaded(self, watermark: datetime, friendships: Adjacency, blocks: set[int]) -> None:
        """The initial load, already applied to the store in bulk."""
        self.friendships.replace(friendships, {})
        self.blocks = BlockPicture()
        self.blocks.present = set(blocks)
        self.watermark = watermark

    # ---------------------------------------------------------------- events

    def on_event(self, wanted: Wanted) -> Change | None:
        """An event's desired state; a Change if it differs from what is applied."""
        self.seq += 1
        ids = self.ids
        if isinstance(wanted, FriendshipWanted):
            key = ids.pair_key(wanted.a, wanted.b)
            self._touched_friendships[key] = self.seq
            return self._decide(Kind.FRIENDSHIP, key, wanted.active, "event")
        assert isinstance(wanted, BlockWanted)
        key = ids.block_key(wanted.blocker, wanted.blocked)
        self._touched_blocks[key] = self.seq
        return self._decide(Kind.BLOCK, key, wanted.active, "event")

    # ---------------------------------------------------------------- passes

    def next_kind(self, full_due: bool) -> PassKind:
        if full_due or self.full_needed or self.watermark is None:
            return PassKind.FULL
        if self.blocks_needed:
            return PassKind.BLOCKS
        return PassKind.INCREMENTAL

    def plan(self, kind: PassKind) -> PassPlan:
        if kind is PassKind.FULL:
            # A full read verifies every pair: what events touched until
            # now needs no list (only later events matter, by seq).
            self._touched_friendships = _after(self._touched_friendships, self.seq)
            self._touched_blocks = _after(self._touched_blocks, self.seq)
            # Until one succeeds, the next pass is full again.
            self.full_needed = True
            return PassPlan(kind, None, seq=self.seq)
        if kind is PassKind.BLOCKS:
            return PassPlan(kind, None, seq=self.seq)
        assert self.watermark is not None, "an incremental pass follows a load"
        touched = len(self._touched_friendships) + len(self._touched_blocks)
        plan = PassPlan(kind, self.watermark - self.overlap, seq=self.seq)
        if touched > self.max_verify:
            # Too many to list: the next pass reads everything instead.
            self.full_needed = True
            return plan
        ids = self.ids
        plan.friendships = [ids.pair(k) for k in self._touched_friendships]
        plan.blocks = [ids.block(k) for k in self._touched_blocks]
        return plan

    def finish_incremental(self, plan: PassPlan, result: IncrementalResult) -> list[Change]:
        ids = self.ids
        skip_f = {k for k, s in self._touched_friendships.items() if s > plan.seq}
        skip_b = {k for k, s in self._touched_blocks.items() if s > plan.seq}
        changes: list[Change] = []
        for a, b, active in result.friendships:
            if a == b:
                continue
            key = ids.pair_key(a, b)
            if key not in skip_f:
                self._decide_into(changes, Kind.FRIENDSHIP, key, active, "incremental")
        for blocker, blocked, present in result.blocks:
            if blocker == blocked:
                continue
            key = ids.block_key(blocker, blocked)
            if key not in skip_b:
                self._decide_into(changes, Kind.BLOCK, key, present, "incremental")
        if plan.friendships or plan.blocks:
            # Those were verified; later events keep their entries.
            self._touched_friendships = _after(self._touched_friendships, plan.seq)
            self._touched_blocks = _after(self._touched_blocks, plan.seq)
        if result.block_count != len(self.blocks) + len(self.blocks.unknown):
            # An unblock (a deleted row) cannot be seen any other way.
            self.blocks_needed = True
        self.watermark = result.watermark
        return changes

    def finish_full(self, plan: PassPlan, result: FullResult) -> list[Change]:
        """Differences between a full read and the picture; the read becomes the base."""
        changes: list[Change] = []
        if result.friendships is not None:
            skip = {k for k, s in self._touched_friendships.items() if s > plan.seq}
            picture = self.friendships
            new = result.friendships
            # States to keep over the new base: pairs events touched since
            # the plan, as they are now.
            keep = {k: picture.state(k) for k in skip}
            decided: list[tuple[int, bool]] = []
            handled = set()
            for key in result.added:
                handled.add(key)
                if key not in skip and picture.state(key) is not True:
                    decided.append((key, True))
            for key in result.removed:
                handled.add(key)
                if key not in skip and picture.state(key) is not False:
                    decided.append((key, False))
            for key, state in picture.overlay.items():
                if key in skip or key in handled:
                    continue
                wanted = contains(new, key)
                if state is not wanted:
                    decided.append((key, wanted))
            picture.replace(new, keep)
            ids = self.ids
            for key, active in decided:
                changes.append(Change(Kind.FRIENDSHIP, key, ids.pair(key), active, "full"))
            self.full_needed = False
        changes.extend(self._finish_blocks(plan, result.blocks,
                                           "full" if result.friendships is not None
                                           else "blocks"))
        self.blocks_needed = False
        self.watermark = result.watermark
        return changes

    def _finish_blocks(self, plan: PassPlan, blocks: set[int], origin: str) -> list[Change]:
        skip = {k for k, s in self._touched_blocks.items() if s > plan.seq}
        picture = self.blocks
        changes: list[Change] = []
        for key in blocks - picture.present:
            if key not in skip:
                self._decide_into(changes, Kind.BLOCK, key, True, origin)
        for key in (picture.present | picture.unknown) - blocks:
            if key not in skip:
                self._decide_into(changes, Kind.BLOCK, key, False, origin)
        if plan.kind is PassKind.BLOCKS:
            self._touched_blocks = _after(self._touched_blocks, plan.seq)
        return changes

    # ----------------------------------------------------------- application

    def failed(self, changes: Iterable[Change]) -> None:
        """Changes the store refused: their state is unknown until verified again."""
        for change in changes:
            self.seq += 1
            if change.kind is Kind.FRIENDSHIP:
                self.friendships.set(change.key, None)
                self._touched_friendships[change.key] = self.seq
            else:
                self.blocks.set(change.key, None)
                self._touched_blocks[change.key] = self.seq

    @property
    def pending_verification(self) -> int:
        return len(self._touched_friendships) + len(self._touched_blocks)

    # ------------------------------------------------------------ internals

    def _decide(self, kind: Kind, key: int, active: bool, origin: str) -> Change | None:
        picture = self.friendships if kind is Kind.FRIENDSHIP else self.blocks
        if picture.state(key) is active:
            return None
        picture.set(key, active)
        pair = self.ids.pair(key) if kind is Kind.FRIENDSHIP else self.ids.block(key)
        return Change(kind, key, pair, active, origin)

    def _decide_into(
        self, changes: list[Change], kind: Kind, key: int, active: bool, origin: str
    ) -> None:
        change = self._decide(kind, key, active, origin)
        if change is not None:
            changes.append(change)


def _after(touched: dict[int, int], seq: int) -> dict[int, int]:
    return {k: s for k, s in touched.items() if s > seq}
