"""Prometheus view of the hub's plain counters, built at scrape time.

The server counts with plain ints on its hot paths (see metrics.py); this
collector reads them only when `/metrics` is scraped, so a scrape costs a
few dict walks and delivering an update costs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from presenced import __version__
from presenced.server.listen_queue import accept_queue
from presenced.server.readiness import not_ready_reasons
from presenced.server.runtime import GC_PAUSES
from presenced.store.base import Store, StoreStats

if TYPE_CHECKING:
    from presenced.graph.source import FriendsDatabase
    from presenced.server.hub import Hub

# Causes under which a connection counts as a slow client.
SLOW_CLIENT_CAUSES = ("slow-consumer",)


class HubCollector:
    """A prometheus-client collector over one hub's counters."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from calling collect() early,
        # before the hub runs.
        return []

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        m = hub.metrics
        stats = hub.engine.stats
        store = hub.store

        info = GaugeMetricFamily("presenced_build_info", "Version of this daemon.",
                                 labels=["version", "store"])
        info.add_metric([__version__, type(store).__name__], 1)
        yield info
        yield _gauge("presenced_ready", "1 when /readyz would answer 200.",
                     int(not not_ready_reasons(hub.phase())))
        yield _gauge("presenced_store_healthy", "1 while the store can be reached.",
                     int(_store_healthy(store)))

        yield _gauge("presenced_connections", "WebSocket connections open now.", len(hub.live))
        yield _gauge("presenced_sessions", "Logged-in connections open now.",
                     len(hub.connections))
        admission = hub.admission
        yield _gauge("presenced_connections_awaiting_login",
                     "Sockets accepted that have not logged in yet.", admission.pending)
        limits = GaugeMetricFamily(
            "presenced_connection_limit", "Connection limits in force (docs/security.md).",
            labels=["limit"])
        for name, value in (("sockets", admission.limits.sockets),
                            ("sessions", admission.limits.logged_in),
                            ("awaiting_login", admission.limits.pending),
                            ("awaiting_login_per_address", admission.limits.pending_per_source)):
            limits.add_metric([name], value)
        yield limits
        yield _counter("presenced_connections_opened", "WebSocket connections accepted.",
                       m.connections_opened)
        yield _labelled_counter(
            "presenced_accept_pauses", "Times the accept loop waited at a connection limit "
            "(clients queue in the listen backlog meanwhile), by limit.", "limit",
            m.accept_pauses)
        yield _labelled_counter(
            "presenced_accept_paused_seconds", "Seconds the accept loop waited at a "
            "connection limit, by limit.", "limit", m.accept_paused_s)
        queues = [q for q in map(accept_queue, hub.listeners) if q is not None]
        if queues:
            yield _gauge("presenced_listen_queue", "Connections waiting in the kernel's "
                         "accept queues of the WebSocket listeners.", sum(q[0] for q in queues))
            yield _gauge("presenced_listen_queue_limit", "The accept queues' limit (past it "
                         "the kernel drops handshakes and clients retry after seconds).",
                         sum(q[1] for q in queues))
        logins = CounterMetricFamily("presenced_logins", "Login attempts by result and reason.",
                                     labels=["result", "reason"])
        for (result, reason), n in sorted(m.logins.items()):
            logins.add_metric([result, reason], n)
        yield logins
        yield _labelled_counter("presenced_disconnects", "Connections ended, by cause.",
                                "cause", m.disconnects)
        yield _counter("presenced_slow_clients_disconnected",
                       "Connections closed because the client could not keep up.",
                       sum(m.disconnects.get(c, 0) for c in SLOW_CLIENT_CAUSES))
        yield _labelled_counter("presenced_bad_input", "Inbound input refused, by kind.",
                                "kind", m.bad_input)
        yield _labelled_counter("presenced_requests", "RPC calls, by procedure.",
                                "procedure", m.requests)
        yield _counter("presenced_handler_errors",
                       "Unexpected errors caught in connection handlers.", m.handler_errors)
        yield _labelled_counter("presenced_background_task_failures",
                                "Background tasks that failed and were restarted, by task.",
                                "task", m.task_failures)
        yield _labelled_counter("presenced_admin_requests_refused",
                                "Admin requests refused as a browser's (foreign Host or "
                                "Origin, or a write's media type), by reason.",
                                "reason", m.admin_refused)

        heartbeats = CounterMetricFamily("presenced_heartbeats",
                                         "Position heartbeats by result and reason.",
                                         labels=["result", "reason"])
        heartbeats.add_metric(["accepted", ""], stats.heartbeats_accepted)
        heartbeats.add_metric(["rejected", "rate-limited"], stats.heartbeats_rejected_rate)
        heartbeats.add_metric(["rejected", "invalid"], stats.heartbeats_rejected_invalid)
        yield heartbeats

        yield _gauge("presenced_online_users", "Users online (here or on another instance).",
                     hub.engine.online_count)
        transitions = CounterMetricFamily("presenced_presence_changes",
                                          "Users going online or offline.", labels=["to"])
        transitions.add_metric(["online"], stats.went_online)
        transitions.add_metric(["offline"], stats.went_offline)
        yield transitions
        yield _counter("presenced_expiries",
                       "Users that went offline because their TTL ran out.", stats.expired)
        yield _counter("presenced_updates_enqueued",
                       "Presence updates queued for subscribers.", stats.updates_enqueued)
        yield _counter("presenced_updates_coalesced",
                       "Queued updates replaced by a newer one for the same friend before "
                       "being sent.", stats.updates_coalesced)
        yield _counter("presenced_updates_delivered", "Presence updates sent to subscribers.",
                       m.updates_delivered)
        yield _counter("presenced_updates_dropped",
                       "Updates still queued when their subscriber's connection ended.",
                       m.updates_dropped)
        yield _counter("presenced_stream_items_sent",
                       "Subscription stream messages sent (each carries a batch of updates).",
                       m.stream_items_sent)
        yield _counter("presenced_friendship_events_dropped",
                       "Friendship changes dropped because a session had too many waiting "
                       "(SocialService v2 SubscribeToFriendshipUpdates).",
                       stats.friendship_events_dropped)
        profiles = hub.services.profiles
        if profiles is not None:
            yield _labelled_counter("presenced_profile_requests",
                                    "Requests to the profile server, by result.", "result",
                                    {"ok": profiles.stats.answered,
                                     "failed": profiles.stats.failures})
            yield _labelled_counter("presenced_profile_lookups",
                                    "Profile lookups, by cache result.", "result",
                                    {"hit": profiles.cache.hits, "miss": profiles.cache.misses})
            yield _gauge("presenced_profile_cache_entries", "Profiles (or their absence) cached.",
                         len(profiles.cache))
        yield _histogram("presenced_notify_latency_seconds",
                         "Time from a user's change to its delivery to a friend.",
                         m.notify_latency)
        gc_pauses = HistogramMetricFamily(
            "presenced_gc_pause_seconds",
            "Garbage-collector pauses of this process, by generation.",
            labels=["generation"],
        )
        for generation, histogram in GC_PAUSES.items():
            gc_pauses.add_metric(
                [str(generation)],
                [(floatToGoString(b), c) for b, c in histogram.cumulative()],
                histogram.total,
            )
        yield gc_pauses

        if hub.friends_db is not None:
            yield from _friends_db_metrics(hub.friends_db)
        publisher = hub.status_publisher
        if publisher is not None:
            yield _counter("presenced_social_status_published",
                           "Online/offline transitions published on friend.status.updates.",
                           publisher.published)
            yield _counter("presenced_social_status_dropped",
                           "Transitions dropped while the social service's Redis was away "
                           "(more than 100,000 waiting).", publisher.dropped)
            yield _gauge("presenced_social_status_pending",
                         "Transitions waiting to be published.", publisher.pending)
        yield from _store_metrics(store.stats)


