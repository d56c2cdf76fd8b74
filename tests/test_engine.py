"""The presence engine, driven with a fake clock (plain integers of milliseconds)."""

from __future__ import annotations

import pytest

from presenced.engine import (
    Abusive,
    Accepted,
    BadRequest,
    EngineConfig,
    PresenceEngine,
    TooManyRequests,
)
from presenced.model import Position, PresenceLeave, PresenceWrite

A = "0x" + "a" * 40
B = "0x" + "b" * 40
C = "0x" + "c" * 40
D = "0x" + "d" * 40

FRIENDS = {A: {B, C}, B: {A}, C: {A}, D: set()}

T0 = 1_700_000_000_000
P1 = Position("main", 1, 2)
P2 = Position("main", 3, 4)


class World:
    """An engine plus the store writes it made and a session counter."""

    def __init__(self, **config: int) -> None:
        self.ops: list = []
        self.engine = PresenceEngine(EngineConfig(**config), self.ops.append)
        self.now = T0
        self._next = 0

    def login(self, address: str) -> int:
        self._next += 1
        self.engine.open_session(self._next, address, FRIENDS.get(address, ()), self.now)
        return self._next

    def advance(self, ms: int) -> list[int]:
        self.now += ms
        return self.engine.tick(self.now)

    def heartbeat(self, session: int, position: Position):
        return self.engine.heartbeat(session, position, self.now)


def drain(mailbox) -> dict[str, tuple[bool, Position | None]]:
    return {p.address: (p.online, p.position) for p in mailbox.take(1000)}


def test_login_makes_user_online_and_tells_subscribed_friends():
    w = World()
    sa = w.login(A)
    box = w.engine.subscribe(sa)
    assert drain(box) == {}
    w.login(B)
    assert drain(box) == {B: (True, None)}
    assert w.engine.presence(B).online
    assert isinstance(w.ops[-1], PresenceWrite) and w.ops[-1].changed


def test_subscribe_starts_with_current_online_friends_only():
    w = World()
    w.login(B)
    w.login(D)  # not a friend of A
    box = w.engine.subscribe(w.login(A))
    assert drain(box) == {B: (True, None)}


def test_heartbeat_change_tells_friends_and_unchanged_heartbeat_tells_nobody():
    w = World()
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    drain(box)
    assert w.heartbeat(sb, P1) == Accepted(P1)
    assert drain(box) == {B: (True, P1)}
    w.now += 30_000
    assert w.heartbeat(sb, P1) == Accepted(P1)
    assert drain(box) == {}
    # Unchanged heartbeats still refresh the shared copy.
    assert isinstance(w.ops[-1], PresenceWrite) and not w.ops[-1].changed
    w.now += 30_000
    w.heartbeat(sb, Position("other-realm", 1, 2))
    assert drain(box) == {B: (True, Position("other-realm", 1, 2))}


def test_updates_for_one_friend_coalesce_to_the_latest():
    w = World(heartbeat_rate=1000, heartbeat_burst=10)
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    for x in range(5):
        w.now += 10
        w.heartbeat(sb, Position("main", x, 0))
    assert len(box.pending) == 1
    assert drain(box) == {B: (True, Position("main", 4, 0))}
    assert w.engine.stats.updates_coalesced == 5  # login + 5 moves, 1 delivered


def test_ttl_expiry_at_120_s_tells_friends_offline():
    w = World()
    sa = w.login(A)
    box = w.engine.subscribe(sa)
    w.engine.inject(B, P1, w.now)
    assert drain(box) == {B: (True, P1)}
    w.now += 60_000
    w.engine.touch(sa, w.now)
    assert w.advance(59_999) == []
    assert drain(box) == {}
    assert w.advance(1) == []
    assert drain(box) == {B: (False, None)}
    assert w.engine.presence(B) is None
    assert isinstance(w.ops[-1], PresenceLeave)


def test_expiry_of_a_silent_connection_returns_it_for_closing():
    w = World()
    sb = w.login(B)
    box = w.engine.subscribe(w.login(A))
    drain(box)
    # A keeps showing signs of life, B does not.
    for _ in range(4):
        w.now += 30_000
        w.engine.touch(2, w.now)
        to_close = w.engine.tick(w.now)
    assert to_close == [sb]
    assert drain(box) == {B: (False, None)}
    w.engine.close_session(sb, w.now)
    assert w.advance(10_000) == []
    assert drain(box) == {}  # no second OFFLINE after the grace


