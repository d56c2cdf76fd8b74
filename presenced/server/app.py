"""`presenced serve`: the WebSocket listener, the hub and a graceful shutdown."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from presenced.closes import Close
from presenced.errors import leaf_exceptions
from presenced.server import admin, runtime
from presenced.server.config import ServerConfig
from presenced.server.connection import Connection
from presenced.server.hub import Hub
from presenced.services import SERVED_MODULES
from presenced.services.base import Module
from presenced.store.base import Friendship, Store, StoreUnavailable
from presenced.store.friends_file import FriendsFile, FriendsFileError
from presenced.store.memory import MemoryStore

log = logging.getLogger("presenced.server")

# Seconds the open connections get to close cleanly on shutdown.
SHUTDOWN_GRACE_S = 10.0
# Seconds between attempts to load the friends file while the store is away.
FRIENDS_RETRY_S = 1.0


class ConfigError(Exception):
    """The configuration cannot be served (bad friends file, port in use…)."""


def build_store(config: ServerConfig) -> Store:
    if config.redis_url:
        from presenced.store.redis_store import RedisStore

        return RedisStore(config.redis_url, config.redis_store_config())
    return MemoryStore()


def read_friends_file(config: ServerConfig) -> tuple[FriendsFile, list[Friendship]] | None:
    """The `--friends` file as a friends source and its pairs; a malformed
    file is a ConfigError, found before anything starts."""
    if not config.friends_file:
        return None
    source = FriendsFile(config.friends_file)
    try:
        return source, source.read()
    except FriendsFileError as e:
        raise ConfigError(str(e)) from None


async def load_friends_file(store: Store, source: FriendsFile, pairs: list[Friendship]) -> None:
    """Load the file into the store (idempotent: a shared store keeps what
    other instances loaded), retrying while the store is away."""
    while True:
        try:
            added = await store.load_friendships(pairs)
        except StoreUnavailable as e:
            log.warning("cannot load the %s yet (%s); retrying", source.name, e)
            await trio.sleep(FRIENDS_RETRY_S)
            continue
        log.info("loaded %d friendships from %s (%d new to the store)",
                 len(pairs), source.path, added)
        return


async def open_listeners(host: str, port: int, reuse_port: bool) -> list[trio.SocketListener]:
    """TCP listeners; with `reuse_port` several processes can share the port."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=4096)
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    listeners = []
    for family, type_, proto, _, sockaddr in infos:
        sock = trio.socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
        sock.listen(4096)
        listeners.append(trio.SocketListener(sock))
    return listeners


async def serve(
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    store: Store | None = None,
    modules: Sequence[Module] = SERVED_MODULES,
    reuse_port: bool = False,
    freeze_loaded_state: bool = False,
    task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then close every connection with 1001.

    `modules` are the RPC modules offered (tests serve modules of their own).
    `freeze_loaded_state` (the daemon, not tests sharing a process) moves
    the state loaded at start-up out of the garbage collector's passes.
    """
    problem = admin.admin_config_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    friends = read_friends_file(config)
    hub = Hub(config, store or build_store(config), modules)
    if friends is not None:
        # The store rebuilds friendships from the file if it ever loses them.
        hub.store.set_friends_source(friends[0])

    async def handle(request: WebSocketRequest) -> None:
        # trio-websocket runs this in the server's nursery: anything escaping
        # would cancel every connection, so nothing may.
        try:
            await accept(request)
        except (ConnectionClosed, OSError) as e:
            # The client went away during the handshake (a reset, a port scan).
            log.debug("connection dropped during the handshake: %r", e)
        except Exception:
            hub.metrics.handler_errors += 1
            log.exception("unexpected error while accepting a connection")

    async def accept(request: WebSocketRequest) -> None:
        ws = await request.accept()
        remote = request.remote
        peer = f"{remote.address}:{remote.port}" if hasattr(remote, "address") else str(remote)
        if config.max_connections and len(hub.live) >= config.max_connections:
            hub.metrics.disconnects[Close.FULL.label] += 1
            with trio.move_on_after(5):
                await ws.aclose(Close.FULL.code, Close.FULL.text())
            return
        await Connection(hub, ws, peer).run()

    async with trio.open_nursery() as root:
        await root.start(hub.run)
        if friends is not None:
            await load_friends_file(hub.store, *friends)
            del friends
        if freeze_loaded_state:
            runtime.freeze_loaded_state()
        try:
            listeners = await open_listeners(config.host, config.port, reuse_port)
        except OSError as e:
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {e}") from None
        # The admin endpoint starts once the WebSocket port is bound (early
        # clients wait in its backlog): when it answers, both are usable.
        try:
            admin_sock = await admin.bind_admin_socket(config.admin_host, config.admin_port)
        except OSError as e:
            raise ConfigError(f"cannot serve the admin endpoint on "
                              f"{config.admin_host}:{config.admin_port}: {e}") from None
        hub.admin_port = admin_sock.getsockname()[1]
        # Stops taking requests on `shutdown`; the root nursery's cancel ends
        # any stragglers.
        await root.start(admin.serve_admin, hub, admin_sock, shutdown.wait)
        log.info("admin endpoint on %s", admin.base_url(config.admin_host, hub.admin_port))
        with trio.CancelScope() as connections_scope:
            async with trio.open_nursery() as connections:
                server = WebSocketServer(
                    handle,
                    listeners,
                    handler_nursery=connections,
                    max_message_size=config.max_frame_bytes,
                    message_queue_size=8,
                    connect_timeout=10,
                    disconnect_timeout=5,
                )
                listen_scope = trio.CancelScope()

                async def listen(*, task_status: trio.TaskStatus[None]) -> None:
                    with listen_scope:
                        await server.run(task_status=task_status)

                await connections.start(listen)
                hub.listen_port = server.port if len(listeners) == 1 else config.port
                log.info("listening on ws://%s:%d (store: %s)", config.host, hub.listen_port,
                         type(hub.store).__name__)
                task_status.started(hub)
                await shutdown.wait()
                log.info("shutting down: closing %d connections", len(hub.live))
                listen_scope.cancel()
                hub.kill_all(Close.SHUTDOWN)
                # Wait for the closing handshakes, then drop whatever is left
                # (sockets still in the HTTP upgrade have nothing to close).
                with trio.move_on_after(SHUTDOWN_GRACE_S):
                    while hub.live:
                        await trio.sleep(0.05)
                connections_scope.cancel()
        root.cancel_scope.cancel()
    await hub.store.aclose()


def run_until_signalled(config: ServerConfig, *, reuse_port: bool = False) -> None:
    """`serve` in a new trio loop until SIGINT or SIGTERM.

    Raises ConfigError and KeyboardInterrupt bare, not wrapped in groups.
    """
    import signal

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        shutdown.set()
                        return

            nursery.start_soon(on_signals)
            await serve(config, shutdown, reuse_port=reuse_port, freeze_loaded_state=True)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* ConfigError as group:
        # Raised inside nested nurseries, so the group may nest.
        raise leaf_exceptions(group)[0] from None
    except* KeyboardInterrupt:
        # A Ctrl-C before the signal receiver is installed.
        raise KeyboardInterrupt from None
