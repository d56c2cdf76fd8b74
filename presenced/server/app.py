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

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from presenced import __version__
from presenced.closes import Close
from presenced.errors import leaf_exceptions
from presenced.graph.config import SourceUnavailable
from presenced.logs import RateLimit, redact_url
from presenced.server import admin, runtime
from presenced.server.admission import source_key
from presenced.server.config import ServerConfig
from presenced.server.connection import Connection
from presenced.server.hub import Hub, Spawn
from presenced.server.readiness import starting_reason
from presenced.services import SERVED_MODULES
from presenced.services.base import Module
from presenced.store.base import Block, Friendship, Store, StoreUnavailable
from presenced.store.blocks_file import read_blocks_file
from presenced.store.friends_file import FriendsFile, FriendsFileError
from presenced.store.memory import MemoryStore
from presenced.ws.poller import Poller
from presenced.ws.transport import accept

log = logging.getLogger("presenced.server")

# Seconds the open connections get to close cleanly on shutdown.
SHUTDOWN_GRACE_S = 10.0
LISTEN_BACKLOG = 4096
# Seconds a connection we close waits for the client's answer to our close frame.
CLOSE_TIMEOUT_S = 5.0
# Clients accepted in a row before other tasks get a turn.
ACCEPT_BATCH = 256
ACCEPT_ERROR_PAUSE_S = 0.1
# accept() errors that concern only the client being accepted.
_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                               errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                               errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})
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


