"""FeedTracker: the Redis change feed's decisions, as plain function calls.

Like tests/test_engine.py: no Redis, no threads, no sleeps. Messages,
subscriptions, script replies, fences and snapshots go in; events for the
engine, resync requests and data-loss verdicts come out. The same paths
against a real Redis are in tests/test_redis_store.py.
"""

from __future__ import annotations

import pytest

from presenced.model import Position, Presence
from presenced.store.base import (
    Expired,
    FriendshipChanged,
    RemoteLeave,
    RemotePresence,
    Resync,
    StoreEvent,
    StoreStats,
)
from presenced.store.friend_cache import FriendCache
from presenced.store.redis_codec import Message
from presenced.store.redis_feed import AuditStep, FeedTracker, Snapshot

EPOCH = "e1"


def online(address: str, realm: str = "main") -> Presence:
    return Presence(address, True, Position(realm, 0, 0), 1_000)


def msg(origin: str, seq: int, *events: StoreEvent, epoch: str = EPOCH) -> Message:
    return Message(origin, epoch, seq, list(events))


def fence(token: str) -> Message:
    return Message("me", EPOCH, 0, [], fence=token)


def snapshot(seqs: dict[str, int], *users: str, epoch: str = EPOCH,
             friends: dict[str, set[str]] | None = None) -> Snapshot:
    return Snapshot([(online(u), frozenset({"a"})) for u in users], dict(seqs), epoch,
                    friends or {})


class Feed:
    """A tracker with its cache and counters, and helpers to drive a resync."""

    def __init__(self) -> None:
        self.stats = StoreStats(shared=True)
        self.friends = FriendCache()
        self.tracker = FeedTracker("me", self.friends, self.stats)

    def resync(self, snap: Snapshot, *, lost: bool | None = None) -> list[StoreEvent]:
        t = self.tracker
        assert t.resync_due
        ticket = t.begin_resync()
        verdict = t.data_lost(ticket, snap)
        events = t.finish_resync(ticket, snap, [],
                                 data_lost=(verdict is not None) if lost is None else lost)
        assert events is not None
        return events

    def started(self, seqs: dict[str, int] | None = None, *users: str) -> list[StoreEvent]:
        self.tracker.feed_subscribed()
        return self.resync(snapshot(seqs or {}, *users))


@pytest.fixture
def feed() -> Feed:
    return Feed()


# ------------------------------------------------------------------ start


def test_start_waits_for_the_snapshot_then_replays_what_is_newer(feed: Feed):
    t = feed.tracker
    assert not t.resync_due
    t.feed_subscribed()
    assert t.resync_due and t.resync.kind == "start"
    # Messages arriving while the snapshot is read wait.
    p1, p2 = online("0xu", "one"), online("0xu", "two")
    assert t.receive([msg("a", 3, RemotePresence(p1, "a")),
                      msg("a", 4, RemotePresence(p2, "a"),
                          FriendshipChanged("0xu", "0xv", True))]) == []
    # The snapshot was read after message 3: only 4 is new.
    events = feed.resync(snapshot({"a": 3}, "0xu"))
    assert isinstance(events[0], Resync) and events[0].reason == "start"
    assert events[1:] == [RemotePresence(p2, "a"), FriendshipChanged("0xu", "0xv", True)]
    assert not t.buffering and t.resync is None and t.epoch == EPOCH
    assert feed.stats.resyncs == {"start": 1}


def test_a_snapshot_already_newer_replays_only_friendship_changes(feed: Feed):
    t = feed.tracker
    t.feed_subscribed()
    t.receive([msg("a", 5, RemotePresence(online("0xu"), "a"),
                   FriendshipChanged("0xu", "0xv", False))])
    events = feed.resync(snapshot({"a": 5}, "0xu"))
    # Presence is in the snapshot; the (idempotent) friendship change is
    # replayed for a fetch that may have raced with the snapshot.
    assert events[1:] == [FriendshipChanged("0xu", "0xv", False)]


def test_messages_in_order_are_applied_and_counted(feed: Feed):
    feed.started({"a": 1})
    t = feed.tracker
    p = online("0xu")
    events = t.receive([msg("a", 2, RemotePresence(p, "a")),
                        msg("b", 1, RemoteLeave("0xw", "b"), Expired("0xw"))])
    assert events == [RemotePresence(p, "a"), RemoteLeave("0xw", "b"), Expired("0xw")]
    assert t.seqs == {"a": 2, "b": 1}
    assert feed.stats.events_received == 3
    assert t.resync is None


def test_friendship_changes_keep_cached_sets_current(feed: Feed):
    feed.started({"a": 0})
    feed.friends.store("0xu", {"0xold"}, [])
    feed.tracker.receive([msg("a", 1, FriendshipChanged("0xu", "0xnew", True),
                              FriendshipChanged("0xold", "0xu", False))])
    assert feed.friends.get("0xu") == {"0xnew"}


