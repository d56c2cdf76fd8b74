"""The friends database as a source: load at start, then follow events and reconcile.

`FriendsDatabase.run` subscribes to the social service's events (if
configured), loads every active friendship and block in one snapshot,
applies them to the store in bulk, and reports started. From then on it
keeps the store current from three inputs, all decided by one
`Reconciler` (pure, presenced/graph/reconcile.py) and applied in the order
decided, by one task, through the same idempotent operations as
`presenced friends add/remove`:

- events from `friendship.updates` / `block.updates`, as they come;
- an incremental pass every `reconcile_interval_s` (rows changed since the
  last pass, minus an overlap, and every pair events touched);
- a full comparison every `full_interval_s`.

Database calls run in a worker thread (`trio.to_thread`), one at a time.
If the database goes away, the daemon keeps serving what it has; the
source reports itself unhealthy (log, readiness detail, metric), retries
with backoff and catches up with the next pass once it answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice
from typing import Protocol

import trio

from presenced.graph.config import SourceConfig, SourceUnavailable
from presenced.graph.events_listener import EventsListener, social_redis
from presenced.graph.postgres import DB_ERRORS, Database
from presenced.graph.reconcile import Change, Kind, PassKind, Reconciler
from presenced.graph.social_events import Wanted
from presenced.store.base import Block, Friendship, StoreUnavailable

log = logging.getLogger("presenced.graph")

# Changes handed to the store per call: bounds one Redis script call, and
# lets other tasks run between batches of a large catch-up.
APPLY_BATCH = 1000
# Friendships per bulk-load call at start.
LOAD_CHUNK = 10_000


class GraphApplier(Protocol):
    """Where the source applies what it decides (the hub)."""

    async def load_friendships(self, pairs: Iterable[Friendship]) -> None: ...

    async def load_blocks(self, pairs: Iterable[Block]) -> None: ...

    async def add_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]: ...

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]: ...

    async def add_blocks(self, pairs: Iterable[Block]) -> list[Block]: ...

    async def remove_blocks(self, pairs: Iterable[Block]) -> list[Block]: ...


@dataclass(slots=True)
class SourceStats:
    """Counters for the metrics layer (plain values, read on the trio thread)."""

    # Passes that completed, by kind (incremental, full, blocks), and the
    # duration of the last one of each kind (seconds, read and decide).
    passes: Counter[str] = field(default_factory=Counter)
    pass_seconds: dict[str, float] = field(default_factory=dict)
    # Database calls that failed, and times the source became unhealthy.
    errors: int = 0
    outages: int = 0
    # Changes the store applied, by (origin, kind, "add"/"remove").
    applied: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # Changes decided but refused by the store (applied again later).
    apply_failures: int = 0
    # Changes the store already had (another instance applied them first).
    already: int = 0
    # The initial load: seconds, friendships and blocks.
    load_seconds: float = 0.0
    loaded_friendships: int = 0
    loaded_blocks: int = 0
    events_subscribed: int = 0


class FriendsDatabase:
    def __init__(self, config: SourceConfig, *, database: Database | None = None) -> None:
        self.config = config
        self.database = database or Database(config.database)
        self.reconciler = Reconciler(timedelta(seconds=config.overlap_s))
        self.stats = SourceStats()
        self.listener: EventsListener | None = None
        self._applier: GraphApplier | None = None
        self._healthy = True
        self._events_ok = config.events_url is None
        self._outage_since: float | None = None
        self._outage_reason: str | None = None
        self._started = False
        # Events that arrive before the initial load is applied.
        self._early: list[Wanted] | None = []
        # Decided changes waiting for the store, in order.
        self._queue: deque[Change] = deque()
        self._queued = 0
        self._done = 0
        self._work = trio.Event()
        self._progress = trio.Event()
        self._wake = trio.Event()
        self._pass_lock = trio.Lock()
        self._backoff = 0.0
        self._last_full = 0.0

    # ------------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        """False while the database cannot be read (the instance serves what it has)."""
        return self._healthy

    @property
    def events_connected(self) -> bool:
        return self._events_ok

    def degraded_reasons(self) -> list[str]:
        reasons = []
        if not self._healthy:
            since = ""
            if self._outage_since is not None:
                since = f" for {time.monotonic() - self._outage_since:.0f} s"
            reasons.append(f"friends database unavailable{since}: {self._outage_reason}")
        if not self._events_ok:
            reasons.append("social service events disconnected")
        return reasons

    # ---------------------------------------------- as the store's friends source

    @property
    def name(self) -> str:
        return f"friends database {self.database.description}"

    async def batches(self) -> AsyncIterator[Sequence[Friendship]]:
        """What was applied, to rebuild a store that lost its data (Redis
        restarted empty): the database as last read, not read again."""
        ids = self.reconciler.ids
        for chunk in _chunks((ids.pair(k) for k in self.reconciler.friendships.keys()),
                             LOAD_CHUNK):
            yield chunk
            await trio.lowlevel.checkpoint()

    async def block_batches(self) -> AsyncIterator[Sequence[Block]]:
        ids = self.reconciler.ids
        blocks = [ids.block(k) for k in self.reconciler.blocks.present]
        for start in range(0, len(blocks), LOAD_CHUNK):
            yield blocks[start:start + LOAD_CHUNK]

    @property
    def friendship_count(self) -> int:
        return len(self.reconciler.friendships)

    @property
    def block_count(self) -> int:
        return len(self.reconciler.blocks)

    def _failed(self, what: str, e: BaseException) -> None:
        self.stats.errors += 1
        reason = f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
        self._backoff = min(self.config.backoff_max_s,
                            max(self.config.backoff_min_s, self._backoff * 2))
        if self._healthy:
            self._healthy = False
            self.stats.outages += 1
            self._outage_since = time.monotonic()
            self._outage_reason = reason
            log.warning("friends database %s unavailable (%s): serving the friendships in "
                        "memory, retrying", self.database.description, reason)

    def _succeeded(self) -> None:
        self._backoff = 0.0
        if not self._healthy:
            down = time.monotonic() - (self._outage_since or time.monotonic())
            log.info("friends database %s available again after %.1f s",
                     self.database.description, down)
            self._healthy = True
            self._outage_since = None
            self._outage_reason = None

    # --------------------------------------------------------------- lifecycle

    async def run(
        self, applier: GraphApplier, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load, report started, then keep the store current until cancelled.

        Raises SourceUnavailable if the database (or the events' Redis)
        cannot be reached at start.
        """
        self._applier = applier
        try:
            async with trio.open_nursery() as nursery:
                if self.config.events_url is not None:
                    await self._subscribe(nursery)
                await self._load()
                nursery.start_soon(self._apply_loop)
                early, self._early = self._early or [], None
                self._on_events(early)
                self._started = True
                task_status.started()
                nursery.start_soon(self._reconcile_loop)
        finally:
            if self.listener is not None:
                self.listener.stop()
            with trio.CancelScope(shield=True):
                if self.listener is not None:
                    await trio.to_thread.run_sync(self.listener.join, 2.0)
                await trio.to_thread.run_sync(self.database.close)

    async def _subscribe(self, nursery: trio.Nursery) -> None:
        url = self.config.events_url
        assert url is not None
        subscribed = trio.Event()

        def on_subscribed() -> None:
            self.stats.events_subscribed += 1
            if not self._events_ok:
                log.info("subscribed to the social service's events")
            self._events_ok = True
            subscribed.set()
            if self._started:
                # Events published while we were away are lost: look.
                self.request_pass()

        def on_lost(reason: str) -> None:
            if self._events_ok:
                log.warning("lost the social service's events (%s); reconnecting, and "
                            "reconciling when back", reason)
            self._events_ok = False

        client = social_redis(url, self.config.events_timeout_s)
        self.listener = EventsListener(
            client, trio.lowlevel.current_trio_token(), on_batch=self._on_events,
            on_subscribed=on_subscribed, on_lost=on_lost,
        )
        self.listener.start()
        with trio.move_on_after(self.config.events_timeout_s + 1):
            await subscribed.wait()
        if not subscribed.is_set():
            raise SourceUnavailable(f"cannot subscribe to the social service's events at "
                                    f"{_safe_redis_url(url)}")

    async def _load(self) -> None:
        started = time.perf_counter()
        rec = self.reconciler
        try:
            result = await trio.to_thread.run_sync(
                self.database.read_full, rec.ids, None, abandon_on_cancel=True)
        except DB_ERRORS as e:
            raise SourceUnavailable(
                f"cannot read the friends database {self.database.description}: "
                f"{_first_line(e)}") from None
        assert result.friendships is not None
        rec.loaded(result.watermark, result.friendships, result.blocks)
        applier = self._applier
        assert applier is not None
        ids = rec.ids
        for chunk in _chunks((ids.pair(k) for k in rec.friendships.keys()), LOAD_CHUNK):
            await applier.load_friendships(chunk)
        await applier.load_blocks([ids.block(k) for k in rec.blocks.present])
        self._last_full = trio.current_time()
        self.stats.load_seconds = time.perf_counter() - started
        self.stats.loaded_friendships = len(rec.friendships)
        self.stats.loaded_blocks = len(rec.blocks)
        log.info("loaded %d friendships and %d blocks from %s in %.2f s",
                 len(rec.friendships), len(rec.blocks), self.database.description,
                 self.stats.load_seconds)

    # ------------------------------------------------------------------ events

    def _on_events(self, batch: list[Wanted]) -> None:
        if self._early is not None:
            self._early.extend(batch)
            return
        rec = self.reconciler
        for wanted in batch:
            change = rec.on_event(wanted)
            if change is not None:
                self._enqueue(change)

    # ------------------------------------------------------------------ passes

    def request_pass(self) -> None:
        """Run an incremental pass soon (events were lost)."""
        self._wake.set()

    async def reconcile_now(self, kind: PassKind | None = None) -> bool:
        """Run one pass now and wait until its changes are applied; False if it failed."""
        async with self._pass_lock:
            return await self._one_pass(kind)

    async def _reconcile_loop(self) -> None:
        config = self.config
        delay = config.reconcile_interval_s
        while True:
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            async with self._pass_lock:
                ok = await self._one_pass(None)
            rec = self.reconciler
            if not ok:
                delay = self._backoff
            elif rec.full_needed or rec.blocks_needed:
                delay = 0
            else:
                delay = config.reconcile_interval_s

    async def _one_pass(self, kind: PassKind | None) -> bool:
        rec = self.reconciler
        if kind is None:
            due = trio.current_time() - self._last_full >= self.config.full_interval_s
            kind = rec.next_kind(due)
        plan = rec.plan(kind)
        started = time.perf_counter()
        database = self.database
        try:
            if kind is PassKind.INCREMENTAL:
                read = await trio.to_thread.run_sync(
                    database.read_changes, plan, abandon_on_cancel=True)
                changes = rec.finish_incremental(plan, read)
            else:
                full = await trio.to_thread.run_sync(
                    lambda: database.read_full(rec.ids, rec.friendships.base,
                                               friendships=kind is PassKind.FULL),
                    abandon_on_cancel=True)
                changes = rec.finish_full(plan, full)
        except Exception as e:
            if not isinstance(e, DB_ERRORS):
                log.exception("%s pass failed", kind.value)
            self._failed(f"{kind.value} pass", e)
            return False
        self._succeeded()
        if kind is PassKind.FULL:
            self._last_full = trio.current_time()
        elapsed = time.perf_counter() - started
        self.stats.passes[kind.value] += 1
        self.stats.pass_seconds[kind.value] = elapsed
        if changes:
            log.info("%s pass: %d changes from the friends database", kind.value, len(changes))
        else:
            log.debug("%s pass in %.3f s: no change", kind.value, elapsed)
        for change in changes:
            self._enqueue(change)
        await self._drained()
        return True

    # ---------------------------------------------------------------- applying

    def _enqueue(self, change: Change) -> None:
        self._queue.append(change)
        self._queued += 1
        self._work.set()

    async def _drained(self) -> None:
        target = self._queued
        while self._done < target:
            await self._progress.wait()

    async def _apply_loop(self) -> None:
        queue = self._queue
        while True:
            await self._work.wait()
            self._work = trio.Event()
            while queue:
                first = queue[0]
                batch: list[Change] = []
                while (queue and len(batch) < APPLY_BATCH and queue[0].kind is first.kind
                       and queue[0].active is first.active):
                    batch.append(queue.popleft())
                await self._apply(batch)
                self._done += len(batch)
                self._progress.set()
                self._progress = trio.Event()

    async def _apply(self, batch: list[Change]) -> None:
        applier = self._applier
        assert applier is not None
        first = batch[0]
        pairs = [c.pair for c in batch]
        try:
            if first.kind is Kind.FRIENDSHIP:
                if first.active:
                    done = await applier.add_friendships(pairs)
                else:
                    done = await applier.remove_friendships(pairs)
            elif first.active:
                done = await applier.add_blocks(pairs)
            else:
                done = await applier.remove_blocks(pairs)
        except Exception as e:
            # Verified and applied again by the next pass.
            self.stats.apply_failures += len(batch)
            self.reconciler.failed(batch)
            if isinstance(e, StoreUnavailable):
                log.warning("store unavailable: %d %s changes from the friends database wait "
                            "for the next pass (%s)", len(batch), first.kind.value, e)
            else:
                log.exception("applying %d %s changes failed; retrying with the next pass",
                              len(batch), first.kind.value)
            return
        op = "add" if first.active else "remove"
        # A shared store says what this call changed: with several instances
        # applying the same change, only the first one does.
        changed = set(done)
        for change in batch:
            if change.pair in changed:
                self.stats.applied[(change.origin, change.kind.value, op)] += 1
            else:
                self.stats.already += 1


def _chunks(items: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    while True:
        chunk = list(islice(items, size))
        if not chunk:
            return
        yield chunk


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _safe_redis_url(url: str) -> str:
    head, at, tail = url.rpartition("@")
    scheme = url.split("://", 1)[0] if "://" in url else "redis"
    return f"{scheme}://…@{tail}" if at else url
