"""One load-generator process: thousands of virtual users on one trio loop.

The parent starts each worker with its share of the users and talks to it
over two pipes. The worker first derives its users' identities (secp256k1
signing is the expensive part of start-up, so it is spread over the
workers), sends their addresses, and waits for "go". Then:

    parent -> worker: ("go", addresses)  ("load", t)  ("measure", t)  ("stop",)  ("report",)
                      ("exit",)
    worker -> parent: ("ready", id, [(index, address)], seconds)
                      ("stats", id, {...})  every --report-interval
                      ("ramped", id)   every user made its first login attempt
                      ("stopped", id)  every user is still (after "stop")
                      ("measuring", id)  latency samples restarted (after "measure")
                      ("final", id, {...})  final states and views (after "report")
                      ("bye", id)  ("fatal", id, traceback)

Latency is matched here when sender and receiver live in this process;
receipts for senders elsewhere, and this worker's own send times, go to the
parent in flat arrays with the stats.
"""

from __future__ import annotations

import gc
import logging
import math
import resource
import signal
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from presenced.simulate.alarms import Alarms
from presenced.simulate.measure import (
    COORD_MAX,
    COORD_MIN,
    OFFLINE,
    ONLINE,
    SENDER_SHIFT,
    UNKNOWN,
    Counters,
    Histogram,
    Matcher,
    ReceiptBuffer,
    SendLog,
    position_key,
)
from presenced.simulate.plan import SimConfig, connection_slot
from presenced.simulate.user import VirtualUser, classify
from presenced.socialgraph import user_address, user_identity
from presenced.v1 import presence_pb2 as pb

log = logging.getLogger("presenced.simulate")

# Seconds the connections get to close cleanly when the run ends.
CLOSE_TIMEOUT_S = 10.0
# Error details kept per kind for the report.
SAMPLES_PER_KIND = 3
_ONLINE_STATUS = pb.ONLINE
# Objects allocated between young collections, as the daemon sets it. With
# thousands of connections a young collection still pauses this process for
# 30-200 ms whatever the threshold (10,000 gave pauses as long as 50,000 and
# three times the total): rare is best. GcWatch reports them.
GC_THRESHOLD = 50_000


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: int
    config: SimConfig
    # (user index, connection order, subscribes, churns)
    users: tuple[tuple[int, int, bool, bool], ...]
    # Users that never connect: this worker only derives their addresses.
    offline: tuple[int, ...]
    # With several --target URLs: each graph user's target index (-1 for users
    # who never connect), so a receipt knows whether it crossed daemons.
    target_of: bytes = b""


class GcWatch:
    """Time spent in the garbage collector during the load phase: its pauses
    delay every receipt here and would be counted as notify latency, so the
    report shows them."""

    __slots__ = ("started", "total_s", "max_s", "collections")

    def __init__(self) -> None:
        self.started = 0.0
        self.total_s = 0.0
        self.max_s = [0.0, 0.0, 0.0]  # per generation
        self.collections = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        generation = info["generation"]
        self.total_s += pause
        self.max_s[generation] = max(self.max_s[generation], pause)
        self.collections[generation] += 1

    def reset(self) -> None:
        self.total_s = 0.0
        self.max_s = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]


