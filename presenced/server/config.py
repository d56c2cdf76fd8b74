"""Everything `presenced serve` can be told, with production defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from presenced.engine import EngineConfig
from presenced.graph.config import DatabaseConfig, SourceConfig
from presenced.store.redis_config import RedisStoreConfig


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8085
    # Seconds a new connection has to send its login frame (closed with 3004).
    auth_timeout_s: float = 30.0
    # How far the signed timestamp may be from now.
    auth_window_ms: int = 300_000
    # Inbound WebSocket messages larger than this are refused with 1009.
    max_frame_bytes: int = 16 * 1024
    # Keepalive: a connection that does not answer a ping in time is closed.
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 30.0
    # Bytes waiting to be written to one connection; a client that lets them
    # pile up is disconnected rather than slowing anyone else.
    send_queue_bytes: int = 256 * 1024
    # A subscriber whose stream has updates waiting but sent no ACK for this
    # long is disconnected.
    stuck_timeout_s: float = 60.0
    # Logged-in connections at once; past it a login is refused with 1013. 0: as many as the
    # process's descriptor limit allows, less a reserve (presenced/server/admission.py).
    max_connections: int = 0
    # Sockets awaiting their login at once, in total (0: the socket cap, at most
    # 16384; past it the accept loop pauses), and per source address (0: 64; past it the
    # silent ones are closed with 1013 once they have waited 3 s).
    max_pending_logins: int = 0
    max_pending_logins_per_address: int = 0
    # What one logged-in connection may make the server hold (docs/security.md): real clients
    # open one port named in ~15 characters and at most a handful of streams.
    max_ports_per_connection: int = 8
    max_port_name_bytes: int = 128
    max_streams_per_connection: int = 32
    # Inbound messages per second one connection may send (sustained, and in a burst): about
    # a hundred times what a busy real client sends; past it the connection is closed (1008).
    max_messages_per_s: float = 200.0
    message_burst: int = 2000
    tick_interval_s: float = 0.5
    sweep_interval_s: float = 5.0
    friends_file: str | None = None
    # Blocks to load at start, lines `blocker,blocked` (like friends_file).
    blocks_file: str | None = None
    # The social service's PostgreSQL: the one source of friendships and
    # blocks when set (docs/friends.md for the intervals' costs).
    friends_db_url: str | None = None
    friends_db_reconcile_interval_s: float = 30.0
    friends_db_full_interval_s: float = 900.0
    friends_db_overlap_s: float = 120.0
    # The social service's Redis: its friendship/block events are followed
    # (with friends_db_url), and presence transitions published on it
    # (publish_social_status).
    social_events_url: str | None = None
    publish_social_status: bool = False
    # Catalyst lambdas base URL for names and pictures (SocialService v2); None: addresses only.
    profiles_url: str | None = None
    # Admin/metrics HTTP endpoint. A token is required off loopback.
    admin_host: str = "127.0.0.1"
    admin_port: int = 8086
    admin_token: str | None = None
    # Shared Redis store (None: the embedded store).
    redis_url: str | None = None
    redis_pool_size: int = 16
    redis_socket_timeout_s: float = 5.0
    # Presence writes are batched into pipelines. A change other instances
    # must hear of goes out as soon as the previous flush is
    # `redis_flush_min_gap_s` old (no timer to wait for while Redis is idle;
    # batches under load); refresh-only writes wait at most
    # `redis_flush_interval_s` (docs/redis.md).
    redis_flush_interval_s: float = 0.05
    redis_flush_min_gap_s: float = 0.01
    # Full comparison with Redis this often, to repair anything missed.
    redis_resync_interval_s: float = 30.0
    # Processes sharing the listening port (SO_REUSEPORT); >1 needs Redis.
    workers: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)

    # Seconds start-up may take (mostly: waiting for Redis) before the
    # daemon gives up with exit status 1; 0 waits for ever.
    startup_timeout_s: float = 60.0
    # Which worker of `serve --workers N` this process is (None: the only one).
    worker_index: int | None = None

    @property
    def store_kind(self) -> str:
        """The store by name, as logs, /readyz and /v1/status show it."""
        return "redis" if self.redis_url else "memory"

    def redis_store_config(self) -> RedisStoreConfig:
        """The Redis store's settings, taken from the server's and the engine's."""
        return RedisStoreConfig(
            ttl_ms=self.engine.ttl_ms,
            offline_grace_ms=self.engine.offline_grace_ms,
            touch_write_interval_ms=self.engine.touch_write_interval_ms,
            pool_size=self.redis_pool_size,
            socket_timeout_s=self.redis_socket_timeout_s,
            flush_interval_s=self.redis_flush_interval_s,
            flush_min_gap_s=self.redis_flush_min_gap_s,
            resync_interval_s=self.redis_resync_interval_s,
        )

    def friends_source_config(self) -> SourceConfig | None:
        """The friends database's settings, or None without --friends-db."""
        if not self.friends_db_url:
            return None
        return SourceConfig(
            database=DatabaseConfig(self.friends_db_url),
            reconcile_interval_s=self.friends_db_reconcile_interval_s,
            full_interval_s=self.friends_db_full_interval_s,
            overlap_s=self.friends_db_overlap_s,
            events_url=self.social_events_url,
        )
