"""The `presenced` command: `serve` and the operator tools.

Commands are synchronous (Typer has no async commands) and each runs its
own `trio.run`. Every option of `serve` can also be set through an
environment variable `PRESENCED_<OPTION>`; its defaults are those of
`ServerConfig()` and `EngineConfig()`, the one place they are stated.

Shell completion imports this module (and the command modules) on every
TAB: anything slow to import (trio, httpx, rich, the server) is imported
inside the command that needs it.
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from presenced import __version__
from presenced.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from presenced.server.config import ServerConfig

app = typer.Typer(
    name="presenced",
    help="Real-time presence daemon for Decentraland-style social services.\n\n"
         "`presenced serve` runs the daemon. The other commands are operator tools that "
         "talk to a running daemon through its admin endpoint (--admin-url, default "
         "http://127.0.0.1:8086; token in PRESENCED_ADMIN_TOKEN): who-online inspects a "
         "user, friends and blocks edit friendships and blocks, seed loads friendship "
         "graphs and marks synthetic users online, simulate puts realistic load on daemons "
         "and measures it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"presenced {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:
    """Real-time presence daemon for Decentraland-style social services."""


def _env(name: str) -> str:
    return f"PRESENCED_{name}"


# The defaults of every serve option (help shows them).
_SERVER = ServerConfig()
_ENGINE = _SERVER.engine


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _parse_bounds(text: str) -> tuple[int, int, int, int]:
    try:
        min_x, min_y, max_x, max_y = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            "expected MIN_X,MIN_Y,MAX_X,MAX_Y, e.g. -150,-150,163,158",
            param_hint="--bounds",
        ) from None
    if min_x > max_x or min_y > max_y:
        raise typer.BadParameter("minimums must not exceed maximums", param_hint="--bounds")
    return min_x, min_y, max_x, max_y


def _seconds(ms: int) -> float:
    return ms / 1000


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(envvar=_env("HOST"),
                                      help="Address to listen on for WebSockets.")] = _SERVER.host,
    port: Annotated[int, typer.Option(envvar=_env("PORT"), min=0, max=65535,
                                      help="Port to listen on for WebSockets (0: any free "
                                           "port).")] = _SERVER.port,
    friends: Annotated[Path | None, typer.Option(
        envvar=_env("FRIENDS"), exists=True, dir_okay=False,
        help="Friendships to load at start, into the embedded store or (idempotently) into "
             "Redis, which also rebuilds them from this file if it loses its data: CSV lines "
             "'address_a,address_b' (a header line, a UTF-8 byte-order mark and CRLF line ends "
             "are accepted), '#' comments, or JSON lines.")] = None,
    blocks: Annotated[Path | None, typer.Option(
        envvar=_env("BLOCKS"), exists=True, dir_okay=False,
        help="Blocks to load at start: lines 'blocker,blocked' ('#' comments) or JSON lines. "
             "A block either way hides two users from each other.")] = None,
    friends_db: Annotated[str | None, typer.Option(
        envvar=_env("FRIENDS_DB"), metavar="URL",
        help="The social service's PostgreSQL (postgresql://USER@HOST:PORT/DB): the one "
             "source of friendships and blocks, loaded at start and kept current "
             "(docs/friends.md). Not with --friends or --blocks.")] = None,
    friends_db_reconcile_interval: Annotated[float, typer.Option(
        envvar=_env("FRIENDS_DB_RECONCILE_INTERVAL"), min=0.1, metavar="SECONDS",
        help="Seconds between incremental passes over the friends database (rows changed "
             "since the last pass).")] = _SERVER.friends_db_reconcile_interval_s,
    friends_db_full_interval: Annotated[float, typer.Option(
        envvar=_env("FRIENDS_DB_FULL_INTERVAL"), min=1, metavar="SECONDS",
        help="Seconds between full comparisons with the friends database (every row).")
    ] = _SERVER.friends_db_full_interval_s,
    friends_db_overlap: Annotated[float, typer.Option(
        envvar=_env("FRIENDS_DB_OVERLAP"), min=0, metavar="SECONDS",
        help="Incremental passes re-read rows changed this long before the previous pass "
             "(transactions that commit late).")] = _SERVER.friends_db_overlap_s,
    social_events_url: Annotated[str | None, typer.Option(
        envvar=_env("SOCIAL_EVENTS_URL"), metavar="URL",
        help="The social service's Redis (redis://HOST:PORT/DB, may be --redis-url's): its "
             "friendship.updates and block.updates are applied as they come (with "
             "--friends-db), and --publish-social-status publishes there.")] = None,
    publish_social_status: Annotated[bool, typer.Option(
        "--publish-social-status", envvar=_env("PUBLISH_SOCIAL_STATUS"),
        help="Publish every online/offline transition on friend.status.updates of "
             "--social-events-url, once across all instances.")] = False,
    profiles_url: Annotated[str | None, typer.Option(
        envvar=_env("PROFILES_URL"),
        help="Catalyst lambdas base URL (https://peer.decentraland.org/lambdas) for friends' "
             "names and pictures in the SocialService v2 module; without it, addresses only."
    )] = _SERVER.profiles_url,
    redis_url: Annotated[str | None, typer.Option(
        envvar=_env("REDIS_URL"),
        help="Use the shared Redis store at this URL (redis://host:port/db) instead of the "
             "embedded store; required for several instances.")] = _SERVER.redis_url,
    redis_pool_size: Annotated[int, typer.Option(
        envvar=_env("REDIS_POOL_SIZE"), min=1,
        help="Most connections to Redis this process opens.")] = _SERVER.redis_pool_size,
    redis_timeout: Annotated[float, typer.Option(
        envvar=_env("REDIS_TIMEOUT"), min=0.1,
        help="Seconds any single Redis call may take (connect and socket timeouts).")
    ] = _SERVER.redis_socket_timeout_s,
    redis_flush_interval: Annotated[float, typer.Option(
        envvar=_env("REDIS_FLUSH_INTERVAL"), min=0.001,
        help="Seconds a presence write that changes nothing for others (a refresh) may wait "
             "before it is written to Redis, batched with others; changes wait as long while "
             "no other instance listens.")
    ] = _SERVER.redis_flush_interval_s,
    redis_flush_min_gap: Annotated[float, typer.Option(
        envvar=_env("REDIS_FLUSH_MIN_GAP"), min=0,
        help="Seconds between flushes at least, when a change (online, moved, offline) is "
             "written at once so that other instances hear of it without waiting for "
             "--redis-flush-interval.")] = _SERVER.redis_flush_min_gap_s,
    redis_resync_interval: Annotated[float, typer.Option(
        envvar=_env("REDIS_RESYNC_INTERVAL"), min=1,
        help="Seconds between full comparisons of local state with Redis.")
    ] = _SERVER.redis_resync_interval_s,
    startup_timeout: Annotated[float, typer.Option(
        envvar=_env("STARTUP_TIMEOUT"), min=0,
        help="Seconds start-up may take (waiting for Redis) before the daemon gives up with "
             "exit status 1; 0 waits for ever. /readyz says what it waits for meanwhile.")
    ] = _SERVER.startup_timeout_s,
    admin_host: Annotated[str, typer.Option(
        envvar=_env("ADMIN_HOST"),
        help="Address of the admin and metrics HTTP endpoint; off loopback it requires "
             "PRESENCED_ADMIN_TOKEN.")] = _SERVER.admin_host,
    admin_port: Annotated[int, typer.Option(
        envvar=_env("ADMIN_PORT"), min=0, max=65535,
        help="Port of the admin and metrics HTTP endpoint (0: any free port).")
    ] = _SERVER.admin_port,
    admin_token: Annotated[str | None, typer.Option(
        envvar=_env("ADMIN_TOKEN"), show_default=False,
        help="Bearer token the admin endpoint requires (prefer the environment variable).")
    ] = _SERVER.admin_token,
    ttl: Annotated[float, typer.Option(envvar=_env("TTL"), min=1,
                                       help="Seconds without a sign of life before a user is "
                                            "offline.")] = _seconds(_ENGINE.ttl_ms),
    offline_grace: Annotated[float, typer.Option(
        envvar=_env("OFFLINE_GRACE"), min=0,
        help="Seconds after a user's last connection closes before friends are told OFFLINE; "
             "a reconnect within it is invisible.")] = _seconds(_ENGINE.offline_grace_ms),
    heartbeat_rate: Annotated[float, typer.Option(
        envvar=_env("HEARTBEAT_RATE"), min=0.001,
        help="Heartbeats per second allowed per connection; more get a too-many-requests "
             "error.")] = _ENGINE.heartbeat_rate,
    heartbeat_burst: Annotated[int, typer.Option(
        envvar=_env("HEARTBEAT_BURST"), min=1,
        help="Heartbeats a connection may send back to back before the rate applies.")
    ] = _ENGINE.heartbeat_burst,
    bounds: Annotated[str, typer.Option(
        envvar=_env("BOUNDS"),
        help="Accepted parcel coordinates as MIN_X,MIN_Y,MAX_X,MAX_Y.")
    ] = f"{_ENGINE.min_x},{_ENGINE.min_y},{_ENGINE.max_x},{_ENGINE.max_y}",
    realm_max_bytes: Annotated[int, typer.Option(
        envvar=_env("REALM_MAX_BYTES"), min=1,
        help="Longest accepted realm name, in UTF-8 bytes.")] = _ENGINE.realm_max_bytes,
    auth_timeout: Annotated[float, typer.Option(
        envvar=_env("AUTH_TIMEOUT"), min=0.1,
        help="Seconds a new connection has to send its login frame (else closed with 3004).")
    ] = _SERVER.auth_timeout_s,
    auth_window: Annotated[float, typer.Option(
        envvar=_env("AUTH_WINDOW"), min=1,
        help="Seconds the signed login timestamp may differ from the server's clock.")
    ] = _seconds(_SERVER.auth_window_ms),
    max_frame_bytes: Annotated[int, typer.Option(
        envvar=_env("MAX_FRAME_BYTES"), min=256,
        help="Largest inbound WebSocket message; larger ones close the connection with "
             "1009.")] = _SERVER.max_frame_bytes,
    ping_interval: Annotated[float, typer.Option(
        envvar=_env("PING_INTERVAL"), min=0.1,
        help="Seconds of silence after which a connection is pinged (at most a quarter of "
             "--ttl).")] = _SERVER.ping_interval_s,
    ping_timeout: Annotated[float, typer.Option(
        envvar=_env("PING_TIMEOUT"), min=0.1,
        help="Seconds a connection has to answer a ping before it is closed.")
    ] = _SERVER.ping_timeout_s,
    send_queue_bytes: Annotated[int, typer.Option(
        envvar=_env("SEND_QUEUE_BYTES"), min=1024,
        help="Bytes queued for one connection beyond what its socket takes before it counts "
             "as too slow and is disconnected.")] = _SERVER.send_queue_bytes,
    stuck_timeout: Annotated[float, typer.Option(
        envvar=_env("STUCK_TIMEOUT"), min=1,
        help="Seconds a subscriber may leave a stream item unacknowledged while updates "
             "wait before it is disconnected.")] = _SERVER.stuck_timeout_s,
    max_connections: Annotated[int, typer.Option(
        envvar=_env("MAX_CONNECTIONS"), min=0,
        help="Logged-in connections at once; past it a login is refused with 1013. 0: as "
             "many as the open-files limit (ulimit -n) allows, less a reserve for the admin "
             "endpoint, Redis and logs.")] = _SERVER.max_connections,
    max_pending_logins: Annotated[int, typer.Option(
        envvar=_env("MAX_PENDING_LOGINS"), min=0,
        help="Sockets awaiting their login at once, in total; at the limit new clients wait "
             "in the listen backlog. 0: what the open-files limit allows, at most "
             "16384.")] = _SERVER.max_pending_logins,
    max_pending_logins_per_address: Annotated[int, typer.Option(
        envvar=_env("MAX_PENDING_LOGINS_PER_ADDRESS"), min=0,
        help="Sockets awaiting their login from one source address (an IPv6 /64) past which "
             "those silent for 3 s are closed with 1013. 0: 64.")
    ] = _SERVER.max_pending_logins_per_address,
    max_streams: Annotated[int, typer.Option(
        envvar=_env("MAX_STREAMS"), min=1,
        help="Streams one connection may hold open at once; past it a call gets a "
             "RemoteError.")] = _SERVER.max_streams_per_connection,
    max_ports: Annotated[int, typer.Option(
        envvar=_env("MAX_PORTS"), min=1,
        help="RPC ports one connection may open (clients open one).")
    ] = _SERVER.max_ports_per_connection,
    max_port_name_bytes: Annotated[int, typer.Option(
        envvar=_env("MAX_PORT_NAME_BYTES"), min=1,
        help="Longest RPC port name accepted, in UTF-8 bytes.")] = _SERVER.max_port_name_bytes,
    max_messages_per_second: Annotated[float, typer.Option(
        envvar=_env("MAX_MESSAGES_PER_SECOND"), min=1,
        help="Inbound messages per second one connection may send, sustained; a flood past "
             "it (and past --message-burst) closes the connection with 1008.")
    ] = _SERVER.max_messages_per_s,
    message_burst: Annotated[int, typer.Option(
        envvar=_env("MESSAGE_BURST"), min=1,
        help="Inbound messages one connection may send back to back beyond the sustained "
             "rate.")] = _SERVER.message_burst,
    sweep_interval: Annotated[float, typer.Option(
        envvar=_env("SWEEP_INTERVAL"), min=0.1,
        help="Seconds between sweeps for users whose instance vanished.")
    ] = _SERVER.sweep_interval_s,
    workers: Annotated[int, typer.Option(
        envvar=_env("WORKERS"), min=1,
        help="Processes sharing the WebSocket port (SO_REUSEPORT), one per core; more than "
             "one requires --redis-url. Worker i serves its admin endpoint on admin-port + i."
    )] = _SERVER.workers,
    log_level: Annotated[LogLevel, typer.Option(
        envvar=_env("LOG_LEVEL"), case_sensitive=False,
        help="Least severe log lines written (on standard error).")] = LogLevel.info,
    log_format: Annotated[LogFormat, typer.Option(
        envvar=_env("LOG_FORMAT"), case_sensitive=False,
        help="text: one readable line per event; json: one JSON object per line (ts, "
             "level, logger, msg, worker and the event's fields).")] = LogFormat.text,
    check: Annotated[bool, typer.Option(
        "--check",
        help="Check the configuration (options, environment, --friends file, --redis-url "
             "syntax) and print the effective settings, then exit 0, or 2 with the problem. "
             "Nothing is started: no port is bound and Redis is not contacted.")] = False,
) -> None:
    """Run the presence daemon.

    Start-up binds both ports first (a port in use fails at once), then
    serves the admin endpoint: /healthz answers, /readyz is 503 with the
    reason ("starting: waiting for Redis") until the store has loaded and
    the WebSocket port listens. SIGTERM or SIGINT stop the daemon at any
    moment, start-up included: connections are closed with 1001 and the
    exit status is 0. A start that cannot complete within --startup-timeout
    ends with one line on standard error and exit status 1.

    The log (standard error) has one line per notable event: the start-up
    line (version, pid, instance id, worker, store, ports, limits), ready,
    Redis lost and back, resynchronisations, shutdown, and an audit trail
    of admin changes; with --workers each line names its worker.
    """
    config = build_config(ctx.params)
    level, fmt = _choice(log_level), _choice(log_format)
    if check:
        raise typer.Exit(_check(ctx, config))

    from presenced.logs import setup_logging
    from presenced.server.app import ConfigError, StartupFailed, run_until_signalled
    from presenced.server.runtime import tune_gc

    if workers > 1:
        from presenced.server.workers import supervise

        setup_logging(level, fmt, worker="supervisor")
        raise typer.Exit(supervise(config, level, fmt))
    setup_logging(level, fmt)
    tune_gc()
    try:
        run_until_signalled(config)
    except ConfigError as e:
        typer.echo(f"presenced: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except StartupFailed as e:
        typer.echo(f"presenced: {e}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _choice(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value).lower()


def build_config(options: dict[str, Any]) -> ServerConfig:
    """The ServerConfig for `serve`'s option values (by parameter name)."""
    from presenced.engine import EngineConfig

    min_x, min_y, max_x, max_y = _parse_bounds(options["bounds"])
    profiles_url = options["profiles_url"]
    if profiles_url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", profiles_url):
        raise typer.BadParameter("expected an http:// or https:// URL",
                                 param_hint="--profiles-url")
    if options["workers"] > 1 and not options["redis_url"]:
        raise typer.BadParameter(
            "several workers share their state through Redis: add --redis-url",
            param_hint="--workers",
        )
    last_admin_port = options["admin_port"] + options["workers"] - 1
    if options["admin_port"] and last_admin_port > 65535:
        raise typer.BadParameter(
            f"worker {options['workers'] - 1} would serve its admin endpoint on port "
            f"{last_admin_port}, past 65535", param_hint="--admin-port")
    friends = options["friends"]
    blocks = options["blocks"]
    _check_graph_options(friends, blocks, options["friends_db"], options["social_events_url"],
                         options["publish_social_status"])
    return ServerConfig(
        host=options["host"],
        port=options["port"],
        auth_timeout_s=options["auth_timeout"],
        auth_window_ms=round(options["auth_window"] * 1000),
        max_frame_bytes=options["max_frame_bytes"],
        ping_interval_s=options["ping_interval"],
        ping_timeout_s=options["ping_timeout"],
        send_queue_bytes=options["send_queue_bytes"],
        stuck_timeout_s=options["stuck_timeout"],
        max_connections=options["max_connections"],
        max_pending_logins=options["max_pending_logins"],
        max_pending_logins_per_address=options["max_pending_logins_per_address"],
        max_streams_per_connection=options["max_streams"],
        max_ports_per_connection=options["max_ports"],
        max_port_name_bytes=options["max_port_name_bytes"],
        max_messages_per_s=options["max_messages_per_second"],
        message_burst=options["message_burst"],
        sweep_interval_s=options["sweep_interval"],
        friends_file=str(friends) if friends else None,
        blocks_file=str(blocks) if blocks else None,
        friends_db_url=options["friends_db"] or None,
        friends_db_reconcile_interval_s=options["friends_db_reconcile_interval"],
        friends_db_full_interval_s=options["friends_db_full_interval"],
        friends_db_overlap_s=options["friends_db_overlap"],
        social_events_url=options["social_events_url"] or None,
        publish_social_status=options["publish_social_status"],
        profiles_url=profiles_url or None,
        admin_host=options["admin_host"],
        admin_port=options["admin_port"],
        admin_token=options["admin_token"] or None,
        redis_url=options["redis_url"] or None,
        redis_pool_size=options["redis_pool_size"],
        redis_socket_timeout_s=options["redis_timeout"],
        redis_flush_interval_s=options["redis_flush_interval"],
        redis_flush_min_gap_s=options["redis_flush_min_gap"],
        redis_resync_interval_s=options["redis_resync_interval"],
        startup_timeout_s=options["startup_timeout"],
        workers=options["workers"],
        engine=EngineConfig(
            ttl_ms=round(options["ttl"] * 1000),
            offline_grace_ms=round(options["offline_grace"] * 1000),
            heartbeat_rate=options["heartbeat_rate"],
            heartbeat_burst=options["heartbeat_burst"],
            realm_max_bytes=options["realm_max_bytes"],
            min_x=min_x,
            max_x=max_x,
            min_y=min_y,
            max_y=max_y,
        ),
    )