def test_signs_of_life_keep_a_connected_user_online():
    w = World()
    sb = w.login(B)
    for _ in range(10):
        w.now += 30_000
        w.engine.touch(sb, w.now)
        assert w.engine.tick(w.now) == []
    assert w.engine.presence(B) is not None


def test_logout_goes_offline_after_the_grace_period():
    w = World()
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    drain(box)
    w.engine.close_session(sb, w.now)
    w.advance(4_999)
    assert drain(box) == {}
    w.advance(1)
    assert drain(box) == {B: (False, None)}


def test_reconnect_inside_the_grace_is_invisible():
    w = World()
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    drain(box)
    w.engine.close_session(sb, w.now)
    w.advance(3_000)
    w.login(B)
    w.advance(60_000)
    assert drain(box) == {}
    assert w.engine.presence(B).online


def test_multi_device_online_while_any_connection_is_alive():
    w = World()
    box = w.engine.subscribe(w.login(A))
    phone = w.login(B)
    laptop = w.login(B)
    drain(box)
    w.engine.close_session(phone, w.now)
    w.advance(10_000)
    assert drain(box) == {}
    w.engine.close_session(laptop, w.now)
    w.advance(5_000)
    assert drain(box) == {B: (False, None)}


def test_rate_limit_answers_too_many_requests_and_changes_nothing():
    w = World(heartbeat_rate=1, heartbeat_burst=1)
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    drain(box)
    assert w.heartbeat(sb, P1) == Accepted(P1)
    w.now += 200
    outcome = w.heartbeat(sb, P2)
    assert isinstance(outcome, TooManyRequests)
    assert outcome.retry_after_ms == 800
    assert w.engine.presence(B).position == P1
    assert drain(box) == {B: (True, P1)}
    w.now += 800
    assert w.heartbeat(sb, P2) == Accepted(P2)


def test_a_client_over_its_rate_by_a_little_is_only_refused():
    w = World(heartbeat_rate=1, heartbeat_burst=2)
    sb = w.login(B)
    outcomes = []
    for _ in range(600):  # ten minutes at twice the allowed rate
        w.now += 500
        outcomes.append(type(w.heartbeat(sb, P1)))
    assert set(outcomes) == {Accepted, TooManyRequests}
    assert Abusive not in outcomes


def test_a_client_far_over_its_rate_is_abusive_within_a_second():
    w = World(heartbeat_rate=1, heartbeat_burst=2, abuse_strikes=30, abuse_rate_factor=3)
    sb = w.login(B)
    outcomes = []
    while not outcomes or not isinstance(outcomes[-1], Abusive):
        w.now += 2  # 500 heartbeats a second
        outcomes.append(w.heartbeat(sb, P1))
        assert len(outcomes) < 500, "never judged abusive"
    # The burst, then the strikes, each spent once (the refill at this pace is tiny).
    assert [type(o) for o in outcomes[:2]] == [Accepted, Accepted]
    assert all(isinstance(o, TooManyRequests) for o in outcomes[2:-1])
    assert len(outcomes) == 2 + 30 + 1


def test_rate_limit_is_per_connection():
    w = World(heartbeat_rate=1, heartbeat_burst=1)
    s1, s2 = w.login(B), w.login(B)
    assert w.heartbeat(s1, P1) == Accepted(P1)
    assert w.heartbeat(s2, P2) == Accepted(P2)


@pytest.mark.parametrize(
    "position",
    [
        Position("", 0, 0),
        Position("r" * 129, 0, 0),
        Position("é" * 65, 0, 0),  # 130 bytes in UTF-8
        Position("main", 1001, 0),
        Position("main", 0, -1001),
    ],
)
def test_invalid_positions_are_bad_requests(position):
    w = World()
    sb = w.login(B)
    assert isinstance(w.heartbeat(sb, position), BadRequest)
    assert w.engine.presence(B).position is None


def test_second_subscription_replaces_the_first():
    w = World()
    sa = w.login(A)
    first = w.engine.subscribe(sa)
    second = w.engine.subscribe(sa)
    assert first.closed and not second.closed
    w.login(B)
    assert drain(first) == {}
    assert drain(second) == {B: (True, None)}