async def bind_sockets(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, not yet listening, non-blocking sockets for every address of `host`; raises
    OSError.

    Binding first catches a port in use at once; listening only once the
    store is ready keeps clients out of a backlog nobody accepts from (with
    `reuse_port` the kernel would hand a worker still starting its share).
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


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
                await _serve_connections(hub, ws_sockets, shutdown, task_status)
            else:
                for sock in ws_sockets:
                    sock.close()
                log.info("stopped during start-up")
            root.cancel_scope.cancel()
    finally:
        await hub.store.aclose()


async def _bind(
    config: ServerConfig, reuse_port: bool
) -> tuple[list[socket.socket], socket.socket]:
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


def _log_start(hub: Hub, ws_sockets: list[socket.socket]) -> None:
    """The start-up line: what this process is and what it was told."""
    config = hub.config
    engine = config.engine
    ws_port = ws_sockets[0].getsockname()[1] if ws_sockets else config.port
    store_url = redact_url(config.redis_url) if config.redis_url else None
    limits = hub.admission.limits
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
        "max_connections": limits.logged_in,
        "max_sockets": limits.sockets,
        "max_pending_logins": limits.pending,
        "max_pending_logins_per_address": limits.pending_per_source,
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
    text = (f"max connections {limits.logged_in} (sockets {limits.sockets}, awaiting login "
            f"{limits.pending}, {limits.pending_per_source} per address), "
            f"max frame {config.max_frame_bytes} B, send queue {config.send_queue_bytes} B, "
            f"ttl {engine.ttl_ms / 1000:g} s, grace {engine.offline_grace_ms / 1000:g} s, "
            f"heartbeats {engine.heartbeat_rate:g}/s burst {engine.heartbeat_burst}")
    log.info("presenced %s starting: pid %d, instance %s%s, store %s, ws %s, admin %s; %s",
             __version__, fields["pid"], hub.store.instance_id, worker, store, fields["ws"],
             admin.base_url(config.admin_host, hub.admin_port), text,
             extra={"fields": fields})


async def _serve_connections(
    hub: Hub,
    sockets: list[socket.socket],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Hub],
) -> None:
    """Accept WebSockets until `shutdown`, then close them all with 1001.

    Every established connection is read by one `Poller` task (one level-triggered epoll
    set for all sockets) and written synchronously; tasks exist only for what waits: one
    accept loop per listening socket, a writer while a socket's bytes wait, a closing
    handshake's timer, a friend set read from Redis.
    """
    config = hub.config
    poller = Poller()
    listen_scope = trio.CancelScope()
    stopped_accepting = trio.Event()

    async def accept_all(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            with listen_scope:
                async with trio.open_nursery() as acceptors:
                    for sock in sockets:
                        sock.listen(LISTEN_BACKLOG)
                        acceptors.start_soon(_accept_loop, hub, sock, poller)
                    hub.listeners = list(sockets)
                    task_status.started()
        finally:
            stopped_accepting.set()

    try:
        with trio.CancelScope() as connections_scope:
            async with trio.open_nursery() as connections:
                hub.spawn = _guarded_spawn(connections, hub)
                await connections.start(poller.run)
                await connections.start(accept_all)
                hub.listen_port = (sockets[0].getsockname()[1] if len(sockets) == 1
                                   else config.port)
                log.info("ready: listening on ws://%s:%d (%d users online)", config.host,
                         hub.listen_port, hub.engine.online_count,
                         extra={"fields": {"event": "ready", "port": hub.listen_port}})
                hub.ready = True
                task_status.started(hub)
                await shutdown.wait()
                hub.stopping = True
                log.info("shutting down: closing %d connections", len(hub.live),
                         extra={"fields": {"event": "stop", "connections": len(hub.live)}})
                listen_scope.cancel()
                await stopped_accepting.wait()
                hub.listeners = []
                for sock in sockets:
                    sock.close()
                hub.kill_all(Close.SHUTDOWN)
                # Wait for the closing handshakes, then drop whatever is left.
                with trio.move_on_after(SHUTDOWN_GRACE_S):
                    while hub.live:
                        await trio.sleep(0.05)
                connections_scope.cancel()
    finally:
        # However this ends (a cancel from outside included), no socket stays open.
        for sock in sockets:
            sock.close()
        for conn in list(hub.live):
            conn.transport.abort("shutdown")  # type: ignore[attr-defined]


def _guarded_spawn(nursery: trio.Nursery, hub: Hub) -> Spawn:
    """A spawn function for connections' tasks: an error in one must not end the nursery
    (and with it every connection)."""
    metrics = hub.metrics

    async def guarded(task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except Exception:
            metrics.handler_errors += 1
            log.exception("a connection's task failed")

    def spawn(task: Callable[[], Awaitable[None]]) -> None:
        nursery.start_soon(guarded, task)

    return spawn


async def _accept_loop(hub: Hub, sock: socket.socket, poller: Poller) -> None:
    """Accept clients from one listening socket until cancelled, each until EAGAIN.

    At the admission limits (descriptors, sockets awaiting login) the loop waits for room
    instead of accepting: clients wait in the listen backlog and are taken as soon as a
    socket closes or logs in (presenced/server/admission.py says why).
    """
    admission = hub.admission
    metrics = hub.metrics
    errors_logged = RateLimit(60.0)
    pauses_logged = RateLimit(60.0)
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(ACCEPT_BATCH):
            limit = admission.blocking_limit()
            if limit is not None:
                metrics.accept_pauses[limit] += 1
                note = pauses_logged.allow(limit)
                if note is not None:
                    log.warning("not accepting: at the cap of %s (%d sockets, %d awaiting "
                                "login); new clients wait in the listen backlog%s",
                                limit.replace("_", " "), admission.sockets,
                                admission.pending, note,
                                extra={"fields": {"event": "accept-paused", "limit": limit}})
                paused_at = trio.current_time()
                await hub.room()
                metrics.accept_paused_s[limit] += trio.current_time() - paused_at
            try:
                client, address = sock.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in _ACCEPT_TRANSIENT:
                    continue  # that client is gone already
                # Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): the
                # limits should prevent it; pause rather than spin.
                hub.metrics.handler_errors += 1
                note = errors_logged.allow(e.errno)
                if note is not None:
                    log.warning("accepting a connection failed: %s; pausing%s", e, note)
                await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                break
            try:
                _admit(hub, client, address, poller)
            except Exception as e:
                client.close()
                hub.metrics.handler_errors += 1
                # A bug hit by every new client must not flood the log.
                note = errors_logged.allow(type(e))
                if note is not None:
                    log.exception("unexpected error while accepting a connection%s", note)
        else:
            # A long backlog: let the connections run between batches.
            await trio.lowlevel.checkpoint()


def _admit(hub: Hub, client: socket.socket, address: tuple, poller: Poller) -> None:
    config = hub.config
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = address[0], address[1]
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    now = trio.current_time()
    conn = Connection(hub, source_key(host), peer, now)
    conn.transport = accept(
        client, poller, conn, spawn=hub.spawn, max_message_bytes=config.max_frame_bytes,
        queue_limit_bytes=config.send_queue_bytes, close_timeout_s=CLOSE_TIMEOUT_S)
    hub.live.add(conn)
    hub.admission.opened(conn, now)
    hub.login_deadline_added()


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
