"""The Redis store: many presenced instances sharing one Redis.

Design and key layout: docs/redis.md. In short, each instance keeps its own
users in memory (the engine), writes them to Redis in batches, and follows
a single change channel that carries every instance's changes, one binary
message per flush. Redis is never on the path of a heartbeat response.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any, TypeVar

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from presenced.histogram import Histogram
from presenced.model import Presence, PresenceLeave, PresenceOp, PresenceWrite
from presenced.store.base import (
    EventSink,
    Expired,
    Friendship,
    FriendshipChanged,
    GraphChanges,
    Resync,
    StoreEvent,
    StoreUnavailable,
    ordered_pair,
)
from presenced.store.redis_bridge import Listener
from presenced.store.redis_codec import (
    Message,
    decode_presence,
    encode_presence,
    entry,
    header,
)
from presenced.store.redis_config import RedisStoreConfig
from presenced.store.redis_scripts import SCRIPTS, Keys, Script

log = logging.getLogger("presenced.store.redis")

T = TypeVar("T")

# What a failed Redis call can raise (OSError: a socket error redis-py did
# not wrap, e.g. while closing).
REDIS_ERRORS = (redis.RedisError, OSError)

# Presence ops per script call: bounds how long one call holds Redis (a few
# ms) and the size of one change message (~65 KB). At most 4000: the script
# unpacks two values per op into one command, and Lua's limit is 8000.
OPS_PER_SCRIPT = 1000
PAIRS_PER_SCRIPT = 1000
# Users one claim call may look at; the claim loops while there are more.
CLAIM_LIMIT = 2000
# Friend sets kept in memory; beyond it the oldest are dropped (a dropped
# entry is simply fetched again).
FRIENDS_CACHE_MAX = 200_000

Records = list[tuple[Presence, frozenset[str]]]


def _new_epoch() -> str:
    # Fresh for every call that may create the epoch: an instance that
    # re-created it with the same value after a Redis restart would not
    # notice that Redis had lost its data.
    return secrets.token_hex(6)


@dataclass(slots=True)
class _Fence:
    token: str
    # Filled in when the audit's MULTI returns, which may be after the fence
    # itself came back through the feed.
    seqs: dict[str, int] | None = None
    epoch: str | None = None
    # What we had applied when the fence came back, if before the reply.
    applied: dict[str, int] | None = None


@dataclass(slots=True)
class _Snapshot:
    records: Records
    seqs: dict[str, int]
    epoch: str
    friends: dict[str, set[str]]


class RedisStore:
    """The shared store (see the module docstring and docs/redis.md).

    Health and counters, as plain attributes for the readiness check and the
    metrics layer (read them from the trio thread):

    - `healthy`: False until the first complete load, and from any Redis
      failure (a failed call, the change feed lost) until Redis answers again
      and the store has resynchronised.
    - `redis_errors`: failed Redis calls by kind (`flush`, `listener` (the
      change feed dropped), `resync`, `read`, `claim`, `friends`, `audit`;
      `internal` counts bugs caught so they cannot stop the daemon).
    - `outages`: times the store went from healthy to unhealthy.
    - `flushes`, `writes_flushed`: batches written and presence ops in them.
    - `flush_latency`: a `Histogram` of seconds per flush (one pipeline).
    - `messages_received`, `events_received`: change messages from other
      instances and the events they carried.
    - `resyncs`, `resync_reasons`: full resynchronisations, and why (`start`,
      `feed-reconnected`, `recovered`, `epoch`, `gap`, `audit`, `error`).
    - `last_resync_seconds`: how long the last one took (read and decode).
    - `audits`: periodic feed audits that came back clean (a failed one
      triggers a resync).
    - `pending_writes`: ops waiting for the next flush (grows while Redis is
      away; at most one per user).
    """

    # Reconnect backoff (seconds), for both the writer and the listener.
    backoff_min_s = 0.05
    backoff_max_s = 2.0

    def __init__(
        self,
        url: str,
        config: RedisStoreConfig | None = None,
        *,
        instance_id: str | None = None,
        prefix: str = "{presenced}",
    ) -> None:
        config = config or RedisStoreConfig()
        self.instance_id = instance_id or secrets.token_hex(6)
        self.url = url
        self.keys = Keys(prefix)
        self._ttl_ms = config.ttl_ms
        self._grace_ms = config.offline_grace_ms
        self._timeout = config.socket_timeout_s
        self._flush_interval = config.flush_interval_s
        self._audit_interval = config.resync_interval_s
        # An instance that has not written for this long (by Redis's clock)
        # no longer counts as an owner; it beacons four times as often.
        self.dead_after_ms = max(1000, min(10_000, self._ttl_ms // 2))
        self._beacon_s = self.dead_after_ms / 4000
        # Instances silent for this long are forgotten altogether.
        self.gc_after_ms = max(3 * self._ttl_ms, 30_000)
        # The engine writes a user kept alive only by pings (no heartbeats)
        # every touch interval, which can exceed a short TTL: the sweep must
        # leave an alive owner's users alone for longer than that.
        self._hold_ms = 2 * config.touch_write_interval_ms

        common: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            # No silent retries: a failed call must reach our own handling
            # (re-queue, health, resync); a retried script could also run twice.
            "retry": Retry(NoBackoff(), 0),
            # RESP2: plain list replies, the most exercised path of hiredis.
            "protocol": 2,
        }
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=config.pool_size, timeout=self._timeout,
            client_name=f"presenced-{self.instance_id}", **common,
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        # The subscriber has a connection of its own, outside the pool.
        self._sub_pool = redis.ConnectionPool.from_url(
            url, max_connections=2, client_name=f"presenced-{self.instance_id}-sub", **common
        )
        self._sub_redis = redis.Redis(connection_pool=self._sub_pool)
        self._limiter = trio.CapacityLimiter(config.pool_size)

        self._sink: EventSink | None = None
        self._listener: Listener | None = None
        self._closed = False
        self._started = False
        self._synced = trio.Event()

        # Writes waiting for the next flush, one per user, and everything this
        # instance vouches for (to put back into a Redis that lost it).
        self._batch: dict[str, PresenceOp] = {}
        self._own: dict[str, Presence] = {}
        self._flush_lock = trio.Lock()

        # Friend sets of our users, kept current by the change feed.
        self._friends: dict[str, set[str]] = {}
        # Friendship changes applied while fetches are in flight, so that a
        # fetch can add what happened after Redis answered it.
        self._fetching = 0
        self._friend_log: list[FriendshipChanged] = []

        # Change feed: last sequence number applied per origin instance, and
        # the Redis epoch they belong to.
        self._seqs: dict[str, int] = {}
        self._epoch: str | None = None
        self._subscribed = False
        self._generation = 0
        self._buffering = False
        self._buffer: list[Message] = []
        self._resync_reason: str | None = None
        self._resync_kind = ""
        self._wake = trio.Event()
        # The audit in flight.
        self._fence: _Fence | None = None
        # Our own recent expiry messages: (seq, users), see _expired_here.
        self._expiries: deque[tuple[int, list[str]]] = deque(maxlen=256)

        # Health.
        self._io_ok = True
        self._recovering = True
        self._io_delay = 0.0
        self._was_healthy = False
        self._outage_reason: str | None = None
        self._outage_since: float | None = None

        # Counters (see the class docstring).
        self.redis_errors: Counter[str] = Counter()
        self.outages = 0
        self.flushes = 0
        self.writes_flushed = 0
        self.flush_latency = Histogram()
        self.messages_received = 0
        self.events_received = 0
        self.resyncs = 0
        self.resync_reasons: Counter[str] = Counter()
        self.last_resync_seconds = 0.0
        self.audits = 0

    # ------------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        return (self._started and self._io_ok and self._subscribed
                and not self._recovering and not self._closed)

    @property
    def pending_writes(self) -> int:
        return len(self._batch)

    def _note_health(self) -> None:
        """Log transitions, once per outage."""
        healthy = self.healthy
        if healthy == self._was_healthy:
            return
        self._was_healthy = healthy
        if healthy:
            if self._outage_since is not None:
                log.info("Redis available again after %.1f s; resynchronised",
                     time.monotonic() - self._outage_since)
            self._outage_since = None
            self._outage_reason = None
        elif not self._closed:
            self.outages += 1
            self._outage_since = time.monotonic()
            log.warning("Redis unavailable (%s): serving from memory, retrying",
                        self._outage_reason or "unknown")

    def _failed(self, kind: str, exc: BaseException | str) -> None:
        """A Redis call failed (or, for `listener`, the change feed dropped)."""
        self.redis_errors[kind] += 1
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        reason = f"{kind}: {detail}"
        if self._outage_reason is None:
            self._outage_reason = reason
        if not self._started and not self.redis_errors.total() > 1:
            log.warning("cannot reach Redis at %s (%s); retrying", self._safe_url(), reason)
        if kind != "listener":
            # The feed dropping says nothing about other connections; calls
            # keep going (and a resync follows the new subscription).
            self._io_ok = False
            self._io_delay = min(self.backoff_max_s,
                                 max(self.backoff_min_s, self._io_delay * 2))
        self._recovering = True
        self._note_health()

    def _succeeded(self) -> None:
        if not self._io_ok:
            self._io_ok = True
            self._io_delay = 0.0
            if self._recovering and self._started:
                self._request_resync("Redis reachable again", "recovered")
        self._note_health()

    def _safe_url(self) -> str:
        # Never log a password.
        head, at, tail = self.url.rpartition("@")
        return f"redis://…@{tail}" if at else self.url

    # --------------------------------------------------------------- lifecycle

    async def run(
        self, sink: EventSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._sink = sink
        self._listener = Listener(
            self._sub_redis, self.keys.channel, self.instance_id,
            trio.lowlevel.current_trio_token(),
            on_batch=self._on_batch, on_subscribed=self._on_subscribed, on_lost=self._on_lost,
            backoff_min_s=self.backoff_min_s, backoff_max_s=self.backoff_max_s,
        )
        self._listener.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resync_loop)
                nursery.start_soon(self._flusher)
                # Subscribed, then a full picture: only then may the hub take
                # connections (it opens its listener after `started`).
                await self._synced.wait()
                self._started = True
                nursery.start_soon(self._auditor)
                self._note_health()
                task_status.started()
        finally:
            self._listener.stop()

    async def aclose(self, *, leave: bool = True) -> None:
        """Flush, hand our users to the sweep, stop the listener, close sockets.

        With `leave=False` nothing is written: the cluster sees this instance
        vanish as if it had crashed (for tests and for emergencies).
        """
        if self._closed:
            return
        self._closed = True
        listener = self._listener
        if listener is not None:
            listener.stop()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._timeout):
                if leave and self._started and self._io_ok:
                    try:
                        await self._flush_now(beacon=False)
                        n = await self._io(self._retire_sync)
                        log.info("left the cluster: %d users handed to the sweep", n)
                    except (StoreUnavailable, *REDIS_ERRORS) as e:
                        log.info("could not leave the cluster cleanly: %s", e)
            # Let every thread that holds a connection finish before the
            # sockets close under it (EBADF tracebacks otherwise).
            if listener is not None:
                await trio.to_thread.run_sync(listener.join, self._timeout + 1)
            with trio.move_on_after(self._timeout + 1):
                while self._limiter.borrowed_tokens:
                    await trio.sleep(0.01)
        self._redis.close()
        self._pool.disconnect()
        self._sub_pool.disconnect()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        # Redis calls run in threads of their own limiter (the default one is
        # shared with everything else). Abandoning on cancel is safe: every
        # socket has a timeout, so the thread ends soon after.
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    # ----------------------------------------------------------------- writes

    def write(self, op: PresenceOp) -> None:
        if self._closed:
            return
        batch = self._batch
        if isinstance(op, PresenceWrite):
            address = op.presence.address
            self._own[address] = op.presence
            if not op.changed:
                prev = batch.get(address)
                # Coalescing keeps the latest state but never loses "changed":
                # other instances must still hear about an earlier change.
                if prev is not None and (isinstance(prev, PresenceLeave) or prev.changed):
                    op = PresenceWrite(op.presence, True)
            batch[address] = op
        else:
            address = op.address
            self._own.pop(address, None)
            self._friends.pop(address, None)
            batch[address] = op

    def _requeue(self, ops: dict[str, PresenceOp]) -> None:
        """Put back a batch that failed, under anything written since."""
        batch = self._batch
        for address, old in ops.items():
            new = batch.get(address)
            if new is None:
                batch[address] = old
            elif (isinstance(new, PresenceWrite) and not new.changed
                  and (isinstance(old, PresenceLeave) or old.changed)):
                batch[address] = PresenceWrite(new.presence, True)

    async def flush(self) -> None:
        """Write pending changes now; raises StoreUnavailable if Redis fails."""
        await self._flush_now(beacon=False)

    async def _flush_now(self, beacon: bool) -> None:
        async with self._flush_lock:
            if not self._batch and not beacon:
                return
            ops = self._batch
            self._batch = {}
            started = time.perf_counter()
            try:
                epoch, orphaned = await self._io(self._flush_sync, list(ops.values()))
            except REDIS_ERRORS as e:
                self._requeue(ops)
                self._failed("flush", e)
                raise StoreUnavailable(f"Redis unavailable: {e}") from e
            except Exception as e:
                # A bug, not Redis: retrying the same batch would fail forever.
                self.redis_errors["internal"] += 1
                log.exception("dropping a batch of %d presence writes", len(ops))
                raise StoreUnavailable(f"internal error: {e}") from e
            except BaseException:
                # Cancelled (shutting down): keep the batch for aclose().
                self._requeue(ops)
                raise
            if ops:
                self.flushes += 1
                self.writes_flushed += len(ops)
                self.flush_latency.observe(time.perf_counter() - started)
            self._succeeded()
            self._check_epoch(epoch)
            if orphaned:
                # We made these users offline cluster-wide and removed entries
                # of dead instances that our own engine may still count as
                # owners: tell it, as other instances are told by the 'G'.
                self._expired_here(orphaned)
                self._emit([Expired(a) for _, addresses in orphaned for a in addresses])

    def _flush_sync(self, ops: list[PresenceOp]) -> tuple[str, list[tuple[int, list[str]]]]:
        base: list[Any] = [self.keys.prefix, self.instance_id, _new_epoch(),
                           self.dead_after_ms]
        calls: list[list[Any]] = []
        args = list(base)
        for op in ops:
            if isinstance(op, PresenceWrite):
                p = op.presence
                args += (b"W" if op.changed else b"w", p.address, p.last_seen_ms,
                         encode_presence(p))
            else:
                args += (b"L", op.address, op.last_seen_ms, b"")
            if len(args) >= len(base) + 4 * OPS_PER_SCRIPT:
                calls.append(args)
                args = list(base)
        if len(args) > len(base) or not calls:
            calls.append(args)
        results = self._eval_many(SCRIPTS["flush"], calls)
        orphaned = [(int(r[2]), [a.decode() for a in r[1]]) for r in results if r[1]]
        return results[-1][0].decode(), orphaned

    def _eval_many(self, script: Script, calls: list[list[Any]]) -> list[Any]:
        """Run `script` once per argument list, in one pipeline."""
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for args in calls:
                # One declared key, so that anything routing by key (a cluster
                # proxy) sends the script to the slot all our keys share.
                pipe.execute_command("EVALSHA", script.sha, 1, self.keys.seen, *args)
            try:
                return pipe.execute()
            except NoScriptError:
                # A new or restarted Redis: load every script, then once more.
                if attempt == 2:
                    raise
                for s in SCRIPTS.values():
                    self._redis.script_load(s.source)
        raise AssertionError("unreachable")

    async def _flusher(self) -> None:
        next_beacon = 0.0
        while not self._closed:
            await trio.sleep(self._flush_interval if self._io_ok else self._io_delay)
            if self._closed:
                # aclose() writes what is left.
                return
            now = trio.current_time()
            beacon = now >= next_beacon or not self._io_ok
            if not self._batch and not beacon:
                continue
            try:
                await self._flush_now(beacon=True)
            except StoreUnavailable:
                continue
            next_beacon = now + self._beacon_s

    async def _rewrite_own(self) -> None:
        """Put back everyone we vouch for, as changes (a Redis that lost them)."""
        for address, presence in self._own.items():
            self._batch[address] = PresenceWrite(presence, True)
        await self.flush()

    def _retire_sync(self) -> int:
        now_ms = int(time.time() * 1000)
        args = [self.keys.prefix, self.instance_id, _new_epoch(), now_ms,
                self._ttl_ms, self._grace_ms, self.dead_after_ms]
        return int(self._eval_many(SCRIPTS["retire"], [args])[0])

    # ------------------------------------------------------------ change feed

    def _emit(self, events: Sequence[StoreEvent]) -> None:
        if not events or self._sink is None or self._closed:
            return
        try:
            self._sink(events)
        except Exception:
            log.exception("applying %d store events failed", len(events))

    def _on_subscribed(self) -> None:
        self._generation += 1
        self._subscribed = True
        self._fence = None
        # Anything buffered came through the old connection and is covered
        # by the snapshot we are about to read.
        self._buffer = []
        first = self._epoch is None
        if first:
            self._request_resync("start", "start")
        else:
            self._request_resync("change feed reconnected", "feed-reconnected")

    def _on_lost(self, reason: str) -> None:
        self._subscribed = False
        self._fence = None
        self._failed("listener", reason)

    def _on_batch(self, messages: list[Message]) -> None:
        if self._closed:
            return
        self.messages_received += len(messages)
        try:
            self._process(messages)
        except Exception:
            log.exception("processing %d change messages failed", len(messages))
            self._request_resync("internal error while applying changes", "error")

    def _process(self, messages: Iterable[Message], replay: bool = False) -> None:
        """Apply change messages in order, checking each origin's sequence.

        `replay`: messages held during a resync; those the snapshot already
        contains (numbers up to the snapshot's) are expected, not suspicious.
        """
        events: list[StoreEvent] = []
        for msg in messages:
            if msg.fence is not None:
                self._check_fence(msg.fence)
                continue
            if self._buffering:
                self._buffer.append(msg)
                continue
            if msg.epoch != self._epoch:
                self._request_resync("a change from a new Redis epoch", "epoch")
                self._buffer.append(msg)
                continue
            expected = self._seqs.get(msg.origin, 0) + 1
            if msg.seq == 1 and expected > 1 and not replay:
                # The origin's counter started again (its entry was dropped by
                # the garbage collection of silent instances while it lived).
                self._request_resync(f"sequence of {msg.origin} restarted", "gap")
                self._buffer.append(msg)
                continue
            if msg.seq < expected:
                # Already in the snapshot we loaded. Friendship changes are
                # idempotent, and replaying them closes the gap a fetch racing
                # with the snapshot could leave; presence would only flicker.
                for ev in msg.events:
                    if isinstance(ev, FriendshipChanged):
                        self._apply_friendship(ev)
                        events.append(ev)
                continue
            if msg.seq > expected:
                self._request_resync(
                    f"missed {msg.seq - expected} change message(s) from {msg.origin}", "gap")
                self._buffer.append(msg)
                continue
            self._seqs[msg.origin] = msg.seq
            for ev in msg.events:
                if isinstance(ev, FriendshipChanged):
                    self._apply_friendship(ev)
            events.extend(msg.events)
        self.events_received += len(events)
        self._emit(events)

    def _check_epoch(self, epoch: str) -> None:
        if self._epoch is not None and epoch != self._epoch:
            self._request_resync("Redis lost its data (new epoch)", "epoch")

    # ------------------------------------------------------------------ resync

    def _request_resync(self, reason: str, kind: str) -> None:
        """`reason` is for the log and the Resync event; `kind` for metrics."""
        if self._resync_reason is None:
            self._resync_reason = reason
            self._resync_kind = kind
        # From now on changes wait, so that none is applied before the
        # snapshot that may already contain it.
        self._buffering = True
        self._wake.set()

    async def _resync_loop(self) -> None:
        while True:
            while True:
                self._wake = trio.Event()
                if self._resync_reason is not None and self._subscribed and not self._closed:
                    break
                await self._wake.wait()
            try:
                await self._resync(self._resync_reason)
            except StoreUnavailable:
                await trio.sleep(self._io_delay or self.backoff_min_s)
            except Exception:
                # A bug must not end the store (and with it the daemon): say
                # so, and try again later.
                self.redis_errors["internal"] += 1
                log.exception("resynchronising with Redis failed")
                await trio.sleep(self.backoff_max_s)

    async def _resync(self, reason: str) -> None:
        generation = self._generation
        started = time.perf_counter()
        epoch_before = self._epoch
        cached = list(self._friends)
        mark = self._begin_fetch()
        try:
            snap = await self._read_snapshot(cached)
            if epoch_before is not None and snap.epoch != epoch_before:
                # Redis lost everything (restarted without persistence). Put
                # back what we vouch for at once, and give the other instances
                # time to do the same, so that the picture we load next is
                # whole and nobody's friends see them flicker offline.
                log.warning("Redis lost its data (epoch %s -> %s): rewriting %d users",
                            epoch_before, snap.epoch, len(self._own))
                await self._rewrite_own()
                await trio.sleep(self.backoff_max_s + 3 * self._flush_interval + 0.5)
                snap = await self._read_snapshot(cached)
        finally:
            logged = self._end_fetch(mark)
        if generation != self._generation or not self._subscribed:
            # The feed dropped meanwhile; it will ask again once back.
            return
        events: list[StoreEvent] = [Resync(tuple(snap.records), reason)]
        if epoch_before is None or snap.epoch == epoch_before:
            events += self._refresh_friends(snap.friends, logged)
            # Users we expired after the snapshot was read are in it still.
            mine = snap.seqs.get(self.instance_id, 0)
            events += [Expired(a) for seq, addresses in self._expiries if seq > mine
                       for a in addresses]
        else:
            self._expiries.clear()
            # Friendships are not rebuilt from memory (see docs/redis.md):
            # keep what connected users have, and say so loudly.
            log.error("Redis lost its data: friendships must be reloaded from their "
                      "source; connected users keep the friends they had")
        self._epoch = snap.epoch
        self._seqs = dict(snap.seqs)
        self._resync_reason = None
        self._buffering = False
        buffered, self._buffer = self._buffer, []
        self.resyncs += 1
        self.resync_reasons[self._resync_kind] += 1
        self.last_resync_seconds = time.perf_counter() - started
        self._emit(events)
        self._process(buffered, replay=True)
        if self._resync_reason is None and self._io_ok:
            self._recovering = False
        if not self._synced.is_set():
            self._synced.set()
            log.info("loaded from Redis at %s: %d users online, instance %s",
                     self._safe_url(), len(snap.records), self.instance_id)
        elif reason not in ("start",):
            log.info("resynchronised with Redis (%s) in %.3f s: %d users online",
                     reason, self.last_resync_seconds, len(snap.records))
        self._note_health()

    async def _read_snapshot(self, friends_of: list[str]) -> _Snapshot:
        try:
            snap = await self._io(self._read_snapshot_sync, friends_of)
        except REDIS_ERRORS as e:
            self._failed("resync", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        return snap

    def _read_snapshot_sync(self, friends_of: list[str]) -> _Snapshot:
        r = self._redis
        k = self.keys
        pipe = r.pipeline(transaction=False)
        pipe.set(k.epoch, _new_epoch(), nx=True)
        pipe.smembers(k.members)
        members = pipe.execute()[1]
        for _ in range(5):
            # One MULTI: the presence, the owners and the sequence numbers all
            # describe the same instant. The instance list must be known to
            # name the per-instance keys, so it is read again inside and the
            # read repeated if an instance joined in between.
            tx = r.pipeline(transaction=True)
            tx.smembers(k.members)
            names = sorted(members)
            for m in names:
                tx.zrange(k.own(m.decode()), 0, -1)
            tx.hgetall(k.state)
            tx.hgetall(k.seq)
            tx.get(k.epoch)
            for address in friends_of:
                tx.smembers(k.friends(address))
            res = tx.execute()
            if res[0] == members:
                break
            members = res[0]
        owners_of: dict[bytes, tuple[str, ...]] = {}
        for m, owned in zip(names, res[1 : 1 + len(names)], strict=True):
            name = m.decode()
            for a in owned:
                owners_of[a] = owners_of.get(a, ()) + (name,)
        i = 1 + len(names)
        state, seqs, epoch = res[i], res[i + 1], res[i + 2]
        # Most users share the same owner set: build each frozenset once.
        sets: dict[tuple[str, ...], frozenset[str]] = {}
        records: Records = []
        append = records.append
        for a, blob in state.items():
            owners = owners_of.get(a, ())
            fs = sets.get(owners)
            if fs is None:
                fs = sets[owners] = frozenset(owners)
            append((decode_presence(intern(a.decode()), blob), fs))
        friends = {
            address: {intern(f.decode()) for f in fset}
            for address, fset in zip(friends_of, res[i + 3 :], strict=True)
        }
        return _Snapshot(
            records,
            {o.decode(): int(s) for o, s in seqs.items()},
            epoch.decode() if epoch else _new_epoch(),
            friends,
        )

    # ------------------------------------------------------------------- audit

    async def _auditor(self) -> None:
        while not self._closed:
            await trio.sleep(self._audit_interval)
            await self._run_audit()

    async def _run_audit(self) -> None:
        """Check, cheaply, that no change message was missed.

        This is the periodic resync's fast path: it costs one MULTI and one
        message whatever the number of users, and a full resync follows only
        if it finds something wrong. It reads every instance's last sequence
        number and, in the same MULTI, publishes a fence to ourselves;
        messages are delivered in publish order, so when the fence comes back
        every message counted must have arrived. A fence that never comes
        back means the feed went silent: reconnect it (and so resync).
        """
        if not (self._subscribed and self._io_ok) or self._buffering or self._closed:
            return
        if self._fence is not None:
            log.warning("change feed silent (audit fence lost): reconnecting")
            self._fence = None
            if self._listener is not None:
                self._listener.reconnect()
            return
        fence = self._fence = _Fence(secrets.token_hex(6))
        try:
            fence.seqs, fence.epoch = await self._io(self._audit_sync, fence.token)
        except REDIS_ERRORS as e:
            self._fence = None
            self._failed("audit", e)
            return
        self._succeeded()
        if fence.applied is not None and self._fence is fence:
            self._judge_fence(fence, fence.applied)

    def _audit_sync(self, token: str) -> tuple[dict[str, int], str]:
        k = self.keys
        tx = self._redis.pipeline(transaction=True)
        tx.hgetall(k.seq)
        tx.get(k.epoch)
        tx.publish(k.channel, header(self.instance_id, self._epoch or "-", 0)
                   + entry(b"Z", token))
        seqs, epoch, _ = tx.execute()
        return ({o.decode(): int(s) for o, s in seqs.items()},
                epoch.decode() if epoch else "")

    def _check_fence(self, token: str) -> None:
        fence = self._fence
        if fence is None or fence.token != token:
            # A fence published before a reconnect: the ordering it vouched
            # for no longer holds.
            return
        if self._buffering:
            self._fence = None
            return
        if fence.seqs is None:
            # Back before the MULTI's reply: judge when that arrives, against
            # what we had applied at this point.
            fence.applied = dict(self._seqs)
            return
        self._judge_fence(fence, self._seqs)

    def _judge_fence(self, fence: _Fence, applied: dict[str, int]) -> None:
        """Messages are delivered in publish order, and the fence was published
        in the same MULTI that read the counters: by the fence, we must have
        applied exactly up to each origin's counter. Less is a lost message;
        more means a counter started again."""
        self._fence = None
        if self._buffering or fence.seqs is None:
            return
        if fence.epoch != self._epoch:
            self._request_resync("audit: Redis epoch changed", "audit")
            return
        me = self.instance_id
        for origin, seq in fence.seqs.items():
            if origin != me and applied.get(origin, 0) != seq:
                self._request_resync(f"audit: missed change messages from {origin}", "audit")
                return
        self.audits += 1

    # ------------------------------------------------------------- friendships

    def _begin_fetch(self) -> int:
        self._fetching += 1
        return len(self._friend_log)

    def _end_fetch(self, mark: int) -> list[FriendshipChanged]:
        logged = self._friend_log[mark:]
        self._fetching -= 1
        if not self._fetching:
            self._friend_log = []
        return logged

    def _apply_friendship(self, ev: FriendshipChanged) -> None:
        friends = self._friends
        fa = friends.get(ev.a)
        fb = friends.get(ev.b)
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
            self._friend_log.append(ev)

    @staticmethod
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

    def _cache_friends(self, address: str, friends: set[str]) -> None:
        cache = self._friends
        cache[address] = friends
        if len(cache) > FRIENDS_CACHE_MAX:
            # Oldest first; a dropped entry is only fetched again.
            for old in list(cache)[: len(cache) - FRIENDS_CACHE_MAX]:
                del cache[old]

    def _refresh_friends(
        self, fresh: dict[str, set[str]], logged: list[FriendshipChanged]
    ) -> list[StoreEvent]:
        """Replace cached friend sets with `fresh`; the differences as events."""
        events: list[StoreEvent] = []
        seen: set[tuple[str, str, bool]] = set()
        for address, friends in fresh.items():
            self._replay(address, friends, logged)
            old = self._friends.get(address)
            if old is None:
                continue
            for f in friends - old:
                a, b = ordered_pair(address, f)
                if (a, b, True) not in seen:
                    seen.add((a, b, True))
                    events.append(FriendshipChanged(a, b, True))
            for f in old - friends:
                a, b = ordered_pair(address, f)
                if (a, b, False) not in seen:
                    seen.add((a, b, False))
                    events.append(FriendshipChanged(a, b, False))
            self._friends[address] = friends
        return events

    async def friends_of(self, address: str) -> frozenset[str]:
        cached = self._friends.get(address)
        if cached is not None:
            return frozenset(cached)
        if not self._io_ok:
            raise StoreUnavailable("Redis unavailable")
        mark = self._begin_fetch()
        try:
            members = await self._io(self._redis.smembers, self.keys.friends(address))
        except REDIS_ERRORS as e:
            self._failed("read", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        finally:
            logged = self._end_fetch(mark)
        self._succeeded()
        # Interned: every friend set then shares one string per address.
        friends = {intern(m.decode()) for m in members}
        self._replay(address, friends, logged)
        self._cache_friends(address, friends)
        return frozenset(friends)

    async def add_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        return await self._change_friendships(pairs, added=True)

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        return await self._change_friendships(pairs, added=False)

    async def _change_friendships(
        self, pairs: Iterable[Friendship], added: bool
    ) -> GraphChanges:
        todo = [(a, b) for a, b in pairs if a != b]
        if not todo:
            return GraphChanges()
        # Refused rather than queued while Redis is away: a queued change could
        # silently conflict with one made elsewhere meanwhile, and the caller
        # (the admin API) can tell its client to retry (503).
        if not self._io_ok:
            raise StoreUnavailable("Redis unavailable: friendships not changed")
        try:
            changed, epoch = await self._io(self._friends_sync, todo, added)
        except REDIS_ERRORS as e:
            self._failed("friends", e)
            raise StoreUnavailable(
                f"Redis unavailable: friendships may not have been changed ({e})") from e
        self._succeeded()
        self._check_epoch(epoch)
        result = GraphChanges()
        for i in changed:
            a, b = ordered_pair(*todo[i])
            event = FriendshipChanged(a, b, added)
            self._apply_friendship(event)
            result.changed.append((a, b))
            result.events.append(event)
        return result

    def _friends_sync(self, pairs: list[Friendship], added: bool) -> tuple[list[int], str]:
        base: list[Any] = [self.keys.prefix, self.instance_id, _new_epoch(),
                           "+" if added else "-"]
        calls = []
        for start in range(0, len(pairs), PAIRS_PER_SCRIPT):
            args = list(base)
            for a, b in pairs[start : start + PAIRS_PER_SCRIPT]:
                args += (a, b)
            calls.append(args)
        results = self._eval_many(SCRIPTS["friends"], calls)
        changed = [
            n * PAIRS_PER_SCRIPT + int(i) - 1 for n, r in enumerate(results) for i in r[1]
        ]
        return changed, results[-1][0].decode()

    # ---------------------------------------------------------------- presence

    async def get_presence(self, address: str) -> Presence | None:
        await self.flush()
        try:
            blob = await self._io(self._redis.hget, self.keys.state, address)
        except REDIS_ERRORS as e:
            self._failed("read", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        return None if blob is None else decode_presence(address, blob)

    async def online_snapshot(self) -> Records:
        await self.flush()
        return (await self._read_snapshot([])).records

    async def claim_expired(self, now_ms: int, ttl_ms: int) -> list[str]:
        if not self._io_ok:
            raise StoreUnavailable("Redis unavailable")
        if self._buffering:
            # A resync is loading a snapshot: claims wait for the next sweep,
            # so that none lands between the snapshot and its application.
            return []
        # Our own refreshes first: never claim a user we just heard from.
        await self.flush()
        try:
            claimed, epoch = await self._io(self._claim_sync, now_ms, ttl_ms)
        except REDIS_ERRORS as e:
            self._failed("claim", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        self._check_epoch(epoch)
        self._expired_here(claimed)
        return [a for _, addresses in claimed for a in addresses]

    def _claim_sync(
        self, now_ms: int, ttl_ms: int
    ) -> tuple[list[tuple[int, list[str]]], str]:
        margin = max(ttl_ms, self._hold_ms)
        args = [self.keys.prefix, self.instance_id, _new_epoch(), now_ms, ttl_ms,
                margin, self.dead_after_ms, self.gc_after_ms, CLAIM_LIMIT]
        claimed: list[tuple[int, list[str]]] = []
        while True:
            epoch, got, candidates, seq = self._eval_many(SCRIPTS["claim"], [args])[0]
            if got:
                claimed.append((int(seq), [a.decode() for a in got]))
            if int(candidates) < CLAIM_LIMIT or not got:
                return claimed, epoch.decode()

    def _expired_here(self, published: list[tuple[int, list[str]]]) -> None:
        """Remember users this instance took offline, by message number.

        A resync whose snapshot was read before that message must not bring
        them back: they are expired again right after it (see `_resync`).
        """
        self._expiries.extend(published)


__all__ = ["RedisStore"]