def test_friendship_added_at_runtime_shows_the_new_friends_presence_both_ways():
    w = World()
    box_a = w.engine.subscribe(w.login(A))
    box_d = w.engine.subscribe(w.login(D))
    w.engine.heartbeat(4 - 2, P1, w.now)  # session 2 is D
    assert drain(box_a) == {}
    w.engine.add_friendship(A, D)
    assert drain(box_a) == {D: (True, P1)}
    assert drain(box_d) == {A: (True, None)}
    # and later changes flow
    w.now += 5_000
    w.engine.heartbeat(2, P2, w.now)
    assert drain(box_a) == {D: (True, P2)}


def test_friendship_removed_at_runtime_shows_the_removed_friend_offline():
    w = World()
    box_a = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    box_b = w.engine.subscribe(sb)
    drain(box_a)
    drain(box_b)
    w.engine.remove_friendship(A, B, w.now)
    assert drain(box_a) == {B: (False, None)}
    assert drain(box_b) == {A: (False, None)}
    w.engine.heartbeat(sb, P1, w.now)
    assert drain(box_a) == {}
    assert w.engine.online_friends(1) == []


def test_get_online_friends_lists_only_online_friends_sorted():
    w = World()
    sa = w.login(A)
    w.login(C)
    w.login(B)
    w.login(D)
    assert [p.address for p in w.engine.online_friends(sa)] == [B, C]


def test_unsubscribe_stops_delivery():
    w = World()
    sa = w.login(A)
    box = w.engine.subscribe(sa)
    w.engine.unsubscribe(sa, box)
    w.login(B)
    assert drain(box) == {}
    assert box.closed


def test_on_ready_fires_on_empty_to_non_empty_and_on_close():
    w = World(heartbeat_rate=1000)
    sa = w.login(A)
    box = w.engine.subscribe(sa)
    calls = []
    box.on_ready = lambda: calls.append(1)
    sb = w.login(B)
    w.heartbeat(sb, P1)
    assert calls == [1]
    box.take(10)
    w.now += 10
    w.heartbeat(sb, P2)
    assert calls == [1, 1]
    w.engine.unsubscribe(sa, box)
    assert calls == [1, 1, 1]


# ------------------------------------------------------------ other instances


def test_remote_user_online_change_and_leave():
    w = World()
    box = w.engine.subscribe(w.login(A))
    from presenced.model import Presence

    w.engine.apply_remote(Presence(B, True, None, w.now), "i2")
    assert drain(box) == {B: (True, None)}
    w.engine.apply_remote(Presence(B, True, P1, w.now), "i2")
    assert drain(box) == {B: (True, P1)}
    w.engine.apply_remote(Presence(B, True, P1, w.now + 1000), "i2")
    assert drain(box) == {}
    w.engine.apply_remote_leave(B, "i2", w.now)
    assert drain(box) == {B: (False, None)}


def test_user_on_two_instances_stays_online_until_both_leave():
    from presenced.model import Presence

    w = World()
    box = w.engine.subscribe(w.login(A))
    sb = w.login(B)
    w.engine.apply_remote(Presence(B, True, None, w.now), "i2")
    drain(box)
    w.engine.close_session(sb, w.now)
    w.advance(10_000)
    assert drain(box) == {}
    w.engine.apply_remote_leave(B, "i2", w.now)
    assert drain(box) == {B: (False, None)}


def test_expired_by_the_store_goes_offline_unless_we_vouch():
    from presenced.model import Presence

    w = World()
    box = w.engine.subscribe(w.login(A))
    w.engine.apply_remote(Presence(B, True, None, w.now), "dead")
    drain(box)
    w.engine.apply_expired(B, w.now)
    assert drain(box) == {B: (False, None)}
    w.engine.apply_expired(B, w.now)  # twice is harmless
    assert drain(box) == {}
    w.ops.clear()
    w.engine.apply_expired(A, w.now)  # we hold A: re-announce
    assert w.engine.presence(A) is not None
    assert isinstance(w.ops[-1], PresenceWrite) and w.ops[-1].changed


