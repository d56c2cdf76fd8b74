"""`presenced serve`: start-up, the WebSocket listener, the hub and a graceful shutdown.

Start-up order, so that an operator (and an orchestrator) can see and stop
a daemon at every moment:

1. check the configuration (one clear error, exit 2);
2. bind the WebSocket and admin ports (a port in use fails at once);
3. serve the admin endpoint: `/healthz` answers, `/readyz` says
   "starting: waiting for Redis";
4. start the hub, which loads the store. This is the step that can wait
   (Redis not there yet); the shutdown event and `--startup-timeout` both
   end it;
5. listen on the WebSocket port; `/readyz` turns 200.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from presenced import __version__
from presenced.closes import Close
from presenced.errors import leaf_exceptions
from presenced.graph.source import SourceUnavailable
from presenced.logs import RateLimit, redact_url
from presenced.server import admin, runtime
from presenced.server.config import ServerConfig
from presenced.server.connection import Connection
from presenced.server.hub import Hub
from presenced.server.readiness import starting_reason
from presenced.services import SERVED_MODULES
from presenced.services.base import Module
from presenced.store.base import Block, Friendship, Store, StoreUnavailable
from presenced.store.blocks_file import read_blocks_file
from presenced.store.friends_file import FriendsFile, FriendsFileError
from presenced.store.memory import MemoryStore

log = logging.getLogger("presenced.server")

# Seconds the open connections get to close cleanly on shutdown.
SHUTDOWN_GRACE_S = 10.0
LISTEN_BACKLOG = 4096
# Seconds between attempts to load the friends file while the store is away.
FRIENDS_RETRY_S = 1.0


class ConfigError(Exception):
    """The configuration cannot be served (bad friends file, port in use…): exit 2."""


class StartupFailed(Exception):
    """Start-up did not complete within --startup-timeout: exit 1."""


def check_config(config: ServerConfig) -> None:
    """Raise ConfigError for a configuration that cannot be served (no I/O)."""
    problem = admin.admin_config_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    for name, port in (("--port", config.port), ("--admin-port", config.admin_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} {port} is not a TCP port (0-65535)")
    if config.startup_timeout_s < 0:
        raise ConfigError("--startup-timeout must not be negative")


def build_store(config: ServerConfig) -> Store:
    if config.redis_url:
        from presenced.store.redis_store import RedisStore

        try:
            # Parses the URL; no connection is made until the store runs.
            return RedisStore(config.redis_url, config.redis_store_config())
        except ValueError as e:
            raise ConfigError(f"--redis-url {redact_url(config.redis_url)!r}: {e}") from None
    return MemoryStore()


def read_friends_file(config: ServerConfig) -> tuple[FriendsFile, list[Friendship]] | None:
    """The `--friends` file as a friends source and its pairs; a malformed
    file is a ConfigError, found before anything starts."""
    if not config.friends_file:
        return None
    source = FriendsFile(config.friends_file, config.blocks_file)
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


def read_blocks(config: ServerConfig) -> list[Block] | None:
    """The `--blocks` file's blocks; a malformed file is a ConfigError, found
    before anything starts."""
    if not config.blocks_file:
        return None
    try:
        blocks, errors = read_blocks_file(config.blocks_file)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read blocks file: {e}") from None
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError(f"{config.blocks_file}: {shown}{more}")
    return blocks


async def load_blocks(store: Store, path: str, blocks: list[Block]) -> None:
    """Load the blocks file into the store (idempotent), retrying while it is away."""
    while True:
        try:
            added = await store.load_blocks(blocks)
        except StoreUnavailable as e:
            log.warning("cannot load the blocks file %s yet (%s); retrying", path, e)
            await trio.sleep(FRIENDS_RETRY_S)
            continue
        log.info("loaded %d blocks from %s (%d new to the store)", len(blocks), path, added)
        return


async def bind_sockets(host: str, port: int, reuse_port: bool) -> list[trio.socket.SocketType]:
    """Bound, not yet listening, sockets for every address of `host`; raises OSError.

    Binding first catches a port in use at once; listening only once the
    store is ready keeps clients out of a backlog nobody accepts from (with
    `reuse_port` the kernel would hand a worker still starting its share).
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    sockets: list[trio.socket.SocketType] = []
    try:
        for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
            sock = trio.socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(sockaddr)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(sockets: list[trio.socket.SocketType]) -> list[trio.SocketListener]:
    for sock in sockets:
        sock.listen(LISTEN_BACKLOG)
    return [trio.SocketListener(sock) for sock in sockets]


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

    `shutdown` also ends a start-up still waiting for the store (the call
    then returns without having called `task_status.started`). Raises
    ConfigError for a configuration that cannot be served and StartupFailed
    when the store is not ready within `config.startup_timeout_s`.

    `modules` are the RPC modules offered (tests serve modules of their own).
    `freeze_loaded_state` (the daemon, not tests sharing a process) moves
    the state loaded at start-up out of the garbage collector's passes.
    """
    check_config(config)
    friends = read_friends_file(config)
    blocks = read_blocks(config)
    hub = Hub(config, store or build_store(config), modules)
    loaded: Callable[[], Awaitable[None]] | None = None
    if friends is not None or blocks is not None:
        if friends is not None:
            # The store rebuilds friendships from the file if it ever loses them.
            hub.store.set_friends_source(friends[0])

        async def loaded() -> None:
            nonlocal friends, blocks
            if friends is not None:
                await load_friends_file(hub.store, *friends)
                friends = None
            if blocks is not None:
                assert config.blocks_file is not None
                await load_blocks(hub.store, config.blocks_file, blocks)
                blocks = None
    try:
        async with trio.open_nursery() as root:
            ws_sockets, admin_sock = await _bind(config, reuse_port)
            hub.admin_port = admin_sock.getsockname()[1]
            # Stops taking requests on `shutdown`; the root nursery's cancel
            # ends any stragglers.
            await root.start(admin.serve_admin, hub, admin_sock, shutdown.wait)
            _log_start(hub, ws_sockets)
            try:
                started = await _start_hub(root, hub, shutdown, loaded)
            except BaseException:
                # StartupFailed: nobody will listen on them.
                for sock in ws_sockets:
                    sock.close()
                raise
            if started:
                if freeze_loaded_state:
                    runtime.freeze_loaded_state()
                await _serve_connections(hub, listen(ws_sockets), shutdown, task_status)
            else:
                for sock in ws_sockets:
                    sock.close()
                log.info("stopped during start-up")
            root.cancel_scope.cancel()
    finally:
        await hub.store.aclose()


async def _bind(
    config: ServerConfig, reuse_port: bool
) -> tuple[list[trio.socket.SocketType], socket.socket]:
    try:
        ws_sockets = await bind_sockets(config.host, config.port, reuse_port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {e}") from None
    try:
        admin_sock = await admin.bind_admin_socket(config.admin_host, config.admin_port)
    except OSError as e:
        for sock in ws_sockets:
            sock.close()
        raise ConfigError(f"cannot serve the admin endpoint on "
                          f"{config.admin_host}:{config.admin_port}: {e}") from None
    return ws_sockets, admin_sock


async def _start_hub(
    root: trio.Nursery, hub: Hub, shutdown: trio.Event,
    loaded: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Start the hub (it loads the store), then run `loaded` (the friends file
    goes into the store); False if `shutdown` came first.

    Raises StartupFailed after `--startup-timeout` seconds (0: no limit).
    """
    timeout = hub.config.startup_timeout_s or float("inf")
    with trio.CancelScope() as stopped:
        async with trio.open_nursery() as watch:

            async def stop_on_shutdown() -> None:
                await shutdown.wait()
                stopped.cancel()

            watch.start_soon(stop_on_shutdown)
            with trio.move_on_after(timeout) as deadline:
                try:
                    await root.start(hub.run)
                except* SourceUnavailable as group:
                    # The friends database (or its events) unreachable at start.
                    raise StartupFailed(str(leaf_exceptions(group)[0])) from None
                if loaded is not None:
                    await loaded()
            watch.cancel_scope.cancel()
        if deadline.cancelled_caught:
            config = hub.config
            where = f" at {redact_url(config.redis_url)}" if config.redis_url else ""
            raise StartupFailed(
                f"gave up after {timeout:g} s of start-up (--startup-timeout): still "
                f"{starting_reason(config.store_kind).removeprefix('starting: ')}{where}")
    return not stopped.cancelled_caught


