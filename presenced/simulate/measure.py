"""What a delivered update is matched against, and the latency histograms.

Every heartbeat that moves a virtual user puts it on a position nobody else
can be on: the pair (sender, position) names that heartbeat. The sender logs
the pair's send time; a receiver that gets an update with that position
looks the pair up, and the latency is the difference. Logins and logouts are
logged the same way under two reserved "positions", so ONLINE and OFFLINE
updates are matched too.

Keys are plain ints (sender index and position packed together), so the
logs are small dicts and the records shipped between processes are flat
arrays, not tuples or objects.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

# A position packs into 28 bits: realm index (6 bits), x and y (11 bits each,
# offset by 1024). The sender index goes above them.
COORD_OFFSET = 1024
COORD_MIN = -COORD_OFFSET
COORD_MAX = COORD_OFFSET - 1
MAX_REALMS = 62
_REALM_SHIFT = 22
SENDER_SHIFT = 28
_POSITION_MASK = (1 << SENDER_SHIFT) - 1
# Reserved realm slots: "online, no position yet" and "offline".
ONLINE = 62 << _REALM_SHIFT
OFFLINE = 63 << _REALM_SHIFT
# A position whose realm the simulator does not know (never a heartbeat of ours).
UNKNOWN = (61 << _REALM_SHIFT) | 1

POSITION, LOGIN, LOGOUT = 0, 1, 2
KINDS = ("notify", "online", "offline")


def position_key(realm: int, x: int, y: int) -> int:
    return (realm << _REALM_SHIFT) | ((x + COORD_OFFSET) << 11) | (y + COORD_OFFSET)


def unpack_position(key: int) -> tuple[int, int, int]:
    """(realm index, x, y) of a position key made by `position_key`."""
    key &= _POSITION_MASK
    return (key >> _REALM_SHIFT, ((key >> 11) & 0x7FF) - COORD_OFFSET,
            (key & 0x7FF) - COORD_OFFSET)


def kind_of(key: int) -> int:
    position = key & _POSITION_MASK
    if position == ONLINE:
        return LOGIN
    if position == OFFLINE:
        return LOGOUT
    return POSITION


def describe(key: int, realms: Iterable[str]) -> str:
    """A position key for people: 'offline', 'online (no position)', 'main 10,-3'."""
    position = key & _POSITION_MASK
    if position == OFFLINE:
        return "offline"
    if position == ONLINE:
        return "online (no position)"
    if position == UNKNOWN:
        return "online (unknown realm)"
    realm, x, y = unpack_position(position)
    names = list(realms)
    name = names[realm] if realm < len(names) else f"realm #{realm}"
    return f"{name} {x},{y}"


class Counters:
    """Running totals; the parent sums the latest copy of every worker's."""

    FIELDS = ("login_attempts", "logins", "login_errors", "connected", "subscribed",
              "heartbeats", "heartbeats_accepted", "updates", "foreign_updates",
              "churn_disconnects")
    __slots__ = FIELDS

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}


class Histogram:
    """Latencies in milliseconds, in buckets 1 % wide: percentiles to 1 %.

    Sparse (a dict of bucket counts) so workers can ship what they added
    since the last report and the parent can merge it by addition.
    """

    __slots__ = ("counts", "count", "total", "max")

    _FLOOR_MS = 0.01
    _STEP = math.log(1.01)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        i = 0 if ms <= self._FLOOR_MS else int(math.log(ms / self._FLOOR_MS) / self._STEP) + 1
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        self.count += other.count
        self.total += other.total
        if other.max > self.max:
            self.max = other.max

    def take(self) -> Histogram:
        """Everything added so far, as a new histogram; this one starts empty."""
        out = Histogram()
        out.counts, out.count, out.total, out.max = self.counts, self.count, self.total, self.max
        self.counts = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        return out

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                if i == 0:
                    return self._FLOOR_MS
                # The bucket's geometric middle, but never above the true max.
                value = self._FLOOR_MS * math.exp((i - 0.5) * self._STEP)
                return min(value, self.max)
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "count": self.count,
            "p50": r(self.percentile(50)),
            "p95": r(self.percentile(95)),
            "p99": r(self.percentile(99)),
            "max": r(self.max) if self.count else None,
            "mean": r(self.total / self.count) if self.count else None,
        }

    def __getstate__(self) -> tuple[dict[int, int], int, float, float]:
        return self.counts, self.count, self.total, self.max

    def __setstate__(self, state: tuple[dict[int, int], int, float, float]) -> None:
        self.counts, self.count, self.total, self.max = state


