"""The Redis store: many presenced instances sharing one Redis.

Design and key layout: docs/redis.md. In short, each instance keeps its own
users in memory (the engine), writes them to Redis in batches, and follows
a single change channel that carries every instance's changes, one binary
message per flush. Redis is never on the path of a heartbeat response.

This module only does I/O: worker threads, pipelines and scripts, the
listener thread (`redis_bridge`). What to make of what it hears is decided
by pure parts it feeds: the change feed's state (`redis_feed.FeedTracker`),
the cached friend sets (`friend_cache.FriendCache`) and the store's health
(`redis_health.HealthMachine`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any, TypeVar

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from presenced.model import Presence, PresenceLeave, PresenceOp, PresenceWrite
from presenced.store.base import (
    Block,
    BlockChanged,
    BlockLists,
    EventSink,
    Expired,
    Friendship,
    FriendshipChanged,
    FriendsSource,
    GraphChanges,
    StatusSink,
    StoreEvent,
    StoreStats,
    StoreUnavailable,
    ordered_pair,
)
from presenced.store.friend_cache import FriendCache
from presenced.store.redis_bridge import Listener
from presenced.store.redis_codec import Message, decode_presence, encode_presence, entry, header
from presenced.store.redis_config import RedisStoreConfig
from presenced.store.redis_direct import DirectConnection
from presenced.store.redis_feed import AuditStep, FeedTracker, Records, Snapshot
from presenced.store.redis_health import Health, HealthMachine, persistence_problem
from presenced.store.redis_scripts import SCRIPTS, Keys, Script
from presenced.supervise import run_forever

log = logging.getLogger("presenced.store.redis")

T = TypeVar("T")

# What a failed Redis call can raise (OSError: a socket error redis-py did
# not wrap, e.g. while closing).
REDIS_ERRORS = (redis.RedisError, OSError)
# Login claims waiting for Redis (about 100 bytes each); past this, half are dropped.
MAX_PENDING_LOGIN_CLAIMS = 100_000

# Presence ops per script call: bounds how long one call holds Redis (a few
# ms) and the size of one change message (~65 KB). At most 4000: the script
# unpacks two values per op into one command, and Lua's limit is 8000.
OPS_PER_SCRIPT = 1000
PAIRS_PER_SCRIPT = 1000
# Friendships per pipeline of a bulk load (20 script calls): one call to
# Redis stays well within the socket timeout.
PAIRS_PER_LOAD = 20 * PAIRS_PER_SCRIPT
# Users one claim call may look at; the claim loops while there are more.
CLAIM_LIMIT = 2000
# Seconds between attempts to rebuild friendships from a failing source.
SOURCE_RETRY_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class FlushReply:
    """What the flush scripts of one batch answered (redis_scripts.FLUSH)."""

    epoch: str
    # (message number, users) we made offline whose dead owners' entries we removed.
    orphaned: list[tuple[int, list[str]]]
    seq: int
    # Transitions this batch caused, when asked for (--publish-social-status).
    online: list[str]
    offline: list[str]
    # Someone besides our own listener follows the change channel.
    others_listening: bool


def _new_epoch() -> str:
    # Fresh for every call that may create the epoch: an instance that
    # re-created it with the same value after a Redis restart would not
    # notice that Redis had lost its data.
    return secrets.token_hex(6)


class RedisStore:
    """The shared store (see the module docstring and docs/redis.md).

    `health` (a `Health`) and `healthy` are for the readiness check, `stats`
    (a `StoreStats`) for the metrics layer; read them from the trio thread.
    """

    def __init__(
        self,
        url: str,
        config: RedisStoreConfig | None = None,
        *,
        instance_id: str | None = None,
        prefix: str = "{presenced}",
    ) -> None:
        config = self.config = config or RedisStoreConfig()
        self.instance_id = instance_id or secrets.token_hex(6)
        self.url = url
        self.keys = Keys(prefix)
        self._ttl_ms = config.ttl_ms
        self._grace_ms = config.offline_grace_ms
        self._timeout = config.socket_timeout_s
        self._flush_interval = config.flush_interval_s
        self._flush_min_gap = config.flush_min_gap_s
        # Set by `write` when a change others must hear of waits: the flusher then writes
        # without waiting for its interval (see RedisStoreConfig.flush_min_gap_s).
        self._change_waiting = trio.Event()
        # Whether another instance listened at our last flush (its script counts the change
        # channel's subscribers). When none does, nobody waits for our changes: they join
        # the refreshes, written every flush interval, instead of one small flush each.
        # A new listener is seen at our next flush, which publishes to it already.
        self._others_listening = True
        # Set when something is queued for Redis while nothing was: an idle flusher sleeps
        # on it (and the beacon) instead of waking every flush interval to find nothing.
        self._work_queued = trio.Event()
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
        # The flusher's own connection, driven from the trio thread (no thread hop per
        # flush); None for TLS or Unix-socket URLs, whose flushes stay on redis-py.
        self._direct = (DirectConnection.for_pool(self._pool, self._timeout)
                        if config.direct_flush else None)
        self._limiter = trio.CapacityLimiter(config.pool_size)

        self._stats = StoreStats(shared=True)
        self._friends = FriendCache()
        self._feed = FeedTracker(self.instance_id, self._friends, self._stats)
        self._health = HealthMachine(self._safe_url(), self._stats,
                                     backoff_min_s=config.backoff_min_s,
                                     backoff_max_s=config.backoff_max_s)
        self._source: FriendsSource | None = None
        # Told of the online/offline transitions this instance's flushes and
        # claims cause (each happens in exactly one script run cluster-wide).
        self.on_status: StatusSink | None = None

        self._sink: EventSink | None = None
        self._listener: Listener | None = None
        # Lifecycle of the I/O: loaded (the hub may take connections), closed.
        self._started = False
        self._closed = False
        self._synced = trio.Event()
        # Set to run the resync loop / the rebuild from the friends source.
        self._wake = trio.Event()
        self._rebuild = trio.Event()

        # Writes waiting for the next flush, one per user, and everything this
        # instance vouches for (to put back into a Redis that lost it).
        self._batch: dict[str, PresenceOp] = {}
        self._own: dict[str, Presence] = {}
        # Login frames this instance accepted, to claim in Redis at the next flush.
        self._login_claims: list[tuple[bytes, int, Callable[[], None]]] = []
        self._flush_lock = trio.Lock()

    # ------------------------------------------------------------------ health

    @property
    def health(self) -> Health:
        return self._health.state

    @property
    def healthy(self) -> bool:
        return self._health.state is Health.HEALTHY

    @property
    def others_listening(self) -> bool:
        """Another instance followed the change channel at our last flush."""
        return self._others_listening

    @property
    def stats(self) -> StoreStats:
        self._stats.pending_writes = len(self._batch)
        return self._stats

    def _failed(self, kind: str, exc: BaseException | str) -> None:
        """A Redis call failed (or, for `listener`, the change feed dropped)."""
        self._stats.errors[kind] += 1
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        reason = f"{kind}: {detail}"
        if kind == "listener":
            self._health.feed_lost(reason)
        else:
            self._health.call_failed(reason)

    def _succeeded(self) -> None:
        if self._health.call_succeeded():
            self._feed.request_resync("Redis reachable again", "recovered")
            self._wake.set()

    def _script_replied(self, epoch: str, seq: int = 0) -> None:
        self._feed.script_replied(epoch, seq)
        if self._feed.resync is not None:
            self._wake.set()

    def _safe_url(self) -> str:
        # Never log a password.
        head, at, tail = self.url.rpartition("@")
        return f"redis://…@{tail}" if at else self.url

    # --------------------------------------------------------------- lifecycle

    async def run(
        self, sink: EventSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._sink = sink
        config = self.config
        self._listener = Listener(
            self._sub_redis, (self.keys.channel, self.keys.listening(self.instance_id)),
            self.instance_id,
            trio.lowlevel.current_trio_token(),
            on_batch=self._on_batch, on_subscribed=self._on_subscribed, on_lost=self._on_lost,
            backoff_min_s=config.backoff_min_s, backoff_max_s=config.backoff_max_s,
        )
        self._listener.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, "resync", self._resync_loop)
                nursery.start_soon(self._guarded, "flusher", self._flusher)
                # Subscribed, then a full picture: only then may the hub take
                # connections (it opens its listener after `started`).
                await self._synced.wait()
                await self._check_persistence()
                self._started = True
                self._health.started()
                nursery.start_soon(self._guarded, "auditor", self._auditor)
                nursery.start_soon(self._guarded, "rebuilder", self._rebuilder)
                task_status.started()
        finally:
            self._listener.stop()

    async def _guarded(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        # A bug in a pass of one of the store's loops must not end the store, and with it the
        # daemon: logged, counted as `internal`, and the loop runs again.
        await run_forever(f"redis-{name}", loop, on_failure=self._loop_failed, log=log)

    def _loop_failed(self, name: str) -> None:
        self._stats.errors["internal"] += 1

    async def aclose(self, *, leave: bool = True) -> None:
        """Flush, hand our users to the sweep, stop the listener, close sockets.

        With `leave=False` nothing is written: the cluster sees this instance
        vanish as if it had crashed (for tests and for emergencies).
        """
        if self._closed:
            return
        leave = leave and self._started and self._health.calls_ok
        self._closed = True
        self._health.closed()
        self._queued_work()  # an idle flusher wakes and sees the store closed
        listener = self._listener
        if listener is not None:
            listener.stop()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._timeout):
                if leave:
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
        if self._direct is not None:
            self._direct.close()
        self._redis.close()
        self._pool.disconnect()
        self._sub_pool.disconnect()

    @property
    def listening(self) -> bool:
        """The listener thread is alive (it ends within a poll after aclose)."""
        return self._listener is not None and self._listener.alive

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        # Redis calls run in threads of their own limiter (the default one is
        # shared with everything else). Abandoning on cancel is safe: every
        # socket has a timeout, so the thread ends soon after.
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    async def _check_persistence(self) -> None:
        """Warn when this Redis keeps nothing on disk (friendships live here)."""
        try:
            save, appendonly = await self._io(self._persistence_sync)
        except redis.ResponseError as e:
            # CONFIG is often disabled or renamed on managed Redis.
            log.info("cannot tell whether Redis keeps its data on disk (CONFIG GET: %s)", e)
            return
        except REDIS_ERRORS as e:
            log.debug("cannot tell whether Redis keeps its data on disk: %s", e)
            return
        source = self._source.name if self._source is not None else None
        problem = persistence_problem(save, appendonly, source)
        if problem is not None:
            log.warning("%s (Redis at %s)", problem, self._safe_url())

    def _persistence_sync(self) -> tuple[str | None, str | None]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command("CONFIG", "GET", "save")
        pipe.execute_command("CONFIG", "GET", "appendonly")

        def value(reply: Any) -> str | None:
            # [name, value], or a dict from redis-py's CONFIG GET parser.
            if isinstance(reply, dict):
                reply = [x for kv in reply.items() for x in kv]
            if not reply or len(reply) < 2:
                return None
            v = reply[1]
            return v.decode() if isinstance(v, bytes) else str(v)

        save, appendonly = pipe.execute()
        return value(save), value(appendonly)

    # ----------------------------------------------------------------- writes

    def write(self, op: PresenceOp) -> None:
        if self._closed:
            return
        batch = self._batch
        if not batch:
            self._queued_work()
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
                return
            batch[address] = op
        else:
            address = op.address
            self._own.pop(address, None)
            self._friends.drop(address)
            batch[address] = op
        change_waiting = self._change_waiting
        if self._others_listening and not change_waiting.is_set():
            change_waiting.set()

    # ----------------------------------------------------------- login claims

    def claim_login(self, key: bytes, expires_ms: int, on_refused: Callable[[], None]) -> None:
        claims = self._login_claims
        if len(claims) >= MAX_PENDING_LOGIN_CLAIMS:
            # Redis has been away for a while: the oldest claims go unchecked (each is still
            # single-use on the instance that accepted it).
            del claims[: len(claims) // 2]
            self._stats.errors["login-claim-dropped"] += 1
        claims.append((key, expires_ms, on_refused))
        self._queued_work()
        change_waiting = self._change_waiting
        if not change_waiting.is_set():
            change_waiting.set()

    def _queued_work(self) -> None:
        work_queued = self._work_queued
        if not work_queued.is_set():
            work_queued.set()

    async def _claim_logins(self) -> None:
        claims = self._login_claims
        self._login_claims = []
        try:
            refused = await self._io(self._claim_logins_sync, [(k, e) for k, e, _ in claims])
        except REDIS_ERRORS as e:
            # Kept for the next flush; a claim whose frame has expired is dropped then.
            self._login_claims[:0] = claims
            self._failed("login-claim", e)
            return
        for index in refused:
            try:
                claims[index][2]()
            except Exception:
                log.exception("closing a replayed login failed")

    def _claim_logins_sync(self, claims: list[tuple[bytes, int]]) -> list[int]:
        """SET NX each live claim; return the indices of those another instance holds."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        sent: list[int] = []
        for index, (key, expires_ms) in enumerate(claims):
            if expires_ms > now_ms:
                pipe.set(self.keys.login(key), self.instance_id, nx=True, px=expires_ms - now_ms)
                sent.append(index)
        if not sent:
            return []
        replies = pipe.execute()
        return [index for index, ok in zip(sent, replies, strict=True) if not ok]

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
                reply = await self._flush_ops(list(ops.values()))
            except REDIS_ERRORS as e:
                self._requeue(ops)
                self._failed("flush", e)
                raise StoreUnavailable(f"Redis unavailable: {e}") from e
            except Exception as e:
                # A bug, not Redis: retrying the same batch would fail forever.
                self._stats.errors["internal"] += 1
                log.exception("dropping a batch of %d presence writes", len(ops))
                raise StoreUnavailable(f"internal error: {e}") from e
            except BaseException:
                # Cancelled (shutting down): keep the batch for aclose().
                self._requeue(ops)
                raise
            if ops:
                stats = self._stats
                stats.flushes += 1
                stats.writes_flushed += len(ops)
                stats.flush_latency.observe(time.perf_counter() - started)
            self._succeeded()
            self._script_replied(reply.epoch, reply.seq)
            self._others_listening = reply.others_listening
            if reply.orphaned:
                # We made these users offline cluster-wide and removed entries
                # of dead instances that our own engine may still count as
                # owners: tell it, as other instances are told by the 'G'.
                self._feed.expired_here(reply.orphaned)
                self._emit([Expired(a) for _, addresses in reply.orphaned for a in addresses])
            self._report_status(reply.online, True)
            self._report_status(reply.offline, False)

    async def _flush_ops(self, ops: list[PresenceOp]) -> FlushReply:
        calls = self._flush_calls(ops)
        direct = self._direct
        if direct is None:
            results = await self._io(self._eval_many, SCRIPTS["flush"], calls)
        else:
            results = await self._eval_direct(direct, SCRIPTS["flush"], calls)
        return self._flush_results(results)

    def _flush_calls(self, ops: list[PresenceOp]) -> list[list[Any]]:
        base: list[Any] = [self.keys.prefix, self.instance_id, _new_epoch(),
                           self.dead_after_ms, b"1" if self.on_status is not None else b"0"]
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
        return calls

    @staticmethod
    def _flush_results(results: list[Any]) -> FlushReply:
        return FlushReply(
            epoch=results[-1][0].decode(),
            orphaned=[(int(r[2]), [a.decode() for a in r[1]]) for r in results if r[1]],
            seq=max(int(r[2]) for r in results),
            online=[a.decode() for r in results for a in r[3]],
            offline=[a.decode() for r in results for a in r[4]],
            others_listening=int(results[-1][5]) > 0,
        )

    def _report_status(self, addresses: list[str], online: bool) -> None:
        on_status = self.on_status
        if on_status is None:
            return
        for address in addresses:
            try:
                on_status(address, online)
            except Exception:
                log.exception("reporting a presence transition failed")

    def _eval_many(self, script: Script, calls: list[list[Any]]) -> list[Any]:
        """Run `script` once per argument list, in one pipeline.

        A new or restarted Redis has no scripts: the calls it refused (NOSCRIPT)
        run again once every script is loaded, and only those. Others of the
        same pipeline may have run, because another connection can load the
        scripts between two of its commands; running them twice would publish
        their changes twice and hide what they changed.
        """
        results = self._pipeline(script, calls)
        refused = _refused(results)
        if refused:
            self._load_scripts()
            _put_back(results, refused, self._pipeline(script, [calls[i] for i in refused]))
        return _checked(results)

    def _load_scripts(self) -> None:
        for s in SCRIPTS.values():
            self._redis.script_load(s.source)

    async def _eval_direct(
        self, direct: DirectConnection, script: Script, calls: list[list[Any]]
    ) -> list[Any]:
        """`_eval_many` on the flusher's direct connection (same NOSCRIPT rule)."""
        commands = [self._script_call(script, args) for args in calls]
        results = await direct.pipeline(commands)
        refused = _refused(results)
        if refused:
            await self._io(self._load_scripts)
            _put_back(results, refused, await direct.pipeline([commands[i] for i in refused]))
        return _checked(results)

    def _script_call(self, script: Script, args: list[Any]) -> tuple[Any, ...]:
        # One declared key, so that anything routing by key (a cluster proxy) sends the
        # script to the slot all our keys share.
        return ("EVALSHA", script.sha, 1, self.keys.seen, *args)

    def _pipeline(self, script: Script, calls: list[list[Any]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for args in calls:
            pipe.execute_command(*self._script_call(script, args))
        return pipe.execute(raise_on_error=False)

    async def _flusher(self) -> None:
        health = self._health
        next_beacon = 0.0
        last_flush = -float("inf")
        while not self._closed:
            if health.calls_ok:
                # Nothing queued: sleep until something is, or the beacon is due (with
                # nobody connected, the flusher wakes only for the beacon).
                if not self._batch and not self._login_claims:
                    with trio.move_on_after(max(0.0, next_beacon - trio.current_time())):
                        await self._work_queued.wait()
                self._work_queued = trio.Event()
                # A change is written at once, or `flush_min_gap` after the previous flush
                # (changes arriving meanwhile join it); refreshes wait for the interval, and
                # so do changes while no other instance listens (`write` sees to that).
                # The beacon is due however long the interval: an instance silent for
                # `dead_after_ms` no longer counts as alive.
                wait = min(self._flush_interval, next_beacon - trio.current_time())
                with trio.move_on_after(max(0.0, wait)):
                    await self._change_waiting.wait()
                gap = last_flush + self._flush_min_gap - trio.current_time()
                if gap > 0:
                    await trio.sleep(gap)
            else:
                await trio.sleep(health.retry_delay)
            if self._closed:
                # aclose() writes what is left.
                return
            self._change_waiting = trio.Event()
            now = last_flush = trio.current_time()
            beacon = now >= next_beacon or not health.calls_ok
            if self._batch or beacon:
                try:
                    await self._flush_now(beacon=True)
                except StoreUnavailable:
                    pass
                else:
                    next_beacon = now + self._beacon_s
            # After the presence changes, which others are waiting for.
            if self._login_claims:
                await self._claim_logins()

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
        self._feed.feed_subscribed()
        self._health.feed_subscribed()
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        self._feed.feed_lost()
        self._failed("listener", reason)

    def _on_batch(self, messages: list[Message]) -> None:
        if self._closed:
            return
        self._stats.messages_received += len(messages)
        feed = self._feed
        try:
            events = feed.receive(messages)
        except Exception:
            log.exception("processing %d change messages failed", len(messages))
            feed.request_resync("internal error while applying changes", "error")
            self._wake.set()
            return
        if feed.resync is not None:
            self._wake.set()
        self._emit(events)

    # ------------------------------------------------------------------ resync

    def resync_now(self, reason: str = "requested") -> None:
        """Compare everything with Redis again now (counted as `requested`)."""
        self._feed.request_resync(reason, "requested")
        self._wake.set()

    async def _resync_loop(self) -> None:
        feed = self._feed
        while True:
            while True:
                self._wake = trio.Event()
                if feed.resync_due and not self._closed:
                    break
                await self._wake.wait()
            try:
                await self._resync()
            except StoreUnavailable:
                await trio.sleep(self._health.retry_delay or self.config.backoff_min_s)
            except Exception:
                # A bug must not end the store (and with it the daemon): say
                # so, and try again later.
                self._stats.errors["internal"] += 1
                log.exception("resynchronising with Redis failed")
                await trio.sleep(self.config.backoff_max_s)

    async def _resync(self) -> None:
        feed = self._feed
        ticket = feed.begin_resync()
        started = time.perf_counter()
        lost: str | None = None
        mark = self._friends.begin_fetch()
        try:
            snap = await self._read_snapshot(ticket.cached)
            lost = feed.data_lost(ticket, snap)
            if lost is not None:
                snap = await self._recover_lost_data(lost, ticket.cached)
        finally:
            logged = self._friends.end_fetch(mark)
        events = feed.finish_resync(ticket, snap, logged, data_lost=lost is not None)
        if events is None:
            # The feed dropped meanwhile; it will ask again once back.
            return
        self._stats.last_resync_seconds = time.perf_counter() - started
        self._emit(events)
        self._health.resynced(clean=feed.resync is None)
        if feed.resync is not None:
            self._wake.set()
        reason = ticket.request.reason
        if not self._synced.is_set():
            self._synced.set()
            log.info("loaded from Redis at %s: %d users online, instance %s",
                     self._safe_url(), len(snap.records), self.instance_id)
        elif reason != "start":
            log.info("resynchronised with Redis (%s) in %.3f s: %d users online",
                     reason, self._stats.last_resync_seconds, len(snap.records))

    async def _recover_lost_data(self, lost: str, cached: list[str]) -> Snapshot:
        """Redis lost data: put back what we know, then read it all again.

        Every instance does the same when it notices: each re-writes the users
        it vouches for and the friendships it has in memory (a missing friend
        set means unknown, not empty), so that the picture loaded next is
        whole and nobody's friends see them go offline or unfriended. The
        friends source, if any, is reloaded in the background.
        """
        log.warning("Redis lost its data (%s): putting back %d users and the friendships "
                    "of %d users in memory", lost, len(self._own), len(self._friends))
        await self._rewrite_own()
        reseeded = await self._add_in_bulk("friends", self._friends.pairs(), announce=False)
        if reseeded:
            log.info("put back %d friendships Redis had lost", reseeded)
        if self._source is not None:
            self._rebuild.set()
        else:
            log.warning("no friends source registered: friendships that no instance had in "
                        "memory are lost (see docs/redis.md)")
        # Give the other instances time to do the same.
        await trio.sleep(self.config.backoff_max_s + 3 * self._flush_interval + 0.5)
        return await self._read_snapshot(cached)

    async def _read_snapshot(self, friends_of: list[str]) -> Snapshot:
        try:
            snap = await self._io(self._read_snapshot_sync, friends_of)
        except REDIS_ERRORS as e:
            self._failed("resync", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        return snap

    def _read_snapshot_sync(self, friends_of: list[str]) -> Snapshot:
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
                tx.sdiff(k.friends(address), k.blocking(address), k.blocked_by(address))
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
        return Snapshot(
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
        """Check, cheaply, that no change message was missed (the periodic
        resync's fast path: one MULTI and one message whatever the number of
        users; see FeedTracker.audit)."""
        if not self._health.calls_ok or self._closed:
            return
        token = secrets.token_hex(6)
        step = self._feed.audit(token)
        if step is AuditStep.SKIP:
            return
        if step is AuditStep.RECONNECT:
            log.warning("change feed silent (audit fence lost): reconnecting")
            if self._listener is not None:
                self._listener.reconnect()
            return
        try:
            seqs, epoch = await self._io(self._audit_sync, token)
        except REDIS_ERRORS as e:
            self._feed.audit_failed(token)
            self._failed("audit", e)
            return
        self._succeeded()
        self._feed.audit_replied(token, seqs, epoch)
        if self._feed.resync is not None:
            self._wake.set()

    def _audit_sync(self, token: str) -> tuple[dict[str, int], str]:
        k = self.keys
        tx = self._redis.pipeline(transaction=True)
        tx.hgetall(k.seq)
        tx.get(k.epoch)
        tx.publish(k.channel, header(self.instance_id, self._feed.epoch or "-", 0)
                   + entry(b"Z", token))
        seqs, epoch, _ = tx.execute()
        return ({o.decode(): int(s) for o, s in seqs.items()},
                epoch.decode() if epoch else "")

    # ------------------------------------------------------------- friendships

    def cached_friends(self, address: str) -> frozenset[str] | None:
        cached = self._friends.get(address)
        return None if cached is None else frozenset(cached)

    async def friends_of(self, address: str) -> frozenset[str]:
        cache = self._friends
        cached = cache.get(address)
        if cached is not None:
            return frozenset(cached)
        if not self._health.calls_ok:
            raise StoreUnavailable("Redis unavailable")
        mark = cache.begin_fetch()
        try:
            members = await self._io(self._effective_friends_sync, address)
        except REDIS_ERRORS as e:
            self._failed("read", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        finally:
            logged = cache.end_fetch(mark)
        self._succeeded()
        # Interned: every friend set then shares one string per address.
        friends = {intern(m.decode()) for m in members}
        return frozenset(cache.store(address, friends, logged))

    def _effective_friends_sync(self, address: str) -> set[bytes]:
        k = self.keys
        # Stored friendships less blocks either way, in one command.
        return self._redis.sdiff(k.friends(address), k.blocking(address),
                                 k.blocked_by(address))

    async def add_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        return await self._change_pairs("friends", pairs, added=True)

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> GraphChanges:
        return await self._change_pairs("friends", pairs, added=False)

    async def load_friendships(self, pairs: Iterable[Friendship]) -> int:
        return await self._add_in_bulk("friends", pairs, announce=False)

    def set_friends_source(self, source: FriendsSource | None) -> None:
        self._source = source

    async def _add_in_bulk(
        self, script: str, pairs: Iterable[tuple[str, str]], *, announce: bool
    ) -> int:
        """Add friendships or blocks a pipeline at a time; `announce`: tell our
        own engine about what changed (a rebuild while sessions run; a
        reseed's come from our memory, a start-up load's precede every
        session)."""
        added = 0
        chunk: list[tuple[str, str]] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) >= PAIRS_PER_LOAD:
                changes = await self._change_pairs(script, chunk, True, announce=announce)
                added += len(changes.changed)
                chunk = []
        if chunk:
            changes = await self._change_pairs(script, chunk, True, announce=announce)
            added += len(changes.changed)
        return added

    async def _change_pairs(
        self, script: str, pairs: Iterable[tuple[str, str]], added: bool, *,
        announce: bool = False,
    ) -> GraphChanges:
        """Add or remove friendships (`script` "friends") or blocks ("blocks")."""
        todo = [(a, b) for a, b in pairs if a != b]
        if not todo:
            return GraphChanges()
        what = "friendships" if script == "friends" else "blocks"
        # Refused rather than queued while Redis is away: a queued change could
        # silently conflict with one made elsewhere meanwhile, and the caller
        # (the admin API) can tell its client to retry (503).
        if not self._health.calls_ok:
            raise StoreUnavailable(f"Redis unavailable: {what} not changed")
        try:
            changed, effective, epoch, seq = await self._io(
                self._pairs_sync, script, todo, added)
        except REDIS_ERRORS as e:
            self._failed("friends", e)
            raise StoreUnavailable(
                f"Redis unavailable: {what} may not have been changed ({e})") from e
        self._succeeded()
        self._script_replied(epoch, seq)
        result = GraphChanges()
        flips = set(effective)
        for i in changed:
            a, b = todo[i]
            if script == "friends":
                result.changed.append(ordered_pair(a, b))
                if i in flips:
                    result.events.append(FriendshipChanged(*ordered_pair(a, b), added))
                continue
            result.changed.append((a, b))
            # The same order as the script publishes (and MemoryStore returns).
            edge = FriendshipChanged(*ordered_pair(a, b), not added)
            if added:
                if i in flips:
                    result.events.append(edge)
                result.events.append(BlockChanged(a, b, True))
            else:
                result.events.append(BlockChanged(a, b, False))
                if i in flips:
                    result.events.append(edge)
        for ev in result.events:
            if isinstance(ev, FriendshipChanged):
                self._friends.apply(ev)
        if announce:
            self._emit(result.events)
        return result

    def _pairs_sync(
        self, script: str, pairs: list[tuple[str, str]], added: bool
    ) -> tuple[list[int], list[int], str, int]:
        base: list[Any] = [self.keys.prefix, self.instance_id, _new_epoch(),
                           "+" if added else "-"]
        calls = []
        for start in range(0, len(pairs), PAIRS_PER_SCRIPT):
            args = list(base)
            for a, b in pairs[start : start + PAIRS_PER_SCRIPT]:
                args += (a, b)
            calls.append(args)
        results = self._eval_many(SCRIPTS[script], calls)
        changed = [
            n * PAIRS_PER_SCRIPT + int(i) - 1 for n, r in enumerate(results) for i in r[1]
        ]
        effective = [
            n * PAIRS_PER_SCRIPT + int(i) - 1 for n, r in enumerate(results) for i in r[3]
        ]
        seq = max(int(r[2]) for r in results)
        return changed, effective, results[-1][0].decode(), seq

    # ------------------------------------------------------------------ blocks

    async def add_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        return await self._change_pairs("blocks", pairs, added=True)

    async def remove_blocks(self, pairs: Iterable[Block]) -> GraphChanges:
        return await self._change_pairs("blocks", pairs, added=False)

    async def load_blocks(self, pairs: Iterable[Block]) -> int:
        return await self._add_in_bulk("blocks", pairs, announce=False)

    async def block_status(self, a: str, b: str) -> tuple[bool, bool]:
        k = self.keys

        def read() -> tuple[bool, bool]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.sismember(k.blocking(a), b)
            pipe.sismember(k.blocking(b), a)
            a_blocks, b_blocks = pipe.execute()
            return bool(a_blocks), bool(b_blocks)

        return await self._read(read)

    async def blocks_of(self, address: str) -> BlockLists:
        k = self.keys

        def read() -> BlockLists:
            pipe = self._redis.pipeline(transaction=False)
            pipe.smembers(k.blocking(address))
            pipe.smembers(k.blocked_by(address))
            blocking, blocked_by = pipe.execute()
            return BlockLists(frozenset(intern(m.decode()) for m in blocking),
                              frozenset(intern(m.decode()) for m in blocked_by))

        return await self._read(read)

    async def _read(self, fn: Callable[[], T]) -> T:
        if not self._health.calls_ok:
            raise StoreUnavailable("Redis unavailable")
        try:
            result = await self._io(fn)
        except REDIS_ERRORS as e:
            self._failed("read", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        return result

    async def _rebuilder(self) -> None:
        """Reload the friends source after Redis lost its data."""
        while True:
            await self._rebuild.wait()
            self._rebuild = trio.Event()
            delay = self.config.backoff_max_s
            while self._source is not None and not self._rebuild.is_set():
                source = self._source
                try:
                    added = 0
                    # Blocks first: a friendship under a block must not show.
                    async for blocks in source.block_batches():
                        await self._add_in_bulk("blocks", blocks, announce=True)
                    async for batch in source.batches():
                        added += await self._add_in_bulk("friends", batch, announce=True)
                except StoreUnavailable as e:
                    log.debug("rebuilding friendships from the %s: %s", source.name, e)
                    await trio.sleep(self._health.retry_delay or self.config.backoff_min_s)
                    continue
                except Exception as e:
                    log.warning("cannot rebuild friendships from the %s (%s: %s); retrying "
                                "in %.0f s", source.name, type(e).__name__, e, delay)
                    await trio.sleep(delay)
                    delay = min(SOURCE_RETRY_MAX_S, delay * 2)
                    continue
                log.info("rebuilt friendships from the %s after Redis lost its data: "
                         "%d were missing", source.name, added)
                break

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
        if not self._health.calls_ok:
            raise StoreUnavailable("Redis unavailable")
        if self._feed.buffering:
            # A resync is loading a snapshot: claims wait for the next sweep,
            # so that none lands between the snapshot and its application.
            return []
        # Our own refreshes first: never claim a user we just heard from.
        await self.flush()
        try:
            claimed, epoch, seq = await self._io(self._claim_sync, now_ms, ttl_ms)
        except REDIS_ERRORS as e:
            self._failed("claim", e)
            raise StoreUnavailable(f"Redis unavailable: {e}") from e
        self._succeeded()
        self._script_replied(epoch, seq)
        self._feed.expired_here(claimed)
        expired = [a for _, addresses in claimed for a in addresses]
        self._report_status(expired, False)
        return expired

    def _claim_sync(
        self, now_ms: int, ttl_ms: int
    ) -> tuple[list[tuple[int, list[str]]], str, int]:
        margin = max(ttl_ms, self._hold_ms)
        args = [self.keys.prefix, self.instance_id, _new_epoch(), now_ms, ttl_ms,
                margin, self.dead_after_ms, self.gc_after_ms, CLAIM_LIMIT]
        claimed: list[tuple[int, list[str]]] = []
        last = 0
        while True:
            epoch, got, candidates, seq = self._eval_many(SCRIPTS["claim"], [args])[0]
            last = max(last, int(seq))
            if got:
                claimed.append((int(seq), [a.decode() for a in got]))
            if int(candidates) < CLAIM_LIMIT or not got:
                return claimed, epoch.decode(), last


def _refused(results: list[Any]) -> list[int]:
    """Indices of the script calls Redis refused for not knowing the script (NOSCRIPT)."""
    return [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]


def _put_back(results: list[Any], refused: list[int], again: list[Any]) -> None:
    for i, result in zip(refused, again, strict=True):
        results[i] = result


def _checked(results: list[Any]) -> list[Any]:
    """`results`, or the first error among them raised."""
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


__all__ = ["RedisStore"]
