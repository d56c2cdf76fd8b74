"""What the simulation does: its settings, who takes part, and each virtual user's choices.

Everything random is drawn from generators seeded by the graph seed, so two
runs with the same options make the same users connect, subscribe, move and
churn in the same order (only timing, which depends on the machine, differs).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from presenced.simulate.measure import COORD_MAX, COORD_MIN, MAX_REALMS, position_key

# Genesis City's parcels, as `presenced seed presence` uses.
DEFAULT_AREA = (-150, -150, 163, 158)
DEFAULT_REALMS = ("main", "hela", "dg")
# Streams a subscriber can open (SimConfig.subscribe_protocol).
SUBSCRIBE_PROTOCOLS = ("adr246", "v2")
# A walk moves at most this many parcels per axis per heartbeat.
WALK_STEP = 4
# Positions a user remembers having been on, never to return to them soon:
# an update then names exactly one heartbeat even if delivered late.
RECENT_POSITIONS = 16


@dataclass(frozen=True)
class SimConfig:
    """Every option of a simulation run (picklable: sent to the worker processes)."""

    targets: tuple[str, ...] = ("ws://127.0.0.1:8085/",)
    users: int = 1000
    avg_friends: float = 20.0
    seed: int = 0
    online_fraction: float = 0.5
    subscribe_fraction: float = 1.0
    duration_s: float = 60.0
    speed: float = 1.0
    heartbeat_interval_s: float = 30.0
    jitter: float = 0.1
    move_probability: float = 0.8
    realm_probability: float = 0.1
    realms: tuple[str, ...] = DEFAULT_REALMS
    area: tuple[int, int, int, int] = DEFAULT_AREA
    churn_per_hour: float = 2.0
    reconnect_delay_s: float = 10.0
    # None: every user churns. A fraction: only that share of the online
    # users churns, and never subscribes; the others stay connected all run
    # and the subscribers are chosen among them (steady subscribers watching
    # friends come and go, what a benchmark of update delivery wants).
    churn_fraction: float | None = None
    ramp: float = 100.0
    processes: int = 1
    source_addresses: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0
    settle_s: float = 7.0
    # Seconds a send time is kept for matching: a later delivery is "unmatched".
    retention_s: float = 300.0
    # Seconds between a worker's reports to the parent.
    report_interval_s: float = 0.25
    # False: users only log in and stay (keepalive pings are their sign of
    # life, as for a v2 client); they never send a PositionHeartbeat.
    heartbeats: bool = True
    # Which stream subscribers open: the ADR-246 PresenceService's
    # SubscribeFriendshipPresenceUpdates, or the SocialService v2 module's
    # SubscribeToFriendConnectivityUpdates (online/offline only).
    subscribe_protocol: str = "adr246"
    # A reconnect storm: this many seconds into the load phase every
    # connection is dropped at once (no close frame), and each user logs in
    # again within `storm_spread_s`. None: no storm.
    storm_at_s: float | None = None
    storm_spread_s: float = 1.0
    # The daemon's offline grace: users back within it must never have been
    # seen offline (the storm's check).
    offline_grace_s: float = 5.0

    @property
    def heartbeat_real_s(self) -> float:
        return self.heartbeat_interval_s / self.speed

    def problems(self) -> list[str]:
        """What is wrong with these settings, as messages naming the option."""
        out = []
        if not self.targets:
            out.append("--target: at least one WebSocket URL is needed")
        if self.users < 2:
            out.append("--users must be at least 2")
        if not 0 < self.online_fraction <= 1:
            out.append("--online-fraction must be in (0, 1]")
        if not 0 <= self.subscribe_fraction <= 1:
            out.append("--subscribe-fraction must be in [0, 1]")
        if self.churn_fraction is not None and not 0 <= self.churn_fraction <= 1:
            out.append("--churn-fraction must be in [0, 1]")
        if not 0 <= self.jitter < 1:
            out.append("--jitter must be in [0, 1)")
        for name, p in (("--move-probability", self.move_probability),
                        ("--realm-probability", self.realm_probability)):
            if not 0 <= p <= 1:
                out.append(f"{name} must be in [0, 1]")
        if not self.realms:
            out.append("--realm: at least one realm is needed")
        if len(self.realms) > MAX_REALMS:
            out.append(f"--realm: at most {MAX_REALMS} realms")
        if len(set(self.realms)) != len(self.realms) or any(not r for r in self.realms):
            out.append("--realm: realms must be distinct and non-empty")
        min_x, min_y, max_x, max_y = self.area
        if min_x > max_x or min_y > max_y:
            out.append("--area: minimums must not exceed maximums")
        if min(min_x, min_y) < COORD_MIN or max(max_x, max_y) > COORD_MAX:
            out.append(f"--area must lie within {COORD_MIN}..{COORD_MAX} on both axes")
        if (max_x - min_x + 1) * (max_y - min_y + 1) < 4 * RECENT_POSITIONS:
            out.append(f"--area needs at least {4 * RECENT_POSITIONS} parcels")
        if self.subscribe_protocol not in SUBSCRIBE_PROTOCOLS:
            out.append(f"--subscribe-protocol must be one of {', '.join(SUBSCRIBE_PROTOCOLS)}")
        if self.storm_at_s is not None:
            if not 0 <= self.storm_at_s < self.duration_s:
                out.append("--storm-at must be within --duration")
            if self.storm_spread_s < 0:
                out.append("--storm-spread must not be negative")
        return out


@dataclass(frozen=True)
class Population:
    """Which users of the graph connect, which of those subscribe, and which churn."""

    online: tuple[int, ...]
    subscribers: frozenset[int]
    offline: tuple[int, ...] = field(default=())
    # None: everyone churns (at --churn's rate).
    churners: frozenset[int] | None = None

    @classmethod
    def choose(cls, config: SimConfig) -> Population:
        rng = random.Random(f"{config.seed}:simulate")
        count = max(1, round(config.users * config.online_fraction))
        online = sorted(rng.sample(range(config.users), count))
        churners = None
        candidates = online
        if config.churn_fraction is not None:
            # Its own seeded draw: the same churners whatever --subscribe-fraction is, so a
            # run without subscribers has exactly the churn of a run with them.
            draw = random.Random(f"{config.seed}:simulate:churners")
            churners = frozenset(draw.sample(online, round(count * config.churn_fraction)))
            candidates = [i for i in online if i not in churners]
        subscribers = frozenset(
            rng.sample(candidates, round(len(candidates) * config.subscribe_fraction)))
        chosen = set(online)
        offline = tuple(i for i in range(config.users) if i not in chosen)
        return cls(tuple(online), subscribers, offline, churners)

    def churns(self, index: int) -> bool:
        return self.churners is None or index in self.churners

    def shares(self, processes: int) -> list[tuple[list[int], list[int]]]:
        """Per worker: (users it drives, offline users whose addresses it derives).

        Round-robin, so each worker gets the same mix of friend counts and its
        logins interleave with the others' during the ramp.
        """
        return [(list(self.online[w::processes]), list(self.offline[w::processes]))
                for w in range(processes)]


def connection_slot(config: SimConfig, order: int) -> tuple[str, str | None]:
    """Target URL and source address of the `order`-th online user."""
    target = config.targets[order % len(config.targets)]
    sources = config.source_addresses
    # Divided by the target count so every target sees every source address.
    source = sources[(order // len(config.targets)) % len(sources)] if sources else None
    return target, source


class UserPlan:
    """One virtual user's seeded choices: when to beat, where to go, when to leave.

    All durations are returned in real seconds (simulated ones divided by
    --speed).
    """

    __slots__ = ("rng", "config", "position", "recent", "_realm_count")

    def __init__(self, config: SimConfig, index: int) -> None:
        self.rng = random.Random(f"{config.seed}:simulate:{index}")
        self.config = config
        self.position: tuple[int, int, int] | None = None
        self.recent: deque[int] = deque(maxlen=RECENT_POSITIONS)
        self._realm_count = len(config.realms)

    def heartbeat_delay(self) -> float:
        c = self.config
        return c.heartbeat_real_s * self.rng.uniform(1.0 - c.jitter, 1.0 + c.jitter)

    def session_length(self) -> float:
        """Real seconds until the next churn disconnect (inf without churn)."""
        c = self.config
        if c.churn_per_hour <= 0:
            return math.inf
        return self.rng.expovariate(c.churn_per_hour / 3600.0) / c.speed

    def offline_gap(self) -> float:
        c = self.config
        return c.reconnect_delay_s * self.rng.uniform(0.5, 1.5) / c.speed

    def storm_delay(self) -> float:
        """Real seconds before logging in again after the storm dropped the connection."""
        return self.rng.uniform(0.0, self.config.storm_spread_s)

    def spawn(self) -> int:
        """A fresh position at login: a random realm and parcel."""
        rng = self.rng
        min_x, min_y, max_x, max_y = self.config.area
        for _ in range(64):
            position = (rng.randrange(self._realm_count), rng.randint(min_x, max_x),
                        rng.randint(min_y, max_y))
            key = position_key(*position)
            if key not in self.recent:
                return self._go(position, key)
        raise RuntimeError("no free position in --area")  # excluded by SimConfig.problems

    def next_position(self) -> int | None:
        """Where the next heartbeat goes: a new position key, or None to stay."""
        rng = self.rng
        c = self.config
        if self.position is None:
            return self.spawn()
        if rng.random() >= c.move_probability:
            return None
        if self._realm_count > 1 and rng.random() < c.realm_probability:
            realm = (self.position[0] + rng.randrange(1, self._realm_count)) % self._realm_count
            min_x, min_y, max_x, max_y = c.area
            position = (realm, rng.randint(min_x, max_x), rng.randint(min_y, max_y))
            key = position_key(*position)
            if key not in self.recent:
                return self._go(position, key)
        realm, x, y = self.position
        min_x, min_y, max_x, max_y = c.area
        for _ in range(64):
            nx = min(max_x, max(min_x, x + rng.randint(-WALK_STEP, WALK_STEP)))
            ny = min(max_y, max(min_y, y + rng.randint(-WALK_STEP, WALK_STEP)))
            key = position_key(realm, nx, ny)
            if key not in self.recent:
                return self._go((realm, nx, ny), key)
        # Boxed in by its own recent path (a tiny area): jump instead.
        return self.spawn()

    def _go(self, position: tuple[int, int, int], key: int) -> int:
        self.position = position
        self.recent.append(key)
        return key