def test_reconcile_delivers_exactly_what_was_missed():
    from presenced.model import Presence

    w = World()
    box = w.engine.subscribe(w.login(A))
    w.engine.apply_remote(Presence(B, True, P1, w.now), "i2")
    drain(box)
    # The store says: B moved, C came online, and nobody else is online.
    w.engine.reconcile(
        [
            (Presence(B, True, P2, w.now), frozenset({"i2"})),
            (Presence(C, True, P1, w.now), frozenset({"i3"})),
            (Presence(A, True, None, w.now), frozenset()),
        ],
        w.now,
    )
    assert drain(box) == {B: (True, P2), C: (True, P1)}
    w.engine.reconcile([(Presence(A, True, None, w.now), frozenset())], w.now)
    assert drain(box) == {B: (False, None), C: (False, None)}
    assert w.engine.presence(A) is not None  # we vouch for A ourselves


def test_a_mass_expiry_happens_in_bounded_steps():
    w = World()
    sessions = [w.login(f"0x{i:040x}") for i in range(25)]
    gone = [f"0x{i:040x}" for i in range(25, 35)]
    for address in gone:
        w.engine.close_session(w.login(address), w.now)
    w.now += w.engine.config.ttl_ms + 1
    assert w.engine.due(w.now)
    steps = []
    while w.engine.due(w.now):
        steps.append(w.engine.tick(w.now, limit=10))
    # 10 graces ending and 25 expiries, 10 users per step at most.
    assert len(steps) == 4
    assert sorted(s for step in steps for s in step) == sessions
    assert not w.engine.due(w.now)
    assert all(w.engine.presence(f"0x{i:040x}") is None for i in range(35))
    assert w.engine.tick(w.now, limit=10) == []


def test_nothing_is_due_while_everyone_is_fresh():
    w = World()
    w.login(A)
    assert not w.engine.due(w.now)
    w.now += w.engine.config.ttl_ms - 1
    assert not w.engine.due(w.now)
    w.now += 1
    assert w.engine.due(w.now)
    assert w.engine.tick(w.now) == [1]


# ------------------------------------------------- v2: transitions and friendships


def online(mailbox) -> dict[str, bool]:
    return {p.address: p.online for p in mailbox.take(1000)}


def test_transition_subscriber_gets_the_snapshot_then_only_online_and_offline():
    w = World(heartbeat_rate=1000, offline_grace_ms=0)
    sb = w.login(B)
    w.heartbeat(sb, P1)
    box = w.engine.subscribe_transitions(w.login(A))
    assert online(box) == {B: True}
    w.now += 10
    w.heartbeat(sb, P2)  # a move: nothing for v2
    assert box.pending == {}
    sc = w.login(C)
    assert online(box) == {C: True}
    w.engine.close_session(sc, w.now)
    w.advance(1)
    assert online(box) == {C: False}


def test_a_position_change_costs_transition_subscribers_nothing():
    w = World(heartbeat_rate=1000)
    sb = w.login(B)
    box = w.engine.subscribe_transitions(w.login(A))
    online(box)
    enqueued = w.engine.stats.updates_enqueued
    w.heartbeat(sb, P1)
    w.now += 10
    w.heartbeat(sb, P2)
    assert box.pending == {}
    assert w.engine.stats.updates_enqueued == enqueued


def test_ttl_expiry_and_remote_transitions_reach_transition_subscribers():
    from presenced.model import Presence

    w = World()
    sa = w.login(A)
    box = w.engine.subscribe_transitions(sa)
    w.engine.apply_remote(Presence(B, True, None, w.now), "i2")
    assert online(box) == {B: True}
    w.engine.apply_remote(Presence(B, True, P1, w.now), "i2")  # a remote move
    assert box.pending == {}
    w.engine.apply_remote_leave(B, "i2", w.now)
    assert online(box) == {B: False}
    sc = w.login(C)
    online(box)
    w.now += 60_000
    w.engine.touch(sa, w.now)
    assert w.advance(60_001) == [sc]
    assert online(box) == {C: False}


def test_a_flap_the_subscriber_never_saw_is_dropped():
    w = World(offline_grace_ms=0)
    sb = w.login(B)
    box = w.engine.subscribe_transitions(w.login(A))
    # B's ONLINE is pending (snapshot) when B goes offline: the subscriber never knew.
    w.engine.close_session(sb, w.now)
    w.advance(1)
    assert box.pending == {}
    sb = w.login(B)
    assert online(box) == {B: True}
    # Offline then online again before the OFFLINE was sent: nothing to say.
    w.engine.close_session(sb, w.now)
    w.advance(1)
    w.login(B)
    assert box.pending == {}
    assert w.engine.stats.updates_coalesced >= 2