def _store_metrics(stats: StoreStats) -> Iterator[Metric]:
    """The shared store's counters; the embedded store has none to show."""
    if not stats.shared:
        return
    yield _labelled_counter("presenced_redis_errors", "Redis calls that failed, by kind.",
                            "kind", stats.errors)
    yield _counter("presenced_redis_outages", "Times the store went from healthy to unhealthy.",
                   stats.outages)
    yield _counter("presenced_redis_flushes", "Batches of presence changes written to Redis.",
                   stats.flushes)
    yield _counter("presenced_redis_writes_flushed",
                   "Presence changes written to Redis (in batches).", stats.writes_flushed)
    yield _counter("presenced_redis_messages_received",
                   "Change messages received from other instances.", stats.messages_received)
    yield _counter("presenced_redis_events_received",
                   "Changes received from other instances.", stats.events_received)
    yield _labelled_counter("presenced_redis_resyncs",
                            "Full resynchronisations with Redis, by reason.", "reason",
                            stats.resyncs)
    yield _counter("presenced_redis_audits", "Periodic change-feed audits that came back clean.",
                   stats.audits)
    yield _gauge("presenced_redis_pending_writes",
                 "Presence changes waiting for the next flush (grows while Redis is away).",
                 stats.pending_writes)
    yield _gauge("presenced_redis_last_resync_seconds",
                 "Duration of the last full resynchronisation.", stats.last_resync_seconds)
    yield _histogram("presenced_redis_flush_latency_seconds",
                     "Time to write one batch of presence changes to Redis.",
                     stats.flush_latency)


