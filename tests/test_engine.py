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