class Worker:
    def __init__(
        self, spec: WorkerSpec, identities: dict[int, Any], to_parent: Connection,
        from_parent: Connection,
    ) -> None:
        config = spec.config
        self.id = spec.worker_id
        self.config = config
        self.to_parent = to_parent
        self.from_parent = from_parent
        self.counters = Counters()
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, list[str]] = {}
        self.log = SendLog(config.retention_s)
        self.matcher = Matcher(self.log)
        # From starting to connect to the module being loaded (all logins).
        self.login_latency = Histogram()
        self.receipts = ReceiptBuffer()
        # Only needed when receivers live in other processes.
        self.ship_sends = config.processes > 1
        self.sent_keys = array("q")
        self.sent_times = array("d")
        self.local = frozenset(index for index, _, _, _ in spec.users)
        self.index_of: dict[str, int] = {}
        self.realm_ids = {name: i for i, name in enumerate(config.realms)}
        self.target_of = spec.target_of
        self.users = []
        for index, order, subscriber, churns in spec.users:
            target, source = connection_slot(config, order)
            self.users.append(VirtualUser(self, index, identities[index], target, source,
                                          subscriber, order % len(config.targets), churns))
        self.alarms = Alarms()
        self.stopping = False
        self.exiting = False
        self.attempts = 0
        self.quiet = 0
        self.gc = GcWatch()
        gc.callbacks.append(self.gc)
        # Counters and CPU when the load phase started and stopped, taken
        # here: the parent's copies can be late when this loop is busy.
        self.marks: dict[str, dict[str, Any]] = {}
        # The reconnect storm (--storm-at): when every connection was dropped,
        # how many, each user's seconds until logged in again, and the
        # friends seen OFFLINE afterwards (sender indices).
        self.storm_at: float | None = None
        self.storm_dropped = 0
        self.storm_back_users = array("q")
        self.storm_back_s = array("d")
        self.storm_offline = array("q")

    # ------------------------------------------------------------ main loop

    async def run(self) -> None:
        self.stop_event = trio.Event()
        self.exit_event = trio.Event()
        self._outbox, outbox = trio.open_memory_channel[object](math.inf)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._sender, outbox)
            try:
                message = await self._recv()
                if message[0] == "go":
                    self.index_of = {address: i for i, address in enumerate(message[1])}
                    async with trio.open_nursery() as root:
                        self._root = root
                        root.start_soon(self.alarms.run)
                        root.start_soon(self._control)
                        root.start_soon(self._reporter)
                        await self._drive()
                        root.cancel_scope.cancel()
                    self.send(self._stats())
                self.send(("bye", self.id))
            finally:
                # Lets the sender drain what is queued and end.
                self._outbox.close()

    async def _drive(self) -> None:
        rate = self.config.ramp / self.config.processes
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for k, user in enumerate(self.users):
                nursery.start_soon(user.run, start + k / rate)
            if not self.users:
                self.send(("ramped", self.id))
            await self.exit_event.wait()
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S

    async def _recv(self) -> tuple[Any, ...]:
        try:
            return await trio.to_thread.run_sync(self.from_parent.recv, abandon_on_cancel=True)
        except (EOFError, OSError):
            # The parent is gone: wind down as if told to.
            return ("exit",)

    async def _control(self) -> None:
        while True:
            message = await self._recv()
            what = message[0]
            if what == "load":
                self.marks["load"] = self._mark()
                self.matcher.measure_from = message[1]
                # Everything the ramp built lives until the end: keep it out
                # of collections. (No gc.collect() first: with 5,000
                # connections it pauses ~1 s.) Then no automatic collection
                # while the load runs: a young-generation pass paused this
                # process 40-110 ms on a quiet machine and up to 600 ms on a
                # busy one, whatever the threshold, and every receipt in a
                # pause counts as notify latency the server did not cause.
                # The load makes little cyclic garbage (RSS of 12,500 users
                # stayed within 1 % over 60 s without collections); the
                # collector is back on at "stop".
                gc.freeze()
                gc.disable()
                self.gc.reset()
                if self.config.storm_at_s is not None:
                    self._root.start_soon(self._storm, message[1] + self.config.storm_at_s)
            elif what == "measure":
                self.matcher.restart(message[1])
                self.send(("measuring", self.id))
            elif what == "stop":
                self.marks["stop"] = self._mark()
                # The report covers the load phase: collections while the users
                # disconnect are not counted.
                if self.gc in gc.callbacks:
                    gc.callbacks.remove(self.gc)
                gc.enable()
                self._stop()
            elif what == "report":
                self.send(self._stats())
                self.send(("final", self.id, self._final()))
            elif what == "exit":
                self._stop()
                self.exiting = True
                self.exit_event.set()
                return

    async def _storm(self, at: float) -> None:
        """Drop every live connection at once (`at` is a time.monotonic() shared by
        all worker processes); each user logs in again within --storm-spread."""
        await trio.sleep(max(0.0, at - time.monotonic()))
        if self.stopping:
            return
        now = time.monotonic()
        self.storm_at = now
        self.storm_dropped = sum(1 for user in self.users if user.drop(now))
        # Wake the dropped users (the others go back to sleep: see sleep_until).
        self.alarms.wake_all()

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_event.set()
            self.alarms.wake_all()
            if self.quiet == len(self.users):
                self.send(("stopped", self.id))

    async def _reporter(self) -> None:
        interval = self.config.report_interval_s
        prune_at = time.monotonic() + 5.0
        while True:
            await trio.sleep(interval)
            self.send(self._stats())
            now = time.monotonic()
            if now >= prune_at:
                self.log.prune(now)
                prune_at = now + 5.0

    def send(self, message: object) -> None:
        self._outbox.send_nowait(message)

    async def _sender(self, outbox: trio.MemoryReceiveChannel[object]) -> None:
        # One task sends everything, in order, so the pipe is never written
        # from two threads and "final" always follows the stats before it.
        async for message in outbox:
            try:
                await trio.to_thread.run_sync(self.to_parent.send, message)
            except (BrokenPipeError, EOFError, OSError):
                return

    # ------------------------------------------------- called by the users

    async def sleep_until(self, deadline: float, user: VirtualUser | None = None) -> bool:
        """Sleep until `deadline` (trio time), or until the storm drops `user`'s
        connection; True if the run stopped meanwhile."""
        while not self.stopping:
            await self.alarms.sleep_until(deadline)
            if trio.current_time() >= deadline or (user is not None
                                                    and user.dropped_at is not None):
                break
        return self.stopping

    def back_after_storm(self, user: VirtualUser, seconds: float) -> None:
        self.storm_back_users.append(user.index)
        self.storm_back_s.append(seconds)

    def attempt_done(self) -> None:
        self.attempts += 1
        if self.attempts == len(self.users):
            self.send(("ramped", self.id))

    def quiesce(self, user: VirtualUser) -> None:
        if not user.quiet:
            user.quiet = True
            self.quiet += 1
            if self.stopping and self.quiet == len(self.users):
                self.send(("stopped", self.id))

    def log_send(self, key: int, t: float) -> None:
        self.log.record(key, t)
        if self.ship_sends:
            self.sent_keys.append(key)
            self.sent_times.append(t)

    def failure(self, e: BaseException, login: bool, user: VirtualUser) -> None:
        kind, detail = classify(e, login)
        if login:
            self.counters.login_errors += 1
        if kind == "internal":
            log.error("virtual user %s failed unexpectedly:\n%s", user.identity.address,
                      "".join(traceback.format_exception(e)))
        self.record_error(kind, detail, user)

    def record_error(self, kind: str, detail: str, user: VirtualUser) -> None:
        self.errors[kind] += 1
        samples = self.error_samples.setdefault(kind, [])
        if len(samples) < SAMPLES_PER_KIND:
            samples.append(f"{user.identity.address}: {detail}")

    def on_updates(self, user: VirtualUser, batch: Sequence[pb.UserPresence], now: float) -> None:
        """Apply a stream item to the receiver's view and match it to its causes."""
        view = user.view
        if view is None or self.exiting:
            # After the final report nothing counts: the run is being torn down.
            return
        self.counters.updates += len(batch)
        since = user.since
        index_of = self.index_of
        realm_ids = self.realm_ids
        local = self.local
        match = self.matcher.match
        remote = self.receipts.add
        target_of = self.target_of
        mine = user.target_index
        storm_at = self.storm_at
        for update in batch:
            sender = index_of.get(update.address)
            if sender is None:
                self.counters.foreign_updates += 1
                continue
            if update.status == _ONLINE_STATUS:
                if update.HasField("position"):
                    p = update.position
                    realm = realm_ids.get(p.realm)
                    # Each field read builds a Python object: read each once.
                    x = p.x
                    y = p.y
                    if realm is None or not (COORD_MIN <= x <= COORD_MAX
                                             and COORD_MIN <= y <= COORD_MAX):
                        key = UNKNOWN
                    else:
                        key = position_key(realm, x, y)
                else:
                    key = ONLINE
                view[sender] = key
            else:
                key = OFFLINE
                view.pop(sender, None)
                if storm_at is not None and now >= storm_at:
                    self.storm_offline.append(sender)
            full = (sender << SENDER_SHIFT) | key
            cross = int(target_of[sender] != mine) if target_of else 0
            if sender in local:
                if not match(full, now, since, cross):
                    self.matcher.unmatched += 1
            else:
                remote(full, now, since, cross)

    # ------------------------------------------------------------ reports

    def _mark(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"t": time.monotonic(), "cpu_s": usage.ru_utime + usage.ru_stime,
                "counters": self.counters.as_dict()}

    def _stats(self) -> tuple[str, int, dict[str, Any]]:
        matcher = self.matcher
        sends = (self.sent_keys, self.sent_times)
        self.sent_keys, self.sent_times = array("q"), array("d")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return ("stats", self.id, {
            "t": time.monotonic(),
            "counters": self.counters.as_dict(),
            "errors": dict(self.errors),
            "samples": {k: list(v) for k, v in self.error_samples.items()},
            "histograms": (*(h.take() for h in matcher.histograms), self.login_latency.take(),
                           matcher.cross.take()),
            "matched": list(matcher.matched),
            "excluded": matcher.excluded,
            "unmatched": matcher.unmatched,
            "sends": sends,
            "receipts": self.receipts.take(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_kib": usage.ru_maxrss,
            "users": len(self.users),
            "marks": self.marks,
            "gc": {"seconds": round(self.gc.total_s, 3),
                   "collections": list(self.gc.collections),
                   "max_pause_ms": [round(s * 1000.0, 1) for s in self.gc.max_s]},
        })

    def _final(self) -> dict[str, array]:
        indices, keys = array("q"), array("q")
        receivers, counts, friends, seen = array("q"), array("q"), array("q"), array("q")
        for user in self.users:
            indices.append(user.index)
            keys.append(user.final_key())
            view = user.view
            if view is not None and user.connected:
                receivers.append(user.index)
                counts.append(len(view))
                friends.extend(view.keys())
                seen.extend(view.values())
        return {"indices": indices, "keys": keys, "receivers": receivers, "counts": counts,
                "friends": friends, "seen": seen,
                "storm_dropped": array("q", [self.storm_dropped]),
                "storm_back_users": self.storm_back_users, "storm_back_s": self.storm_back_s,
                "storm_offline": self.storm_offline}


def worker_main(spec: WorkerSpec, to_parent: Connection, from_parent: Connection) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group: the parent handles it and
    # tells the workers to close their connections.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="presenced simulate: %(message)s")
    logging.getLogger("trio-websocket").setLevel(logging.ERROR)
    try:
        started = time.monotonic()
        seed = spec.config.seed
        identities = {index: user_identity(seed, index) for index, _, _, _ in spec.users}
        addresses = [(i, identity.address) for i, identity in identities.items()]
        addresses += [(i, user_address(seed, i)) for i in spec.offline]
        to_parent.send(("ready", spec.worker_id, addresses, time.monotonic() - started))
        # A client holds ~100 tracked objects per connection: with default
        # thresholds full collections would pause the loop for hundreds of
        # milliseconds and show up as notify latency.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 100)
        worker = Worker(spec, identities, to_parent, from_parent)
        trio.run(worker.run)
    except BaseException:  # report anything, even a KeyboardInterrupt, then die
        try:
            to_parent.send(("fatal", spec.worker_id, traceback.format_exc()))
        except OSError:
            pass
        raise SystemExit(1) from None