# -------------------------------------------------------------- missed changes


def test_a_gap_asks_for_a_resync_and_holds_the_message(feed: Feed):
    feed.started({"a": 1})
    t = feed.tracker
    p = online("0xu", "two")
    assert t.receive([msg("a", 5, RemotePresence(p, "a"))]) == []
    assert t.resync.reason == "missed 3 change message(s) from a"
    assert t.resync.kind == "gap" and t.buffering
    # The snapshot contains message 5: it is not applied twice.
    events = feed.resync(snapshot({"a": 5}, "0xu"))
    assert [type(e) for e in events] == [Resync]
    assert t.receive([msg("a", 6, RemotePresence(p, "a"))]) == [RemotePresence(p, "a")]


def test_the_first_reason_wins_until_the_resync_is_done(feed: Feed):
    feed.started({"a": 1})
    t = feed.tracker
    t.receive([msg("a", 3)])
    t.request_resync("something else", "error")
    assert t.resync.kind == "gap"
    feed.resync(snapshot({"a": 3}))
    assert feed.stats.resyncs == {"start": 1, "gap": 1}


def test_a_restarted_counter_asks_for_a_resync_but_is_no_data_loss(feed: Feed):
    feed.started({"a": 7})
    t = feed.tracker
    t.receive([msg("a", 1, RemotePresence(online("0xu"), "a"))])
    assert t.resync.reason == "sequence of a restarted"
    ticket = t.begin_resync()
    # The garbage collection dropped a's counter while it lived: 1 < 7, but
    # nothing was lost.
    assert t.data_lost(ticket, snapshot({"a": 1})) is None


def test_a_change_from_another_epoch_asks_for_a_resync(feed: Feed):
    feed.started({"a": 1})
    t = feed.tracker
    t.receive([msg("a", 2, epoch="e2")])
    assert t.resync.kind == "epoch"


def test_a_script_reply_naming_another_epoch_asks_for_a_resync(feed: Feed):
    feed.started({})
    t = feed.tracker
    t.script_replied(EPOCH, 3)
    assert t.resync is None
    t.script_replied("e2")
    assert t.resync.reason == "Redis lost its data (new epoch)"


def test_a_resync_under_a_dropped_feed_is_stale(feed: Feed):
    feed.started({})
    t = feed.tracker
    t.request_resync("audit", "audit")
    ticket = t.begin_resync()
    t.feed_lost()
    assert not t.resync_due
    assert t.finish_resync(ticket, snapshot({}), [], data_lost=False) is None
    t.feed_subscribed()
    # Still pending, with its first reason, under the new subscription.
    assert t.resync_due and t.resync.kind == "audit"
    ticket = t.begin_resync()
    t.feed_lost()
    t.feed_subscribed()
    assert t.finish_resync(ticket, snapshot({}), [], data_lost=False) is None


# -------------------------------------------------------------------- audit


def test_a_clean_audit_whose_fence_returns_after_the_reply(feed: Feed):
    feed.started({"a": 2})
    t = feed.tracker
    assert t.audit("f1") is AuditStep.PUBLISH
    t.audit_replied("f1", {"a": 2, "me": 9}, EPOCH)
    t.receive([fence("f1")])
    assert feed.stats.audits == 1 and t.resync is None


def test_a_clean_audit_whose_fence_returns_before_the_reply(feed: Feed):
    feed.started({"a": 2})
    t = feed.tracker
    t.audit("f1")
    t.receive([fence("f1")])
    # Applied after the fence: not counted against it.
    t.receive([msg("a", 3)])
    t.audit_replied("f1", {"a": 2}, EPOCH)
    assert feed.stats.audits == 1 and t.resync is None


def test_an_audit_finds_a_lost_last_message(feed: Feed):
    feed.started({"a": 2})
    t = feed.tracker
    t.audit("f1")
    t.audit_replied("f1", {"a": 3}, EPOCH)
    t.receive([fence("f1")])
    assert t.resync.reason == "audit: missed change messages from a"
    assert feed.stats.audits == 0


def test_an_audit_finds_a_new_epoch(feed: Feed):
    feed.started({})
    t = feed.tracker
    t.audit("f1")
    t.receive([fence("f1")])
    t.audit_replied("f1", {}, "e2")
    assert t.resync.reason == "audit: Redis epoch changed"


def test_a_fence_that_never_returns_means_the_feed_is_dead(feed: Feed):
    feed.started({})
    t = feed.tracker
    assert t.audit("f1") is AuditStep.PUBLISH
    t.audit_replied("f1", {}, EPOCH)
    assert t.audit("f2") is AuditStep.RECONNECT
    # A new subscription forgets the old fence; a late one is ignored.
    t.feed_subscribed()
    t.receive([fence("f1")])
    assert feed.stats.audits == 0


