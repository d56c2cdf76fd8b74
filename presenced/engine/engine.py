"""The presence engine: who is online, and who must be told what.

Pure logic: no sockets, no Redis, no trio. Every method takes the current
time as Unix milliseconds, so tests drive it with a fake clock and the server
drives it with a real one.

The engine knows two kinds of users:

- *owned* users, whom this instance vouches for: they have a live connection
  here, are inside their offline grace period, or were injected here. Their
  TTL is enforced here, and every change is written to the store.
- *remote* users, whom other instances vouch for (`User.remote` holds those
  instances' ids). The engine mirrors them so that it can answer
  GetOnlineFriends and fan out their changes to local subscribers; the store
  tells it when they change, leave or expire.

A user is online while anyone vouches for them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from presenced.engine.mailbox import FriendshipFeed, Mailbox, TransitionMailbox
from presenced.model import Position, Presence, PresenceLeave, PresenceOp, PresenceWrite


@dataclass(slots=True)
class EngineConfig:
    ttl_ms: int = 120_000
    offline_grace_ms: int = 5_000
    # Token bucket per connection: sustained rate and burst of heartbeats.
    heartbeat_rate: float = 1.0
    heartbeat_burst: int = 2
    # A connection that keeps sending far more heartbeats than it may is abusive: refused
    # heartbeats spend from a second bucket of `abuse_strikes` that refills at
    # `abuse_rate_factor` times the heartbeat rate. A client over its rate by less than that
    # factor is only refused; one far over it empties the bucket and is disconnected.
    abuse_strikes: int = 30
    abuse_rate_factor: float = 3.0
    realm_max_bytes: int = 128
    min_x: int = -1000
    max_x: int = 1000
    min_y: int = -1000
    max_y: int = 1000
    # A sign of life other than a heartbeat (a pong, any frame), or a heartbeat that did not
    # move, is written to the store at most this often per user (and at most every TTL/3):
    # enough to keep its TTL alive. 40 s: a client kept alive by pings (one every 30 s of
    # silence) is written at every other pong, so its last-seen in Redis is at most ~60 s
    # old against a 120 s TTL; 10 s wrote at every pong, twice the Redis writes for the
    # same liveness (docs/redis.md).
    touch_write_interval_ms: int = 40_000
    # Friendship changes waiting for one session's friendship stream (v2); past it the
    # oldest is dropped.
    friendship_events_max: int = 1_000


@dataclass(slots=True)
class EngineStats:
    """Counters read by the metrics layer; plain ints keep the engine free of it."""

    heartbeats_accepted: int = 0
    heartbeats_rejected_rate: int = 0
    heartbeats_rejected_invalid: int = 0
    went_online: int = 0
    went_offline: int = 0
    expired: int = 0
    updates_enqueued: int = 0
    updates_coalesced: int = 0
    friendship_events_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    position: Position


@dataclass(frozen=True, slots=True)
class BadRequest:
    message: str


@dataclass(frozen=True, slots=True)
class TooManyRequests:
    message: str
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class Abusive:
    """The connection keeps exceeding its heartbeat rate by far: end it."""

    message: str


HeartbeatOutcome = Accepted | BadRequest | TooManyRequests | Abusive


class _Session:
    # One subscription of each kind per connection: `mailbox` (ADR-246 presence),
    # `transitions` (v2 connectivity) and `friendships` (v2 friendship changes).
    __slots__ = ("id", "user", "tokens", "tokens_at_ms", "strikes", "mailbox", "transitions",
                 "friendships")

    def __init__(
        self, session_id: int, user: _User, tokens: float, strikes: float, now_ms: int
    ) -> None:
        self.id = session_id
        self.user = user
        self.tokens = tokens
        self.tokens_at_ms = now_ms
        self.strikes = strikes
        self.mailbox: Mailbox | None = None
        self.transitions: TransitionMailbox | None = None
        self.friendships: FriendshipFeed | None = None


class _User:
    __slots__ = ("address", "online", "position", "last_seen_ms", "written_ms", "sessions",
                 "remote", "friends")

    def __init__(self, address: str, now_ms: int) -> None:
        self.address = address
        self.online = False
        self.position: Position | None = None
        self.last_seen_ms = now_ms
        self.written_ms = 0
        self.sessions: dict[int, _Session] = {}
        # Ids of other instances that vouch for this user.
        self.remote: set[str] = set()
        # Known only for users with a local connection: they are the ones
        # whose subscriptions and GetOnlineFriends calls we serve.
        self.friends: set[str] | None = None

    def snapshot(self, changed_ms: int | None = None) -> Presence:
        if self.online:
            return Presence(self.address, True, self.position, self.last_seen_ms, changed_ms)
        return Presence(self.address, False, None, self.last_seen_ms, changed_ms)


class PresenceEngine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        write: Callable[[PresenceOp], None] | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self._write_op = write or (lambda op: None)
        # The store must hear from a live user well within the TTL, or other
        # instances would see them flicker offline between refreshes.
        self._touch_write_ms = min(self.config.touch_write_interval_ms, self.config.ttl_ms // 3)
        self._users: dict[str, _User] = {}
        self._sessions: dict[int, _Session] = {}
        # Owned users by last sign of life, oldest first: expiry pops the front.
        self._owned: OrderedDict[str, int] = OrderedDict()
        # Users whose last connection closed, by grace deadline, earliest first.
        self._grace: OrderedDict[str, int] = OrderedDict()
        # Friend address -> mailboxes of local subscribers who are that friend's friends.
        self._watchers: dict[str, set[Mailbox]] = {}
        # The same for subscribers who hear only online/offline transitions (v2). Kept apart
        # so that a position change costs them nothing and ADR-246 fan-out stays as it was.
        self._transition_watchers: dict[str, set[Mailbox]] = {}

    # ----------------------------------------------------------------- queries

    @property
    def online_count(self) -> int:
        return sum(1 for u in self._users.values() if u.online)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def presence(self, address: str) -> Presence | None:
        """The user's presence if they are online, else None."""
        user = self._users.get(address)
        if user is None or not user.online:
            return None
        return user.snapshot()

    def presences(self, addresses: Iterable[str]) -> list[Presence]:
        """The online users among `addresses`, sorted by address."""
        users = self._users
        found = [u.snapshot() for a in addresses if (u := users.get(a)) is not None and u.online]
        found.sort(key=lambda p: p.address)
        return found

    def friends_of_session(self, session_id: int) -> frozenset[str]:
        return frozenset(self._sessions[session_id].user.friends or ())

    def online_friends(self, session_id: int) -> list[Presence]:
        return self.presences(self._sessions[session_id].user.friends or ())

    def online_friend_addresses(self, session_id: int) -> list[str]:
        """The session's friends who are online now, sorted (no snapshots taken)."""
        users = self._users
        online = [
            a for a in self._sessions[session_id].user.friends or ()
            if (u := users.get(a)) is not None and u.online
        ]
        online.sort()
        return online

    def owned_presences(self) -> list[Presence]:
        """Everyone this instance vouches for (to re-write a store that lost them)."""
        return [self._users[a].snapshot() for a in self._owned]

    def is_owned(self, address: str) -> bool:
        return address in self._owned

    def remote_users(self) -> list[str]:
        return [a for a, u in self._users.items() if u.remote]

    # ---------------------------------------------------------------- sessions

    def open_session(
        self, session_id: int, address: str, friends: Iterable[str], now_ms: int
    ) -> None:
        """A logged-in connection for `address` (`friends` as read from the store)."""
        user = self._users.get(address)
        if user is None:
            user = self._users[address] = _User(address, now_ms)
        if not user.sessions:
            user.friends = {f for f in friends if f != address}
        config = self.config
        session = _Session(session_id, user, float(config.heartbeat_burst),
                           float(config.abuse_strikes), now_ms)
        user.sessions[session_id] = session
        self._sessions[session_id] = session
        # A reconnect inside the grace period is invisible to friends.
        self._grace.pop(address, None)
        self._vouch(user, now_ms, changed=False)

    def close_session(self, session_id: int, now_ms: int) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        user = session.user
        del user.sessions[session_id]
        if session.mailbox is not None:
            self._drop_mailbox(session.mailbox, user)
        if session.transitions is not None:
            self._drop_mailbox(session.transitions, user)
        if session.friendships is not None:
            session.friendships.close()
            session.friendships = None
        if user.sessions:
            return
        if user.address in self._owned:
            self._grace[user.address] = now_ms + self.config.offline_grace_ms
        elif not user.online:
            # Expired while connected: it was already announced offline.
            self._forget(user)

    def touch(self, session_id: int, now_ms: int) -> None:
        """Any sign of life on a connection (a frame, a pong)."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        user = session.user
        # A user who expired while connected stays offline: the server is
        # closing that connection.
        if user.address in self._owned:
            self._refresh(user, now_ms)

    def heartbeat(self, session_id: int, position: Position, now_ms: int) -> HeartbeatOutcome:
        session = self._sessions.get(session_id)
        if session is None:
            return BadRequest("not logged in")
        config = self.config
        elapsed_ms = now_ms - session.tokens_at_ms
        refill = elapsed_ms * config.heartbeat_rate / 1000.0
        tokens = min(float(config.heartbeat_burst), session.tokens + refill)
        session.tokens_at_ms = now_ms
        # Strikes refill with the same elapsed time, faster.
        strikes = min(float(config.abuse_strikes),
                      session.strikes + refill * config.abuse_rate_factor)
        if tokens < 1.0:
            session.tokens = tokens
            self.stats.heartbeats_rejected_rate += 1
            if strikes < 1.0:
                session.strikes = strikes
                return Abusive(
                    f"heartbeats far over the limit of {config.heartbeat_rate:g} per second")
            session.strikes = strikes - 1.0
            retry = math.ceil((1.0 - tokens) * 1000.0 / config.heartbeat_rate)
            return TooManyRequests(
                f"at most {config.heartbeat_rate:g} heartbeats per second", retry
            )
        session.strikes = strikes
        session.tokens = tokens - 1.0
        error = self.validate_position(position)
        if error is not None:
            self.stats.heartbeats_rejected_invalid += 1
            return BadRequest(error)
        self.stats.heartbeats_accepted += 1
        user = session.user
        moved = user.position != position
        user.position = position
        self._vouch(user, now_ms, changed=moved, force_write=True)
        return Accepted(position)

    def validate_position(self, position: Position) -> str | None:
        config = self.config
        realm = position.realm
        if not realm:
            return "realm must not be empty"
        if len(realm.encode()) > config.realm_max_bytes:
            return f"realm longer than {config.realm_max_bytes} bytes"
        if not (config.min_x <= position.x <= config.max_x):
            return f"x outside [{config.min_x}, {config.max_x}]"
        if not (config.min_y <= position.y <= config.max_y):
            return f"y outside [{config.min_y}, {config.max_y}]"
        return None

    def inject(self, address: str, position: Position | None, now_ms: int) -> None:
        """Mark a user online as if they had sent a heartbeat (synthetic users).

        Nothing keeps them alive afterwards: they expire like any silent user.
        """
        user = self._users.get(address)
        if user is None:
            user = self._users[address] = _User(address, now_ms)
        moved = position is not None and user.position != position
        if moved:
            user.position = position
        self._vouch(user, now_ms, changed=moved, force_write=True)

    # ----------------------------------------------------------- subscriptions

    def subscribe(self, session_id: int) -> Mailbox:
        """Start a subscription: a mailbox pre-filled with the online friends.

        A second subscription on the same connection replaces the first, whose
        mailbox is closed so that its stream ends.
        """
        session = self._sessions[session_id]
        user = session.user
        if session.mailbox is not None:
            self._drop_mailbox(session.mailbox, user)
        mailbox = Mailbox(user.address)
        session.mailbox = mailbox
        self._watch_friends(mailbox, user, self._watchers)
        return mailbox

    def subscribe_transitions(self, session_id: int) -> TransitionMailbox:
        """Start a v2 connectivity subscription: online friends now, then only transitions.

        Position and realm changes never reach it. As with `subscribe`, a second one on the
        same connection replaces the first (whose mailbox closes); a `subscribe` one is
        independent of it.
        """
        session = self._sessions[session_id]
        user = session.user
        if session.transitions is not None:
            self._drop_mailbox(session.transitions, user)
        mailbox = TransitionMailbox(user.address)
        session.transitions = mailbox
        self._watch_friends(mailbox, user, self._transition_watchers)
        return mailbox

    def subscribe_friendships(self, session_id: int) -> FriendshipFeed:
        """Start a v2 friendship subscription: the user's friendships that begin or end.

        A second one on the same connection replaces the first (whose feed closes).
        """
        session = self._sessions[session_id]
        if session.friendships is not None:
            session.friendships.close()
        feed = FriendshipFeed(session.user.address, self.config.friendship_events_max)
        session.friendships = feed
        return feed

    def unsubscribe_friendships(self, session_id: int, feed: FriendshipFeed) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.friendships is feed:
            session.friendships = None
            feed.close()

    def _watch_friends(
        self, mailbox: Mailbox, user: _User, watchers: dict[str, set[Mailbox]]
    ) -> None:
        """Register `mailbox` for the user's friends and fill it with those online now."""
        users = self._users
        for friend in user.friends or ():
            box = watchers.get(friend)
            if box is None:
                box = watchers[friend] = set()
            box.add(mailbox)
            other = users.get(friend)
            if other is not None and other.online:
                mailbox.put(other.snapshot())

    def unsubscribe(self, session_id: int, mailbox: Mailbox) -> None:
        """End a subscription of either kind (`subscribe` or `subscribe_transitions`)."""
        session = self._sessions.get(session_id)
        if session is not None and mailbox in (session.mailbox, session.transitions):
            self._drop_mailbox(mailbox, session.user)

    # -------------------------------------------------------------- friendships

    def add_friendship(self, a: str, b: str) -> None:
        if a != b:
            self._link(a, b)
            self._link(b, a)

    def remove_friendship(self, a: str, b: str, now_ms: int) -> None:
        if a != b:
            self._unlink(a, b, now_ms)
            self._unlink(b, a, now_ms)

    def set_friends(self, address: str, friends: Iterable[str], now_ms: int) -> None:
        """Replace a local user's friend set (after the store reloaded it)."""
        user = self._users.get(address)
        if user is None or user.friends is None:
            return
        new = {f for f in friends if f != address}
        for gone in user.friends - new:
            self._unlink(address, gone, now_ms)
        for added in new - user.friends:
            self._link(address, added)

    # ---------------------------------------------------------- other instances

    def apply_remote(self, presence: Presence, instance: str) -> None:
        """Another instance vouches for a user, possibly with a new position."""
        user = self._users.get(presence.address)
        if user is None:
            user = self._users[presence.address] = _User(presence.address, presence.last_seen_ms)
        user.remote.add(instance)
        if presence.last_seen_ms > user.last_seen_ms:
            user.last_seen_ms = presence.last_seen_ms
        changed = transition = False
        if presence.position is not None and presence.position != user.position:
            user.position = presence.position
            changed = True
        if not user.online:
            user.online = True
            self.stats.went_online += 1
            changed = transition = True
        if changed:
            self._notify(user, presence.last_seen_ms, transition)

    def apply_remote_leave(self, address: str, instance: str, now_ms: int) -> None:
        """Another instance no longer vouches for a user."""
        user = self._users.get(address)
        if user is None:
            return
        user.remote.discard(instance)
        if not user.remote and address not in self._owned and user.online:
            self._go_offline(user, now_ms)

    def apply_expired(self, address: str, now_ms: int) -> None:
        """The store declared a user expired cluster-wide."""
        user = self._users.get(address)
        if user is None:
            return
        user.remote.clear()
        if address in self._owned:
            # We are alive and vouch for them: the store lost our writes
            # (Redis was away); tell everyone again.
            self._write(user, now_ms, changed=True)
        elif user.online:
            self.stats.expired += 1
            self._go_offline(user, now_ms)

    def reconcile(self, records: Iterable[tuple[Presence, frozenset[str]]], now_ms: int) -> None:
        """Align the mirror with a full snapshot of the store.

        `records` holds every user the store thinks is online, with the ids of
        the *other* instances vouching for them. Used after a reconnect to
        Redis or a gap in its change feed, so local subscribers hear about
        exactly what they missed.
        """
        seen: set[str] = set()
        for presence, owners in records:
            seen.add(presence.address)
            user = self._users.get(presence.address)
            if user is None:
                if owners:
                    user = self._users[presence.address] = _User(
                        presence.address, presence.last_seen_ms
                    )
                else:
                    continue
            user.remote = set(owners)
            if presence.last_seen_ms > user.last_seen_ms:
                user.last_seen_ms = presence.last_seen_ms
            owned = presence.address in self._owned
            changed = transition = False
            if presence.position is not None and presence.position != user.position and not owned:
                user.position = presence.position
                changed = True
            if not user.online and owners:
                user.online = True
                self.stats.went_online += 1
                changed = transition = True
            if user.online and not owners and not owned:
                self._go_offline(user, now_ms)
            elif changed:
                self._notify(user, now_ms, transition)
        for address in [a for a, u in self._users.items() if u.remote and a not in seen]:
            user = self._users[address]
            user.remote.clear()
            if address not in self._owned and user.online:
                self._go_offline(user, now_ms)

    # -------------------------------------------------------------------- time

    def tick(self, now_ms: int, limit: int | None = None) -> list[int]:
        """Apply offline grace and TTL expiry, to at most `limit` users.

        Returns the ids of sessions whose user expired while still connected
        (a connection that stopped answering): the server must close them.
        With a limit, `due(now_ms)` says whether more is left for another call:
        a mass expiry (an instance's users after it died, a network cut) then
        happens in steps between which the server answers its clients.
        """
        budget = -1 if limit is None else limit
        grace = self._grace
        while grace and budget:
            address, deadline = next(iter(grace.items()))
            if deadline > now_ms:
                break
            del grace[address]
            budget -= 1
            user = self._users[address]
            if not user.sessions:
                self._release(user, now_ms)
        to_close: list[int] = []
        owned = self._owned
        cutoff = now_ms - self.config.ttl_ms
        while owned and budget:
            address, seen = next(iter(owned.items()))
            if seen > cutoff:
                break
            budget -= 1
            user = self._users[address]
            self.stats.expired += 1
            to_close.extend(user.sessions)
            self._release(user, now_ms)
        return to_close

    def due(self, now_ms: int) -> bool:
        """Whether `tick(now_ms)` has anything to do."""
        if self._grace and next(iter(self._grace.values())) <= now_ms:
            return True
        owned = self._owned
        return bool(owned) and next(iter(owned.values())) <= now_ms - self.config.ttl_ms

    # ---------------------------------------------------------------- internals

    def _vouch(self, user: _User, now_ms: int, changed: bool, force_write: bool = False) -> None:
        """Make this instance vouch for `user`, who just showed a sign of life."""
        newly_owned = user.address not in self._owned
        user.last_seen_ms = now_ms
        self._owned[user.address] = now_ms
        self._owned.move_to_end(user.address)
        transition = not user.online
        if transition:
            user.online = True
            self.stats.went_online += 1
            changed = True
        if changed:
            self._notify(user, now_ms, transition)
        if changed or force_write or newly_owned:
            self._write(user, now_ms, changed)
        elif now_ms - user.written_ms >= self._touch_write_ms:
            self._write(user, now_ms, False)

    def _refresh(self, user: _User, now_ms: int) -> None:
        user.last_seen_ms = now_ms
        owned = self._owned
        owned[user.address] = now_ms
        owned.move_to_end(user.address)
        if now_ms - user.written_ms >= self._touch_write_ms:
            self._write(user, now_ms, False)

    def _write(self, user: _User, now_ms: int, changed: bool) -> None:
        user.written_ms = now_ms
        self._write_op(PresenceWrite(user.snapshot(), changed))

    def _release(self, user: _User, now_ms: int) -> None:
        """This instance stops vouching for `user`."""
        self._owned.pop(user.address, None)
        self._grace.pop(user.address, None)
        self._write_op(PresenceLeave(user.address, user.last_seen_ms))
        if user.online and not user.remote:
            self._go_offline(user, now_ms)
        elif not user.sessions and not user.remote:
            self._forget(user)

    def _go_offline(self, user: _User, now_ms: int) -> None:
        user.online = False
        self.stats.went_offline += 1
        self._notify(user, now_ms, True)
        if not user.sessions:
            self._forget(user)

    def _forget(self, user: _User) -> None:
        if not user.sessions and not user.remote and user.address not in self._owned:
            self._users.pop(user.address, None)

    def _notify(self, user: _User, changed_ms: int, transition: bool) -> None:
        """Tell the subscribers watching `user` of a change (`transition`: online or offline).

        The hot path: a position change costs one `put` per ADR-246 watcher and nothing else.
        """
        boxes = self._watchers.get(user.address)
        if transition and user.address in self._transition_watchers:
            self._notify_transition(user, changed_ms, boxes)
            return
        if not boxes:
            return
        presence = user.snapshot(changed_ms)
        coalesced = 0
        for box in boxes:
            coalesced += box.put(presence)
        stats = self.stats
        stats.updates_enqueued += len(boxes)
        stats.updates_coalesced += coalesced

    def _notify_transition(
        self, user: _User, changed_ms: int, boxes: set[Mailbox] | None
    ) -> None:
        """An online/offline transition watched by v2 subscribers too: one shared snapshot."""
        presence = user.snapshot(changed_ms)
        coalesced = enqueued = 0
        for group in (boxes or (), self._transition_watchers[user.address]):
            for box in group:
                coalesced += box.put(presence)
            enqueued += len(group)
        stats = self.stats
        stats.updates_enqueued += enqueued
        stats.updates_coalesced += coalesced

    def _drop_mailbox(self, mailbox: Mailbox, user: _User) -> None:
        transitions = isinstance(mailbox, TransitionMailbox)
        for session in user.sessions.values():
            if session.mailbox is mailbox:
                session.mailbox = None
            if session.transitions is mailbox:
                session.transitions = None
        watchers = self._transition_watchers if transitions else self._watchers
        for friend in user.friends or ():
            box = watchers.get(friend)
            if box is not None:
                box.discard(mailbox)
                if not box:
                    del watchers[friend]
        mailbox.close()

    def _subscriptions(
        self, user: _User
    ) -> tuple[list[Mailbox], list[Mailbox], list[FriendshipFeed]]:
        """The user's open subscriptions: ADR-246, v2 connectivity, v2 friendship."""
        boxes: list[Mailbox] = []
        transitions: list[Mailbox] = []
        feeds: list[FriendshipFeed] = []
        for s in user.sessions.values():
            if s.mailbox is not None:
                boxes.append(s.mailbox)
            if s.transitions is not None:
                transitions.append(s.transitions)
            if s.friendships is not None:
                feeds.append(s.friendships)
        return boxes, transitions, feeds

    def _link(self, address: str, friend: str) -> None:
        user = self._users.get(address)
        if user is None or user.friends is None or friend in user.friends:
            return
        user.friends.add(friend)
        boxes, transitions, feeds = self._subscriptions(user)
        for feed in feeds:
            self._feed_put(feed, friend, True)
        if not boxes and not transitions:
            return
        other = self._users.get(friend)
        presence = other.snapshot() if other is not None and other.online else None
        for watchers, group in ((self._watchers, boxes), (self._transition_watchers, transitions)):
            if not group:
                continue
            watching = watchers.setdefault(friend, set())
            for box in group:
                watching.add(box)
                if presence is not None:
                    box.put(presence)

    def _unlink(self, address: str, friend: str, now_ms: int) -> None:
        user = self._users.get(address)
        if user is None or user.friends is None or friend not in user.friends:
            return
        user.friends.discard(friend)
        boxes, transitions, feeds = self._subscriptions(user)
        for feed in feeds:
            self._feed_put(feed, friend, False)
        other = self._users.get(friend)
        gone = (
            Presence(friend, False, None, other.last_seen_ms)
            if other is not None and other.online else None
        )
        for watchers, group in ((self._watchers, boxes), (self._transition_watchers, transitions)):
            watching = watchers.get(friend)
            if watching is not None:
                watching.difference_update(group)
                if not watching:
                    del watchers[friend]
            if gone is not None:
                for box in group:
                    box.put(gone)

    def _feed_put(self, feed: FriendshipFeed, friend: str, added: bool) -> None:
        dropped = feed.dropped
        feed.put(friend, added)
        self.stats.friendship_events_dropped += feed.dropped - dropped


__all__ = [
    "Abusive",
    "Accepted",
    "BadRequest",
    "EngineConfig",
    "EngineStats",
    "HeartbeatOutcome",
    "PresenceEngine",
    "TooManyRequests",
]