def _friends_db_metrics(source: FriendsDatabase) -> Iterator[Metric]:
    stats = source.stats
    yield _gauge("presenced_friends_db_healthy",
                 "1 while the friends database can be read.", int(source.healthy))
    yield _counter("presenced_friends_db_errors", "Failed reads of the friends database.",
                   stats.errors)
    yield _counter("presenced_friends_db_outages",
                   "Times the friends database became unreachable.", stats.outages)
    yield _labelled_counter("presenced_friends_db_passes",
                            "Reconciliation passes completed, by kind (incremental, full, "
                            "blocks).", "kind", stats.passes)
    seconds = GaugeMetricFamily("presenced_friends_db_pass_seconds",
                                "Duration of the last pass of each kind.", labels=["kind"])
    for kind, value in sorted(stats.pass_seconds.items()):
        seconds.add_metric([kind], value)
    yield seconds
    applied = CounterMetricFamily(
        "presenced_friends_db_changes",
        "Friendship and block changes from the social service applied to the store, by "
        "origin (event, incremental, full, blocks), kind and operation.",
        labels=["origin", "kind", "op"])
    for (origin, kind, op), n in sorted(stats.applied.items()):
        applied.add_metric([origin, kind, op], n)
    yield applied
    yield _counter("presenced_friends_db_changes_already_applied",
                   "Changes the store already had: another instance applied them first.",
                   stats.already)
    yield _counter("presenced_friends_db_apply_failures",
                   "Changes the store refused (applied again by the next pass).",
                   stats.apply_failures)
    yield _gauge("presenced_friends_db_friendships", "Friendships loaded from the database.",
                 source.friendship_count)
    yield _gauge("presenced_friends_db_blocks", "Blocks loaded from the database.",
                 source.block_count)
    yield _gauge("presenced_friends_db_load_seconds", "Duration of the load at start.",
                 stats.load_seconds)
    listener = source.listener
    if listener is not None:
        yield _gauge("presenced_social_events_connected",
                     "1 while subscribed to the social service's events.",
                     int(source.events_connected))
        yield _labelled_counter("presenced_social_events_received",
                                "Messages received from the social service, by channel.",
                                "channel", listener.received)
        yield _counter("presenced_social_events_malformed",
                       "Messages from the social service that could not be parsed.",
                       listener.malformed)


def build_registry(hub: Hub) -> CollectorRegistry:
    """A registry of its own per hub (not the global one), so that several
    in-process servers, as in tests, never collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _store_healthy(store: Store) -> bool:
    return store.healthy


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, values: Mapping[str, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([str(key)], n)
    return family


def _histogram(name: str, doc: str, histogram: Any) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.total)