def _log_start(hub: Hub, ws_sockets: list[trio.socket.SocketType]) -> None:
    """The start-up line: what this process is and what it was told."""
    config = hub.config
    engine = config.engine
    ws_port = ws_sockets[0].getsockname()[1] if ws_sockets else config.port
    store_url = redact_url(config.redis_url) if config.redis_url else None
    fields = {
        "event": "start",
        "version": __version__,
        "pid": os.getpid(),
        "instance": hub.store.instance_id,
        "worker": config.worker_index,
        "store": config.store_kind,
        "store_url": store_url,
        "ws": f"{config.host}:{ws_port}",
        "admin": f"{config.admin_host}:{hub.admin_port}",
        "max_connections": config.max_connections,
        "max_frame_bytes": config.max_frame_bytes,
        "send_queue_bytes": config.send_queue_bytes,
        "ttl_s": engine.ttl_ms / 1000,
        "offline_grace_s": engine.offline_grace_ms / 1000,
        "heartbeat_rate": engine.heartbeat_rate,
        "heartbeat_burst": engine.heartbeat_burst,
        "startup_timeout_s": config.startup_timeout_s,
    }
    worker = "" if config.worker_index is None else f", worker {config.worker_index}"
    store = config.store_kind + (f" {store_url}" if store_url else "")
    limits = (f"max connections {config.max_connections or 'unlimited'}, "
              f"max frame {config.max_frame_bytes} B, send queue {config.send_queue_bytes} B, "
              f"ttl {engine.ttl_ms / 1000:g} s, grace {engine.offline_grace_ms / 1000:g} s, "
              f"heartbeats {engine.heartbeat_rate:g}/s burst {engine.heartbeat_burst}")
    log.info("presenced %s starting: pid %d, instance %s%s, store %s, ws %s, admin %s; %s",
             __version__, fields["pid"], hub.store.instance_id, worker, store, fields["ws"],
             admin.base_url(config.admin_host, hub.admin_port), limits,
             extra={"fields": fields})