class SendLog:
    """When each (sender, position) was sent, for `retention_s` seconds.

    A key usually names one send. Logins and logouts reuse theirs every
    session, so a key sent again keeps its last few times (a list): a late
    receipt still finds the send that caused it, not the one after.
    Insertion-ordered with re-logged keys moved to the end, so the oldest
    entries are always at the front and pruning stops at the first young one.
    """

    __slots__ = ("times", "retention_s")

    HISTORY = 4

    def __init__(self, retention_s: float) -> None:
        self.times: dict[int, float | list[float]] = {}
        self.retention_s = retention_s

    def record(self, key: int, t: float) -> None:
        times = self.times
        previous = times.pop(key, None)
        if previous is None:
            times[key] = t
        elif isinstance(previous, float):
            times[key] = [previous, t]
        else:
            previous.append(t)
            if len(previous) > self.HISTORY:
                del previous[0]
            times[key] = previous

    def record_many(self, keys: array, times: array) -> None:
        record = self.record
        for key, t in zip(keys, times, strict=True):
            record(key, t)

    def sent_before(self, key: int, arrival: float) -> float | None:
        """The latest send of `key` not after `arrival`, if logged."""
        entry = self.times.get(key)
        if entry is None:
            return None
        if isinstance(entry, float):
            return entry if entry <= arrival else None
        for t in reversed(entry):
            if t <= arrival:
                return t
        return None

    def prune(self, now: float) -> None:
        cutoff = now - self.retention_s
        times = self.times
        old = []
        for key, entry in times.items():
            if (entry if isinstance(entry, float) else entry[-1]) >= cutoff:
                break
            old.append(key)
        for key in old:
            del times[key]


class Matcher:
    """Turns receipts into latency samples against a `SendLog`.

    A receipt counts as a sample only if its cause was sent after the
    receiver subscribed (`since`; earlier states reach a new subscriber as the
    initial snapshot, not as live changes) and after the load phase started
    (`measure_from`; the ramp's login storm is not steady state).
    """

    __slots__ = ("log", "histograms", "cross", "measure_from", "matched", "excluded",
                 "unmatched")

    def __init__(self, log: SendLog) -> None:
        self.log = log
        self.histograms = (Histogram(), Histogram(), Histogram())
        # Position changes whose sender and receiver use different --target
        # daemons: the path between two instances (through the store).
        self.cross = Histogram()
        self.measure_from = math.inf
        self.matched = [0, 0, 0]  # live updates per kind, measured or not
        self.excluded = 0  # snapshot entries and updates caused during the ramp
        self.unmatched = 0

    def restart(self, measure_from: float) -> None:
        """Measure again from `measure_from`: the latency samples so far are dropped."""
        self.measure_from = measure_from
        for histogram in (*self.histograms, self.cross):
            histogram.take()

    def match(self, key: int, arrival: float, since: float, cross: int = 0) -> bool:
        """False if the cause is not (yet) in the log; `cross` if the sender and the
        receiver are connected to different targets."""
        sent = self.log.sent_before(key, arrival)
        if sent is None:
            return False
        if sent < since:
            self.excluded += 1
            return True
        kind = kind_of(key)
        self.matched[kind] += 1
        if sent >= self.measure_from:
            ms = (arrival - sent) * 1000.0
            self.histograms[kind].add(ms)
            if cross and kind == POSITION:
                self.cross.add(ms)
        return True


class ReceiptBuffer:
    """Receipts for senders in other processes, as flat arrays for the pipe."""

    __slots__ = ("keys", "arrivals", "sinces", "crosses")

    def __init__(self) -> None:
        self.keys = array("q")
        self.arrivals = array("d")
        self.sinces = array("d")
        self.crosses = array("b")

    def add(self, key: int, arrival: float, since: float, cross: int = 0) -> None:
        self.keys.append(key)
        self.arrivals.append(arrival)
        self.sinces.append(since)
        self.crosses.append(cross)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self) -> tuple[array, array, array, array]:
        out = self.keys, self.arrivals, self.sinces, self.crosses
        self.keys = array("q")
        self.arrivals = array("d")
        self.sinces = array("d")
        self.crosses = array("b")
        return out
