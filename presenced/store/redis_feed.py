"""The Redis store's change feed, judged without I/O: what to apply, when to resync.

Every instance publishes its changes as numbered messages on one channel
(docs/redis.md). `FeedTracker` is fed everything the store hears about the
feed (messages, subscribe and loss, script replies, audit fences, snapshots)
and decides, in one place:

- which events to hand to the engine, and whether a message is the next one
  of its origin (a gap, a counter that started again or another Redis epoch
  means something was missed: "resync needed");
- while a resync is pending, that messages wait (`buffering`), and which of
  them the snapshot already contains when it arrives;
- whether the audit's fence proves the feed whole;
- whether a snapshot shows that Redis lost data (a new epoch, or a change
  counter that went back), in which case the store puts back what it knows
  before trusting the snapshot, and friend sets are only added to;
- that users this instance expired after the snapshot was read stay expired
  (the own-expiries rule).

The store (redis_store.py) does the I/O around it: it reads snapshots, sends
fences, and runs a resync when `resync_due` says so.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from presenced.model import Presence
from presenced.store.base import Expired, FriendshipChanged, Resync, StoreEvent, StoreStats
from presenced.store.friend_cache import FriendCache
from presenced.store.redis_codec import Message

Records = list[tuple[Presence, frozenset[str]]]

# Own expiry messages remembered for the own-expiries rule.
EXPIRIES_KEPT = 256


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    # For the log and the Resync event.
    reason: str
    # For metrics (`start`, `feed-reconnected`, `recovered`, `epoch`, `gap`,
    # `audit`, `error`, `requested`).
    kind: str


@dataclass(slots=True)
class Snapshot:
    """Everything a resync reads from Redis in one MULTI."""

    records: Records
    # Each origin's last message number, and the epoch they belong to.
    seqs: dict[str, int]
    epoch: str
    # Friend sets of the users whose sets were cached when the resync began.
    friends: dict[str, set[str]]


@dataclass(frozen=True, slots=True)
class ResyncTicket:
    """What a resync started from (see `FeedTracker.begin_resync`)."""

    request: ResyncRequest
    generation: int
    epoch: str | None
    # Message numbers applied per origin, and the last one we published.
    seqs: dict[str, int]
    published: int
    # Users whose friend sets to read with the snapshot.
    cached: list[str]


class AuditStep(enum.Enum):
    # Nothing to check now (no feed, or a resync is pending anyway).
    SKIP = "skip"
    # The previous fence never came back: the feed is silently dead.
    RECONNECT = "reconnect"
    # Publish the fence (and read the counters) now.
    PUBLISH = "publish"


@dataclass(slots=True)
class _Fence:
    token: str
    # Filled in when the audit's MULTI returns, which may be after the fence
    # itself came back through the feed.
    seqs: dict[str, int] | None = None
    epoch: str | None = None
    # What we had applied when the fence came back, if before the reply.
    applied: dict[str, int] | None = None


class FeedTracker:
    def __init__(self, me: str, friends: FriendCache, stats: StoreStats) -> None:
        self.me = me
        self.friends = friends
        self.stats = stats
        # Last message number applied per origin, and the Redis epoch.
        self.seqs: dict[str, int] = {}
        self.epoch: str | None = None
        self.subscribed = False
        # Counts subscriptions: a resync started under an older one is stale.
        self.generation = 0
        # Messages wait from a resync request until its snapshot is applied.
        self.buffering = False
        self._buffer: list[Message] = []
        self.resync: ResyncRequest | None = None
        self._fence: _Fence | None = None
        # Our own expiry messages: (message number, users).
        self._expiries: deque[tuple[int, list[str]]] = deque(maxlen=EXPIRIES_KEPT)
        # The highest message number of ours a script reply reported.
        self._published = 0
        # Origins whose counter started again (not a sign of data loss).
        self._restarted: set[str] = set()

    @property
    def resync_due(self) -> bool:
        """A resync is wanted and can run (the feed is subscribed)."""
        return self.resync is not None and self.subscribed

    # ----------------------------------------------------------- subscription

    def feed_subscribed(self) -> None:
        self.generation += 1
        self.subscribed = True
        self._fence = None
        # Anything buffered came through the old connection and is covered
        # by the snapshot about to be read.
        self._buffer = []
        if self.epoch is None:
            self.request_resync("start", "start")
        else:
            self.request_resync("change feed reconnected", "feed-reconnected")

    def feed_lost(self) -> None:
        self.subscribed = False
        self._fence = None

    def request_resync(self, reason: str, kind: str) -> None:
        """The first reason wins until the resync is done."""
        if self.resync is None:
            self.resync = ResyncRequest(reason, kind)
        # From now on changes wait, so that none is applied before the
        # snapshot that may already contain it.
        self.buffering = True

    # --------------------------------------------------------------- messages

    def receive(self, messages: Iterable[Message], replay: bool = False) -> list[StoreEvent]:
        """Apply change messages in order, checking each origin's sequence;
        returns the events for the engine.

        `replay`: messages held during a resync; those the snapshot already
        contains (numbers up to the snapshot's) are expected, not suspicious.
        """
        events: list[StoreEvent] = []
        seqs = self.seqs
        for msg in messages:
            if msg.fence is not None:
                self._fence_back(msg.fence)
                continue
            if self.buffering:
                self._buffer.append(msg)
                continue
            if msg.epoch != self.epoch:
                self.request_resync("a change from a new Redis epoch", "epoch")
                self._buffer.append(msg)
                continue
            expected = seqs.get(msg.origin, 0) + 1
            if msg.seq == 1 and expected > 1 and not replay:
                # The origin's counter started again (its entry was dropped by
                # the garbage collection of silent instances while it lived).
                self._restarted.add(msg.origin)
                self.request_resync(f"sequence of {msg.origin} restarted", "gap")
                self._buffer.append(msg)
                continue
            if msg.seq < expected:
                # Already in the snapshot we loaded. Friendship changes are
                # idempotent, and replaying them closes the gap a fetch racing
                # with the snapshot could leave; presence would only flicker.
                for ev in msg.events:
                    if isinstance(ev, FriendshipChanged):
                        self.friends.apply(ev)
                        events.append(ev)
                continue
            if msg.seq > expected:
                self.request_resync(
                    f"missed {msg.seq - expected} change message(s) from {msg.origin}", "gap")
                self._buffer.append(msg)
                continue
            seqs[msg.origin] = msg.seq
            for ev in msg.events:
                if isinstance(ev, FriendshipChanged):
                    self.friends.apply(ev)
            events.extend(msg.events)
        self.stats.events_received += len(events)
        return events

    def script_replied(self, epoch: str, seq: int = 0) -> None:
        """A script of ours ran: it names the epoch, and `seq` is the number of
        the message it published (0 if none)."""
        if seq > self._published:
            self._published = seq
        if self.epoch is not None and epoch != self.epoch:
            self.request_resync("Redis lost its data (new epoch)", "epoch")

    def expired_here(self, published: list[tuple[int, list[str]]]) -> None:
        """Users this instance took offline, by message number.

        A resync whose snapshot was read before that message must not bring
        them back: they are expired again right after it (`finish_resync`).
        """
        self._expiries.extend(published)

    # ------------------------------------------------------------------ audit

    def audit(self, token: str) -> AuditStep:
        """The periodic check that no message was missed; see docs/redis.md.

        One MULTI reads every origin's counter and publishes a fence (`token`)
        to ourselves; messages arrive in publish order, so when the fence is
        back we must have applied exactly each counter.
        """
        if not self.subscribed or self.buffering:
            return AuditStep.SKIP
        if self._fence is not None:
            self._fence = None
            return AuditStep.RECONNECT
        self._fence = _Fence(token)
        return AuditStep.PUBLISH

    def audit_replied(self, token: str, seqs: dict[str, int], epoch: str) -> None:
        fence = self._fence
        if fence is None or fence.token != token:
            return
        fence.seqs, fence.epoch = seqs, epoch
        if fence.applied is not None:
            self._judge_fence(fence, fence.applied)

    def audit_failed(self, token: str) -> None:
        if self._fence is not None and self._fence.token == token:
            self._fence = None

    def _fence_back(self, token: str) -> None:
        fence = self._fence
        if fence is None or fence.token != token:
            # A fence published before a reconnect: the ordering it vouched
            # for no longer holds.
            return
        if self.buffering:
            self._fence = None
            return
        if fence.seqs is None:
            # Back before the MULTI's reply: judge when that arrives, against
            # what we had applied at this point.
            fence.applied = dict(self.seqs)
            return
        self._judge_fence(fence, self.seqs)

    def _judge_fence(self, fence: _Fence, applied: dict[str, int]) -> None:
        """By the fence, we must have applied exactly up to each origin's
        counter. Less is a lost message; more means a counter started again."""
        self._fence = None
        if self.buffering or fence.seqs is None:
            return
        if fence.epoch != self.epoch:
            self.request_resync("audit: Redis epoch changed", "audit")
            return
        me = self.me
        for origin, seq in fence.seqs.items():
            if origin != me and applied.get(origin, 0) != seq:
                self.request_resync(f"audit: missed change messages from {origin}", "audit")
                return
        self.stats.audits += 1

    # ----------------------------------------------------------------- resync

    def begin_resync(self) -> ResyncTicket:
        """A resync starts reading (only when `resync_due`)."""
        assert self.resync is not None, "no resync requested"
        return ResyncTicket(self.resync, self.generation, self.epoch, dict(self.seqs),
                            self._published, self.friends.addresses())

    def data_lost(self, ticket: ResyncTicket, snap: Snapshot) -> str | None:
        """Why `snap` shows that Redis lost data since the ticket's state, or None.

        A new epoch: Redis restarted empty. A counter below what we applied
        (or, for ours, published) before the read began: Redis went back to
        an older state (a restart from an RDB or AOF that missed the last
        writes), which loses friendships as surely.
        """
        if ticket.epoch is not None and snap.epoch != ticket.epoch:
            return f"new epoch {ticket.epoch} -> {snap.epoch}"
        now = snap.seqs.get(self.me, 0)
        if now < ticket.published:
            return f"our change counter went back from {ticket.published} to {now}"
        for origin, seq in ticket.seqs.items():
            now = snap.seqs.get(origin)
            if now is not None and now < seq and origin not in self._restarted:
                return f"the change counter of {origin} went back from {seq} to {now}"
        return None

    def finish_resync(
        self, ticket: ResyncTicket, snap: Snapshot, logged: list[FriendshipChanged],
        *, data_lost: bool,
    ) -> list[StoreEvent] | None:
        """Apply a snapshot: the events for the engine, or None if the feed
        dropped meanwhile (the resync is asked for again once it is back).

        `logged`: friendship changes applied while the snapshot was read.
        `data_lost`: Redis had lost data (and the store has put back what it
        knew); friend sets are then only added to.
        """
        if ticket.generation != self.generation or not self.subscribed:
            return None
        events: list[StoreEvent] = [Resync(tuple(snap.records), ticket.request.reason)]
        events += self.friends.refresh(snap.friends, logged, removals=not data_lost)
        if data_lost:
            self._expiries.clear()
        else:
            # Users we expired after the snapshot was read are in it still.
            mine = snap.seqs.get(self.me, 0)
            events += [Expired(a) for seq, addresses in self._expiries if seq > mine
                       for a in addresses]
        self.epoch = snap.epoch
        self.seqs = dict(snap.seqs)
        mine = self.seqs.get(self.me, 0)
        # After a loss our counter starts again from what Redis has.
        self._published = mine if data_lost else max(self._published, mine)
        self._restarted.clear()
        self.resync = None
        self.buffering = False
        buffered, self._buffer = self._buffer, []
        self.stats.resyncs[ticket.request.kind] += 1
        events += self.receive(buffered, replay=True)
        return events