def test_presence_and_transition_subscriptions_coexist_on_one_connection():
    w = World()
    sa = w.login(A)
    full = w.engine.subscribe(sa)
    transitions = w.engine.subscribe_transitions(sa)
    sb = w.login(B)
    assert drain(full) == {B: (True, None)}
    assert online(transitions) == {B: True}
    w.heartbeat(sb, P1)
    assert drain(full) == {B: (True, P1)}
    assert transitions.pending == {}


def test_newest_subscription_of_each_kind_wins_and_leaves_the_other_kind_alone():
    w = World()
    sa = w.login(A)
    full = w.engine.subscribe(sa)
    old = w.engine.subscribe_transitions(sa)
    new = w.engine.subscribe_transitions(sa)
    assert old.closed and not new.closed and not full.closed
    w.login(B)
    assert old.pending == {}
    assert online(new) == {B: True}
    assert drain(full) == {B: (True, None)}
    newer_full = w.engine.subscribe(sa)
    assert full.closed and not new.closed and not newer_full.closed
    old_feed = w.engine.subscribe_friendships(sa)
    new_feed = w.engine.subscribe_friendships(sa)
    assert old_feed.closed and not new_feed.closed


def test_unsubscribe_and_logout_end_transition_and_friendship_subscriptions():
    w = World()
    sa = w.login(A)
    box = w.engine.subscribe_transitions(sa)
    w.engine.unsubscribe(sa, box)
    assert box.closed
    w.login(B)
    assert box.pending == {}
    box = w.engine.subscribe_transitions(sa)
    feed = w.engine.subscribe_friendships(sa)
    w.engine.unsubscribe_friendships(sa, feed)
    assert feed.closed
    feed = w.engine.subscribe_friendships(sa)
    w.engine.close_session(sa, w.now)
    assert box.closed and feed.closed
    w.engine.add_friendship(A, D)
    assert feed.pending == {}


def test_friendship_changes_reach_friendship_and_transition_subscribers():
    w = World()
    sa = w.login(A)
    feed = w.engine.subscribe_friendships(sa)
    box = w.engine.subscribe_transitions(sa)
    sd = w.login(D)
    assert box.pending == {}
    w.engine.add_friendship(A, D)
    assert feed.take(10) == [(D, True)]
    assert online(box) == {D: True}
    w.engine.remove_friendship(A, D, w.now)
    assert feed.take(10) == [(D, False)]
    assert online(box) == {D: False}
    # No longer a friend: D's changes are not A's business.
    w.engine.close_session(sd, w.now)
    w.advance(10_000)
    assert box.pending == {}
    # The other side hears it only if it subscribed.
    feed_b = w.engine.subscribe_friendships(w.login(B))
    w.engine.remove_friendship(A, B, w.now)
    assert feed_b.take(10) == [(A, False)]
    assert feed.take(10) == [(B, False)]


def test_friendship_events_coalesce_per_friend():
    w = World()
    sa = w.login(A)
    feed = w.engine.subscribe_friendships(sa)
    calls = []
    feed.on_ready = lambda: calls.append(1)
    w.engine.add_friendship(A, D)
    w.engine.remove_friendship(A, D, w.now)  # never told of the add: nothing to say
    assert feed.pending == {}
    w.engine.remove_friendship(A, B, w.now)
    w.engine.add_friendship(A, B)
    assert feed.pending == {}
    w.engine.remove_friendship(A, C, w.now)
    assert feed.take(10) == [(C, False)]
    assert calls == [1, 1, 1]


def test_pending_friendship_events_are_bounded_per_session():
    w = World(friendship_events_max=3)
    sa = w.login(A)
    feed = w.engine.subscribe_friendships(sa)
    others = ["0x" + f"{i:040x}" for i in range(1, 6)]
    for other in others:
        w.engine.add_friendship(A, other)
    assert feed.take(10) == [(o, True) for o in others[2:]]
    assert feed.dropped == 2
    assert w.engine.stats.friendship_events_dropped == 2


def test_a_v2_only_user_is_online_without_position_for_presence_subscribers():
    w = World()
    box = w.engine.subscribe(w.login(A))
    transitions_b = w.engine.subscribe_transitions(w.login(B))  # B never sends a heartbeat
    assert drain(box) == {B: (True, None)}
    assert online(transitions_b) == {A: True}
