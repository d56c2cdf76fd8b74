"""The hub joins the engine to a store and to the live connections.

It owns the background work of one instance, each a task in its nursery:
the store (loading, following other instances), the friends database
(--friends-db), and loops restarted if a pass fails (presenced.supervise):
the ticker (offline grace and TTL expiry of the users this instance vouches
for), the sweeper (users stranded by instances that died), the keepalive pass
over every connection, the login deadlines, and with their options the
profiles fetcher and the social-status publisher. It also holds what every
connection shares: the engine, the admission caps, the caches of verified
ephemeral links and of login frames seen (replays). docs/architecture.md
draws the whole task tree.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from presenced.auth import SeenLogins, VerifiedLinks
from presenced.closes import Close
from presenced.engine import PresenceEngine
from presenced.logs import RateLimit
from presenced.model import Presence, PresenceWrite
from presenced.profiles import ProfileSource
from presenced.rpc.modules import module_registry
from presenced.server.admission import Admission, Limits, Pending, derive_limits
from presenced.server.clock import TrioWallClock
from presenced.server.config import ServerConfig
from presenced.server.metrics import Metrics
from presenced.server.readiness import Phase
from presenced.services import SERVED_MODULES
from presenced.services.base import Module, Procedure, Services
from presenced.store.base import (
    Block,
    BlockChanged,
    Expired,
    Friendship,
    FriendshipChanged,
    GraphEvent,
    RemoteLeave,
    RemotePresence,
    Resync,
    Store,
    StoreEvent,
)
from presenced.supervise import run_forever

if TYPE_CHECKING:
    from presenced.graph.source import FriendsDatabase
    from presenced.graph.status_publisher import StatusPublisher
    from presenced.model import Position

log = logging.getLogger("presenced.hub")

# Users expired per step of the ticker and the sweeper. One expiry costs about
# 16 µs with 20 friends (bench/suite/sweep.py), so a step blocks the event
# loop for roughly 8 ms however many users expire at once.
EXPIRY_STEP = 500


# How late a login deadline or a per-address check may be acted on (seconds).
DEADLINE_SLACK_S = 0.25
# Verified ephemeral links remembered (presenced.auth.VerifiedLinks): one per user who logged
# in lately, about 200 bytes each.
VERIFIED_LINKS = 100_000
# One entry (about 150 bytes) per login in the last auth window: 500,000 is 1,600 logins a
# second for 5 minutes, above what one process can verify.
SEEN_LOGINS = 500_000

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class Killable(Protocol):
    def kill(self, close: Close, detail: str | None = None) -> None: ...


class LiveConnection(Killable, Protocol):
    def keepalive(self, now: float, now_ms: int) -> None: ...


class AwaitingLogin(Killable, Pending, Protocol):
    def idle(self) -> bool: ...


def open_files_limit() -> int:
    """This process's descriptor limit (the soft RLIMIT_NOFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def server_limits(config: ServerConfig, nofile: int | None = None) -> Limits:
    """The connection limits in force for `config` in this process."""
    return derive_limits(
        nofile=open_files_limit() if nofile is None else nofile,
        redis_pool_size=config.redis_pool_size if config.redis_url else 0,
        max_connections=config.max_connections,
        max_pending=config.max_pending_logins,
        max_pending_per_source=config.max_pending_logins_per_address,
        login_timeout_s=config.auth_timeout_s,
    )


def _not_serving(task: Callable[[], Awaitable[None]]) -> None:
    raise RuntimeError("the hub is not serving connections")