def test_no_audit_without_a_feed_or_during_a_resync(feed: Feed):
    t = feed.tracker
    assert t.audit("f0") is AuditStep.SKIP
    feed.started({})
    t.audit("f1")
    t.request_resync("gap", "gap")
    # The fence comes back while messages wait: it proves nothing.
    t.receive([fence("f1")])
    t.audit_replied("f1", {}, EPOCH)
    assert feed.stats.audits == 0
    assert t.audit("f2") is AuditStep.SKIP


def test_a_failed_audit_forgets_its_fence(feed: Feed):
    feed.started({})
    t = feed.tracker
    t.audit("f1")
    t.audit_failed("f1")
    assert t.audit("f2") is AuditStep.PUBLISH


# ------------------------------------------------------- own expiries


def test_users_expired_here_after_the_snapshot_stay_expired(feed: Feed):
    feed.started({"me": 4})
    t = feed.tracker
    t.expired_here([(5, ["0xu", "0xv"])])
    t.request_resync("test", "requested")
    # Read before our expiry message 5: the snapshot still has them online.
    events = feed.resync(snapshot({"me": 4}, "0xu", "0xv"))
    assert events[1:] == [Expired("0xu"), Expired("0xv")]
    # Read after it: they are not in it, nothing to repeat.
    t.request_resync("test", "requested")
    assert feed.resync(snapshot({"me": 5}))[1:] == []


# ---------------------------------------------------------- data loss


def test_a_new_epoch_is_data_loss(feed: Feed):
    feed.started({"a": 3})
    t = feed.tracker
    t.feed_subscribed()
    ticket = t.begin_resync()
    assert t.data_lost(ticket, snapshot({}, epoch="e2")) == "new epoch e1 -> e2"
    assert t.data_lost(ticket, snapshot({"a": 3})) is None


def test_a_counter_that_went_back_is_data_loss(feed: Feed):
    feed.started({"a": 3})
    t = feed.tracker
    t.script_replied(EPOCH, 8)
    t.request_resync("test", "requested")
    ticket = t.begin_resync()
    # Redis restarted from an RDB saved before our message 8.
    assert t.data_lost(ticket, snapshot({"me": 6, "a": 3})) == (
        "our change counter went back from 8 to 6")
    assert t.data_lost(ticket, snapshot({"me": 8, "a": 2})) == (
        "the change counter of a went back from 3 to 2")
    # An origin gone from the snapshot (retired, collected) says nothing.
    assert t.data_lost(ticket, snapshot({"me": 9})) is None


def test_a_script_reply_after_the_read_began_is_not_counted(feed: Feed):
    feed.started({})
    t = feed.tracker
    t.request_resync("test", "requested")
    ticket = t.begin_resync()
    # This flush ran after the snapshot's MULTI: the snapshot cannot have it.
    t.script_replied(EPOCH, 4)
    assert t.data_lost(ticket, snapshot({"me": 3})) is None


def test_redis_data_loss_never_unfriends_anyone(feed: Feed):
    """Issue 14: after an empty restart, every later resync (feed dropped,
    audit) compared cached friend sets with the empty ones in Redis."""
    feed.started({"a": 2})
    t = feed.tracker
    feed.friends.store("0xu", {"0xfriend", "0xother"}, [])
    # Redis restarted empty; the feed drops and comes back.
    t.feed_lost()
    t.feed_subscribed()
    lost = snapshot({}, epoch="e2", friends={"0xu": {"0xnew"}})
    events = feed.resync(lost)
    assert not [e for e in events if isinstance(e, FriendshipChanged) and not e.added]
    assert FriendshipChanged("0xnew", "0xu", True) in events
    assert feed.friends.get("0xu") == {"0xfriend", "0xother", "0xnew"}
    # Later resyncs of any kind, in the new epoch, with whatever Redis holds
    # by then: here the store put back what it had in memory.
    t.request_resync("audit: missed change messages from a", "audit")
    back = snapshot({}, epoch="e2", friends={"0xu": {"0xfriend", "0xother", "0xnew"}})
    assert [type(e) for e in feed.resync(back)] == [Resync]
    t.feed_lost()
    t.feed_subscribed()
    assert [type(e) for e in feed.resync(back)] == [Resync]
    assert feed.friends.get("0xu") == {"0xfriend", "0xother", "0xnew"}


def test_data_loss_forgets_own_expiries(feed: Feed):
    feed.started({"me": 4})
    t = feed.tracker
    t.expired_here([(5, ["0xu"])])
    t.request_resync("test", "requested")
    # A new epoch's counters mean nothing against the old numbers.
    events = feed.resync(snapshot({"me": 1}, "0xu", epoch="e2"))
    assert [type(e) for e in events] == [Resync]
