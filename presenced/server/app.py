"""`presenced serve`: the WebSocket listener, the hub and a graceful shutdown."""

from __future__ import annotations

import logging
import socket

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from presenced.errors import leaf_exceptions
from presenced.graph.source import SourceUnavailable
from presenced.server import admin, closecodes, runtime
from presenced.server.config import ServerConfig
from presenced.server.connection import Connection
from presenced.server.hub import Hub
from presenced.store.base import Store
from presenced.store.blocks_file import read_blocks_file
from presenced.store.friends_file import read_friendships_file
from presenced.store.memory import MemoryStore

log = logging.getLogger("presenced.server")

# Seconds the open connections get to close cleanly on shutdown.
SHUTDOWN_GRACE_S = 10.0


class ConfigError(Exception):
    """The configuration cannot be served (bad friends file, port in use…)."""


def build_store(config: ServerConfig) -> Store:
    if config.redis_url:
        from presenced.store.redis import RedisStore

        return RedisStore(config.redis_url, config.redis_store_config())
    store = MemoryStore()
    if config.friends_file:
        try:
            pairs, errors = read_friendships_file(config.friends_file)
        except OSError as e:
            raise ConfigError(f"cannot read friends file: {e}") from None
        if errors:
            shown = "; ".join(str(e) for e in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise ConfigError(f"{config.friends_file}: {shown}{more}")
        added = store.load_friendships(pairs)
        log.info("loaded %d friendships from %s", added, config.friends_file)
    if config.blocks_file:
        _load_blocks_file(store, config.blocks_file)
    return store


def _load_blocks_file(store: MemoryStore, path: str) -> None:
    try:
        blocks, errors = read_blocks_file(path)
    except OSError as e:
        raise ConfigError(f"cannot read blocks file: {e}") from None
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError(f"{path}: {shown}{more}")
    log.info("loaded %d blocks from %s", store.load_blocks(blocks), path)


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
    reuse_port: bool = False,
    freeze_loaded_state: bool = False,
    task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then close every connection with 1001.

    `freeze_loaded_state` (the daemon, not tests sharing a process) moves
    the state loaded at start-up out of the garbage collector's passes.
    """
    problem = admin.admin_config_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    hub = Hub(config, store or build_store(config))

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
            hub.metrics.disconnects["full"] += 1
            with trio.move_on_after(5):
                await ws.aclose(closecodes.TRY_AGAIN_LATER, "Unable to acquire connection")
            return
        await Connection(hub, ws, peer).run()

    async with trio.open_nursery() as root:
        await root.start(hub.run)
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
                hub.kill_all(closecodes.GOING_AWAY, "server shutting down")
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

    Raises ConfigError, SourceUnavailable and KeyboardInterrupt bare, not
    wrapped in groups.
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
    except* (ConfigError, SourceUnavailable) as group:
        # Raised inside nested nurseries, so the group may nest.
        raise leaf_exceptions(group)[0] from None
    except* KeyboardInterrupt:
        # A Ctrl-C before the signal receiver is installed.
        raise KeyboardInterrupt from None