async def _serve_connections(
    hub: Hub,
    listeners: list[trio.SocketListener],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Hub],
) -> None:
    """Accept WebSockets until `shutdown`, then close them all with 1001."""
    config = hub.config
    errors_logged = RateLimit(60.0)

    async def handle(request: WebSocketRequest) -> None:
        # trio-websocket runs this in the server's nursery: anything escaping
        # would cancel every connection, so nothing may.
        try:
            await accept(request)
        except (ConnectionClosed, OSError) as e:
            # The client went away during the handshake (a reset, a port scan).
            log.debug("connection dropped during the handshake: %r", e)
        except Exception as e:
            hub.metrics.handler_errors += 1
            # A bug hit by every new client must not flood the log.
            note = errors_logged.allow(type(e))
            if note is not None:
                log.exception("unexpected error while accepting a connection%s", note)

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

            async def listen_ws(*, task_status: trio.TaskStatus[None]) -> None:
                with listen_scope:
                    await server.run(task_status=task_status)

            await connections.start(listen_ws)
            hub.listen_port = server.port if len(listeners) == 1 else config.port
            log.info("ready: listening on ws://%s:%d (%d users online)", config.host,
                     hub.listen_port, hub.engine.online_count,
                     extra={"fields": {"event": "ready", "port": hub.listen_port}})
            task_status.started(hub)
            await shutdown.wait()
            hub.stopping = True
            log.info("shutting down: closing %d connections", len(hub.live),
                     extra={"fields": {"event": "stop", "connections": len(hub.live)}})
            listen_scope.cancel()
            hub.kill_all(Close.SHUTDOWN)
            # Wait for the closing handshakes, then drop whatever is left
            # (sockets still in the HTTP upgrade have nothing to close).
            with trio.move_on_after(SHUTDOWN_GRACE_S):
                while hub.live:
                    await trio.sleep(0.05)
            connections_scope.cancel()


def run_until_signalled(config: ServerConfig, *, reuse_port: bool = False) -> None:
    """`serve` in a new trio loop until SIGINT or SIGTERM, at any moment of its life.

    Raises ConfigError, StartupFailed and KeyboardInterrupt bare, not
    wrapped in groups.
    """
    import signal

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:

            async def on_signals(*, task_status: trio.TaskStatus[None]) -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    task_status.started()
                    async for signum in signals:
                        log.info("%s received", signal.Signals(signum).name)
                        shutdown.set()
                        # A second signal gets the default action: at once.
                        return

            # The receiver is in place before anything else starts.
            await nursery.start(on_signals)
            await serve(config, shutdown, reuse_port=reuse_port, freeze_loaded_state=True)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* (ConfigError, StartupFailed) as group:
        # Raised inside nested nurseries, so the group may nest.
        raise leaf_exceptions(group)[0] from None
    except* KeyboardInterrupt:
        # A Ctrl-C before the signal receiver is installed.
        raise KeyboardInterrupt from None