def _check_graph_options(
    friends: Path | None, blocks: Path | None, friends_db: str | None,
    social_events_url: str | None, publish_social_status: bool,
) -> None:
    if friends_db:
        from presenced.graph.postgres import check_url

        for given, name in ((friends, "--friends"), (blocks, "--blocks")):
            if given is not None:
                raise typer.BadParameter(
                    f"the friends database is the one source of friendships and blocks: "
                    f"drop {name}", param_hint="--friends-db")
        problem = check_url(friends_db)
        if problem:
            raise typer.BadParameter(problem, param_hint="--friends-db")
    if social_events_url:
        if not social_events_url.startswith(("redis://", "rediss://", "unix://")):
            raise typer.BadParameter("expected redis://HOST:PORT/DB",
                                     param_hint="--social-events-url")
        if not friends_db and not publish_social_status:
            raise typer.BadParameter("only used with --friends-db or --publish-social-status",
                                     param_hint="--social-events-url")
    elif publish_social_status:
        raise typer.BadParameter("needs --social-events-url (the Redis to publish on)",
                                 param_hint="--publish-social-status")


def _check(ctx: typer.Context, config: ServerConfig) -> int:
    """`serve --check`: the server's own checks, then the effective settings."""
    import trio

    from presenced.logs import redact_url
    from presenced.server.app import ConfigError, build_store, check_config, read_friends_file

    async def check_store() -> None:
        check_config(config)
        read_friends_file(config)
        store = build_store(config)
        await store.aclose()

    try:
        trio.run(check_store)
    except ConfigError as e:
        typer.echo(f"presenced: {e}", err=True)
        return EXIT_USAGE
    rows = []
    for param in ctx.command.params:
        name = param.name
        if name in ("check", "help") or not param.opts:
            continue
        value = ctx.params.get(name)
        if name == "admin_token":
            value = "(set)" if value else "(not set)"
        elif name in ("redis_url", "social_events_url") and value:
            value = redact_url(value)
        elif name == "friends_db" and value:
            from presenced.graph.postgres import safe_url

            value = safe_url(value)
        elif isinstance(value, Enum):
            value = value.value
        source = ctx.get_parameter_source(name)
        origin = source.name.lower() if source is not None else "default"
        if origin == "environment" and param.envvar:
            origin = f"environment ({param.envvar})"
        elif origin == "commandline":
            origin = "command line"
        rows.append((param.opts[0], "" if value is None else str(value), origin))
    width = max(len(r[0]) for r in rows)
    value_width = min(40, max(len(r[1]) for r in rows))
    typer.echo(f"presenced serve: the configuration is valid ({config.store_kind} store; "
               "--check: nothing started)")
    for option, value, origin in rows:
        typer.echo(f"  {option:<{width}}  {value:<{value_width}}  {origin}")
    return 0


# The operator tools: clients of the admin endpoint, one module per concern.
from presenced.cli import blocks, friends, seed, simulate, status, who  # noqa: E402

app.command("status")(status.status)
app.command("who-online")(who.who_online)
app.add_typer(friends.app, name="friends")
app.add_typer(blocks.app, name="blocks")
app.add_typer(seed.app, name="seed")
app.command("simulate")(simulate.simulate)


def main(args: list[str] | None = None) -> None:
    """The console script: usage errors as one line (and JSON with --json)."""
    argv = sys.argv[1:] if args is None else args
    try:
        code = app(args=argv, prog_name="presenced", standalone_mode=False)
    except typer.Abort:
        code = EXIT_ERROR
    except Exception as e:
        # Click's usage errors (bad option values, unknown options): their
        # public face is format_message() and exit_code.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        code = e.exit_code
        message = e.format_message()
        command = getattr(getattr(e, "ctx", None), "command_path", "presenced")
        typer.echo(f"{command}: {message} (see '{command} --help')", err=True)
        if "--json" in argv[: argv.index("--") if "--" in argv else len(argv)]:
            sys.stdout.write(json.dumps({"error": message, "code": code}) + "\n")
    sys.exit(code if isinstance(code, int) else 0)