class Hub:
    def __init__(
        self, config: ServerConfig, store: Store, modules: Sequence[Module] = SERVED_MODULES
    ) -> None:
        self.config = config
        self.store = store
        self.engine = PresenceEngine(config.engine, store.write)
        self.metrics = Metrics()
        # The RPC modules served: their declarations for the protocol core, and every
        # procedure by (module, name) for dispatch.
        self.module_specs = module_registry(*(m.spec for m in modules))
        self.procedures: dict[tuple[str, str], Procedure] = {
            (m.name, p.name): p for m in modules for p in m.procedures
        }
        self.services = Services()
        if config.profiles_url:
            self.services.profiles = ProfileSource(config.profiles_url)
        # Logged-in connections by session id, and every connection, logged in or not, until
        # its socket is closed.
        self.connections: dict[int, LiveConnection] = {}
        self.live: set[Killable] = set()
        # Connection limits and the login deadlines of sockets awaiting login.
        self.admission = Admission(server_limits(config))
        # Owners' signatures over ephemeral keys already verified: a reconnect with the same
        # ephemeral key (clients keep theirs for hours to days) skips half the ECDSA work.
        self.verified_links = VerifiedLinks(VERIFIED_LINKS)
        # Login frames accepted in the last auth window: the same signed headers are good for
        # one session, a replay is refused (docs/security.md).
        self.seen_logins = SeenLogins(SEEN_LOGINS)
        # Runs a task for a connection (writers, closing timers, store reads) in the server's
        # connection nursery, its errors contained; set by the server when it listens.
        self.spawn: Spawn = _not_serving
        self._room: trio.Event | None = None
        self._deadline_scope: trio.CancelScope | None = None
        # One counter for all connections, like the reference TS server.
        self.port_ids = itertools.count(1)
        self.session_ids = itertools.count(1)
        # Idle connections are pinged often enough that a live one can never
        # reach the TTL, whatever --ping-interval says.
        self.ping_interval_s = min(config.ping_interval_s, config.engine.ttl_ms / 4000)
        # Ready: the store loaded, the friends and blocks files read and the WebSocket port
        # listening (set by the server, presenced.server.app); shutting down: what /readyz
        # reports. The admin API answers only once ready.
        self.ready = False
        self.stopping = False
        self.listen_port = 0
        # The listening sockets (set by the server): their accept queues are a metric.
        self.listeners: list[socket.socket] = []
        self.admin_port = 0
        self._clock: TrioWallClock | None = None
        # Lines about repeating causes (resyncs, sweeps): one per minute each.
        self._log_limit = RateLimit(60.0)
        source = config.friends_source_config()
        self.friends_db: FriendsDatabase | None = None
        if source is not None:
            # Imported here: psycopg and the events' Redis client load only when a friends
            # database is configured (~0.2 s of every start otherwise).
            from presenced.graph.source import FriendsDatabase

            self.friends_db = FriendsDatabase(source)
            # A store that loses friendships (Redis restarted empty) reloads them from it.
            store.set_friends_source(self.friends_db)
        self.status_publisher: StatusPublisher | None = None
        if config.publish_social_status and config.social_events_url:
            from presenced.graph.status_publisher import StatusPublisher

            self.status_publisher = StatusPublisher(config.social_events_url)
            store.on_status = self.status_publisher.publish
        # Who hears of blocks involving a user (the v2 module's block updates), by the
        # blocked user's address; friendships go to the engine.
        self._block_watchers: dict[str, set[Callable[[str, bool], None]]] = {}

    def phase(self) -> Phase:
        """Where this instance is in its life, for /readyz and the metrics."""
        return Phase(started=self.ready, stopping=self.stopping,
                     store_healthy=self.store.healthy,
                     store=self.config.store_kind)

    def now_ms(self) -> int:
        assert self._clock is not None, "Hub.run() has not started"
        return self._clock.now_ms()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._clock = TrioWallClock()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_store)
            if self.friends_db is not None:
                # Loaded before the first connection is accepted.
                await nursery.start(self.friends_db.run, self)
            if self.status_publisher is not None:
                nursery.start_soon(self._supervised, "social-status", self.status_publisher.run)
            nursery.start_soon(self._supervised, "ticker", self._ticker)
            nursery.start_soon(self._supervised, "sweeper", self._sweeper)
            nursery.start_soon(self._supervised, "keepalive", self._keepalive)
            nursery.start_soon(self._supervised, "login-deadlines", self._login_deadlines)
            if self.services.profiles is not None:
                nursery.start_soon(self._supervised, "profiles", self.services.profiles.run)
            task_status.started()

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for good (presenced.supervise): a bug in one pass is logged,
        counted in `presenced_background_task_failures_total{task}`, and the loop restarted."""
        await run_forever(name, loop, on_failure=self._task_failed, log=log)

    def _task_failed(self, name: str) -> None:
        self.metrics.task_failures[name] += 1

    async def _run_store(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self.store.run(self._apply_store_events, task_status=task_status)

    @property
    def graph_is_external(self) -> bool:
        """Friendships and blocks come from the friends database: no edits here."""
        return self.friends_db is not None

    # ------------------------------------------------------------ background

    async def _ticker(self) -> None:
        engine = self.engine
        while True:
            await trio.sleep(self.config.tick_interval_s)
            now_ms = self.now_ms()
            while True:
                for session_id in engine.tick(now_ms, EXPIRY_STEP):
                    conn = self.connections.get(session_id)
                    if conn is not None:
                        conn.kill(Close.EXPIRED)
                if not engine.due(now_ms):
                    break
                # Let connections be served between steps of a mass expiry.
                await trio.lowlevel.checkpoint()

    async def _keepalive(self) -> None:
        # One loop for every connection instead of a timer task in each.
        interval = min(self.ping_interval_s / 2, 5.0)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            now_ms = self.now_ms()
            for conn in list(self.connections.values()):
                conn.keepalive(now, now_ms)

    async def _login_deadlines(self) -> None:
        """Close sockets past their login deadline or over the per-address limit: one heap
        and this one loop for every socket awaiting login (no timer per socket)."""
        admission = self.admission
        while True:
            # Checks are batched DEADLINE_SLACK_S apart: most sockets have logged in by their
            # check, and one wake-up per login would cost more than the check itself.
            with trio.move_on_at(admission.next_check() + DEADLINE_SLACK_S) as scope:
                self._deadline_scope = scope
                await trio.sleep_forever()
            self._deadline_scope = None
            evicted = 0
            for conn, cause in admission.due(trio.current_time(), _idle):
                if cause is Close.LOGIN_LIMIT:
                    evicted += 1
                conn.kill(cause)
            if evicted and (note := self._log_limit.allow("login-limit")) is not None:
                log.info("closed %d silent sockets awaiting login: over the per-address "
                         "limit of %d%s", evicted, admission.limits.pending_per_source, note,
                         extra={"fields": {"event": "login-limit", "sockets": evicted}})

    def login_deadline_added(self) -> None:
        """A socket now awaits its login: make sure the deadline loop wakes for it."""
        scope = self._deadline_scope
        # Deadlines are added in time order: only a loop waiting for nothing needs waking.
        if scope is not None and scope.deadline == math.inf:
            scope.deadline = self.admission.next_check() + DEADLINE_SLACK_S

    def room_freed(self) -> None:
        """A socket closed or left the login: wake an accept loop waiting for room."""
        room = self._room
        if room is not None and self.admission.accepting():
            self._room = None
            room.set()

    async def room(self) -> None:
        """Wait until the accept loop may take another socket (admission.accepting)."""
        while not self.admission.accepting():
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    async def _sweeper(self) -> None:
        ttl = self.config.engine.ttl_ms
        while True:
            await trio.sleep(self.config.sweep_interval_s)
            try:
                expired = await self.store.claim_expired(self.now_ms(), ttl)
            except Exception:
                # The store reports its own health; the sweep retries next time.
                log.debug("expiry sweep failed", exc_info=True)
                continue
            now = self.now_ms()
            if expired and (note := self._log_limit.allow("sweep")) is not None:
                log.info("claimed %d expired users from vanished instances%s", len(expired),
                         note, extra={"fields": {"event": "expiry-claim",
                                                 "users": len(expired)}})
            for start in range(0, len(expired), EXPIRY_STEP):
                if start:
                    await trio.lowlevel.checkpoint()
                for address in expired[start : start + EXPIRY_STEP]:
                    self.engine.apply_expired(address, now)

    def _apply_store_events(self, events: Sequence[StoreEvent]) -> None:
        engine = self.engine
        now = self.now_ms()
        for event in events:
            if isinstance(event, RemotePresence):
                engine.apply_remote(event.presence, event.instance)
            elif isinstance(event, RemoteLeave):
                engine.apply_remote_leave(event.address, event.instance, now)
            elif isinstance(event, Expired):
                engine.apply_expired(event.address, now)
            elif isinstance(event, (FriendshipChanged, BlockChanged)):
                self.apply_graph_events((event,))
            elif isinstance(event, Resync):
                self._resync(event)

    def _resync(self, event: Resync) -> None:
        me = self.store.instance_id
        records = [(p, owners - {me}) for p, owners in event.records]
        self.engine.reconcile(records, self.now_ms())
        # The store may have lost what we wrote (a Redis restarted empty):
        # write back everyone we vouch for, so the shared picture converges
        # without anyone reconnecting.
        for presence in self.engine.owned_presences():
            self.store.write(PresenceWrite(presence, True))
        note = self._log_limit.allow(("resync", event.reason))
        if note is not None:
            log.info("resynchronised with the store (%s): %d users online elsewhere%s",
                     event.reason, len(self.engine.remote_users()), note,
                     extra={"fields": {"event": "resync", "reason": event.reason}})

    # --------------------------------------------------------- admin actions

    async def add_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        """Add friendships to the store and apply them here; returns the new ones."""
        changes = await self.store.add_friendships(pairs)
        self.apply_graph_events(changes.events)
        return changes.changed

    async def remove_friendships(self, pairs: Iterable[Friendship]) -> list[Friendship]:
        changes = await self.store.remove_friendships(pairs)
        self.apply_graph_events(changes.events)
        return changes.changed

    async def add_blocks(self, pairs: Iterable[Block]) -> list[Block]:
        """Add blocks (blocker, blocked); returns the new ones."""
        changes = await self.store.add_blocks(pairs)
        self.apply_graph_events(changes.events)
        return changes.changed

    async def remove_blocks(self, pairs: Iterable[Block]) -> list[Block]:
        changes = await self.store.remove_blocks(pairs)
        self.apply_graph_events(changes.events)
        return changes.changed

    async def load_friendships(self, pairs: Iterable[Friendship]) -> None:
        """Bulk load at start (no connection yet, so no events to apply)."""
        await self.store.load_friendships(pairs)

    async def load_blocks(self, pairs: Iterable[Block]) -> None:
        await self.store.load_blocks(pairs)

    def apply_graph_events(self, events: Iterable[GraphEvent]) -> None:
        """Effective friendships to the engine, blocks to whoever listens."""
        engine = self.engine
        now = self.now_ms()
        for event in events:
            if isinstance(event, FriendshipChanged):
                if event.added:
                    engine.add_friendship(event.a, event.b)
                else:
                    engine.remove_friendship(event.a, event.b, now)
            else:
                for watcher in list(self._block_watchers.get(event.blocked, ())):
                    watcher(event.blocker, event.added)

    def watch_blocks(
        self, blocked: str, on_change: Callable[[str, bool], None]
    ) -> Callable[[], None]:
        """Call `on_change(blocker, added)` for every block of `blocked` added or removed,
        here or on another instance; returns the function that stops it."""
        watchers = self._block_watchers.setdefault(blocked, set())
        watchers.add(on_change)

        def stop() -> None:
            watchers.discard(on_change)
            if not watchers and self._block_watchers.get(blocked) is watchers:
                del self._block_watchers[blocked]

        return stop

    def inject_presence(self, address: str, position: Position | None) -> None:
        self.engine.inject(address, position, self.now_ms())

    def presence_of(self, address: str) -> Presence | None:
        return self.engine.presence(address)

    async def online_friends_of(self, address: str) -> list[Presence]:
        friends = await self.store.friends_of(address)
        return self.engine.presences(friends)

    # -------------------------------------------------------------- shutdown

    def kill_all(self, close: Close) -> None:
        for conn in list(self.live):
            conn.kill(close)


def _idle(conn: Pending) -> bool:
    return conn.idle()  # type: ignore[attr-defined]
