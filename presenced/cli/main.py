"""The `presenced` command: `serve` and the operator tools.

Commands are synchronous (Typer has no async commands) and each runs its
own `trio.run`. Every option of `serve` can also be set through an
environment variable `PRESENCED_<OPTION>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from presenced import __version__

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


def _parse_bounds(text: str) -> tuple[int, int, int, int]:
    try:
        min_x, min_y, max_x, max_y = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            "expected MIN_X,MIN_Y,MAX_X,MAX_Y, e.g. -150,-150,163,158"
        ) from None
    if min_x > max_x or min_y > max_y:
        raise typer.BadParameter("minimums must not exceed maximums")
    return min_x, min_y, max_x, max_y


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


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar=_env("HOST"),
                                      help="Address to listen on for WebSockets.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("PORT"),
                                      help="Port to listen on for WebSockets.")] = 8085,
    friends: Annotated[Path | None, typer.Option(
        envvar=_env("FRIENDS"), exists=True, dir_okay=False,
        help="Friendships to load at start (embedded store): CSV lines 'address_a,address_b', "
             "'#' comments, or JSON lines.")] = None,
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
             "since the last pass).")] = 30.0,
    friends_db_full_interval: Annotated[float, typer.Option(
        envvar=_env("FRIENDS_DB_FULL_INTERVAL"), min=1, metavar="SECONDS",
        help="Seconds between full comparisons with the friends database (every row).")
    ] = 900.0,
    friends_db_overlap: Annotated[float, typer.Option(
        envvar=_env("FRIENDS_DB_OVERLAP"), min=0, metavar="SECONDS",
        help="Incremental passes re-read rows changed this long before the previous pass "
             "(transactions that commit late).")] = 120.0,
    social_events_url: Annotated[str | None, typer.Option(
        envvar=_env("SOCIAL_EVENTS_URL"), metavar="URL",
        help="The social service's Redis (redis://HOST:PORT/DB, may be --redis-url's): its "
             "friendship.updates and block.updates are applied as they come (with "
             "--friends-db), and --publish-social-status publishes there.")] = None,
    publish_social_status: Annotated[bool, typer.Option(
        "--publish-social-status", envvar=_env("PUBLISH_SOCIAL_STATUS"),
        help="Publish every online/offline transition on friend.status.updates of "
             "--social-events-url, once across all instances.")] = False,
    redis_url: Annotated[str | None, typer.Option(
        envvar=_env("REDIS_URL"),
        help="Use the shared Redis store at this URL (redis://host:port/db) instead of the "
             "embedded store; required for several instances.")] = None,
    redis_pool_size: Annotated[int, typer.Option(
        envvar=_env("REDIS_POOL_SIZE"), min=1,
        help="Most connections to Redis this process opens.")] = 16,
    redis_timeout: Annotated[float, typer.Option(
        envvar=_env("REDIS_TIMEOUT"), min=0.1,
        help="Seconds any single Redis call may take (connect and socket timeouts).")] = 5.0,
    redis_flush_interval: Annotated[float, typer.Option(
        envvar=_env("REDIS_FLUSH_INTERVAL"), min=0.001,
        help="Seconds between batched presence writes to Redis.")] = 0.05,
    redis_resync_interval: Annotated[float, typer.Option(
        envvar=_env("REDIS_RESYNC_INTERVAL"), min=1,
        help="Seconds between full comparisons of local state with Redis.")] = 30.0,
    admin_host: Annotated[str, typer.Option(
        envvar=_env("ADMIN_HOST"),
        help="Address of the admin and metrics HTTP endpoint; off loopback it requires "
             "PRESENCED_ADMIN_TOKEN.")] = "127.0.0.1",
    admin_port: Annotated[int, typer.Option(
        envvar=_env("ADMIN_PORT"), help="Port of the admin and metrics HTTP endpoint.")] = 8086,
    admin_token: Annotated[str | None, typer.Option(
        envvar=_env("ADMIN_TOKEN"), show_default=False,
        help="Bearer token the admin endpoint requires (prefer the environment variable).")
    ] = None,
    ttl: Annotated[float, typer.Option(envvar=_env("TTL"), min=1,
                                       help="Seconds without a sign of life before a user is "
                                            "offline.")] = 120.0,
    offline_grace: Annotated[float, typer.Option(
        envvar=_env("OFFLINE_GRACE"), min=0,
        help="Seconds after a user's last connection closes before friends are told OFFLINE; "
             "a reconnect within it is invisible.")] = 5.0,
    heartbeat_rate: Annotated[float, typer.Option(
        envvar=_env("HEARTBEAT_RATE"), min=0.001,
        help="Heartbeats per second allowed per connection; more get a too-many-requests "
             "error.")] = 1.0,
    heartbeat_burst: Annotated[int, typer.Option(
        envvar=_env("HEARTBEAT_BURST"), min=1,
        help="Heartbeats a connection may send back to back before the rate applies.")] = 2,
    bounds: Annotated[str, typer.Option(
        envvar=_env("BOUNDS"),
        help="Accepted parcel coordinates as MIN_X,MIN_Y,MAX_X,MAX_Y.")] = "-1000,-1000,1000,1000",
    realm_max_bytes: Annotated[int, typer.Option(
        envvar=_env("REALM_MAX_BYTES"), min=1,
        help="Longest accepted realm name, in UTF-8 bytes.")] = 128,
    auth_timeout: Annotated[float, typer.Option(
        envvar=_env("AUTH_TIMEOUT"), min=0.1,
        help="Seconds a new connection has to send its login frame (else closed with 3004).")
    ] = 30.0,
    auth_window: Annotated[float, typer.Option(
        envvar=_env("AUTH_WINDOW"), min=1,
        help="Seconds the signed login timestamp may differ from the server's clock.")] = 300.0,
    max_frame_bytes: Annotated[int, typer.Option(
        envvar=_env("MAX_FRAME_BYTES"), min=256,
        help="Largest inbound WebSocket message; larger ones close the connection with "
             "1009.")] = 16384,
    ping_interval: Annotated[float, typer.Option(
        envvar=_env("PING_INTERVAL"), min=0.1,
        help="Seconds of silence after which a connection is pinged (at most a quarter of "
             "--ttl).")] = 30.0,
    ping_timeout: Annotated[float, typer.Option(
        envvar=_env("PING_TIMEOUT"), min=0.1,
        help="Seconds a connection has to answer a ping before it is closed.")] = 30.0,
    send_queue_bytes: Annotated[int, typer.Option(
        envvar=_env("SEND_QUEUE_BYTES"), min=1024,
        help="Bytes queued for one connection beyond what its socket takes before it counts "
             "as too slow and is disconnected.")] = 256 * 1024,
    stuck_timeout: Annotated[float, typer.Option(
        envvar=_env("STUCK_TIMEOUT"), min=1,
        help="Seconds a subscriber may leave a stream item unacknowledged while updates "
             "wait before it is disconnected.")] = 60.0,
    max_connections: Annotated[int, typer.Option(
        envvar=_env("MAX_CONNECTIONS"), min=0,
        help="Connections accepted at once (0: no limit); past it new ones close with "
             "1013.")] = 0,
    sweep_interval: Annotated[float, typer.Option(
        envvar=_env("SWEEP_INTERVAL"), min=0.1,
        help="Seconds between sweeps for users whose instance vanished.")] = 5.0,
    workers: Annotated[int, typer.Option(
        envvar=_env("WORKERS"), min=1,
        help="Processes sharing the WebSocket port (SO_REUSEPORT), one per core; more than "
             "one requires --redis-url. Worker i serves its admin endpoint on admin-port + i."
    )] = 1,
    log_level: Annotated[str, typer.Option(
        envvar=_env("LOG_LEVEL"), help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the presence daemon."""
    from presenced.engine import EngineConfig
    from presenced.graph.source import SourceUnavailable
    from presenced.server.app import ConfigError, run_until_signalled
    from presenced.server.config import ServerConfig
    from presenced.server.runtime import setup_logging, tune_gc

    min_x, min_y, max_x, max_y = _parse_bounds(bounds)
    _check_graph_options(friends, blocks, friends_db, social_events_url, publish_social_status)
    if workers > 1 and not redis_url:
        raise typer.BadParameter(
            "several workers share their state through Redis: add --redis-url",
            param_hint="--workers",
        )
    config = ServerConfig(
        host=host,
        port=port,
        auth_timeout_s=auth_timeout,
        auth_window_ms=int(auth_window * 1000),
        max_frame_bytes=max_frame_bytes,
        ping_interval_s=ping_interval,
        ping_timeout_s=ping_timeout,
        send_queue_bytes=send_queue_bytes,
        stuck_timeout_s=stuck_timeout,
        max_connections=max_connections,
        sweep_interval_s=sweep_interval,
        friends_file=str(friends) if friends else None,
        blocks_file=str(blocks) if blocks else None,
        friends_db_url=friends_db or None,
        friends_db_reconcile_interval_s=friends_db_reconcile_interval,
        friends_db_full_interval_s=friends_db_full_interval,
        friends_db_overlap_s=friends_db_overlap,
        social_events_url=social_events_url or None,
        publish_social_status=publish_social_status,
        admin_host=admin_host,
        admin_port=admin_port,
        admin_token=admin_token or None,
        redis_url=redis_url,
        redis_pool_size=redis_pool_size,
        redis_socket_timeout_s=redis_timeout,
        redis_flush_interval_s=redis_flush_interval,
        redis_resync_interval_s=redis_resync_interval,
        workers=workers,
        engine=EngineConfig(
            ttl_ms=int(ttl * 1000),
            offline_grace_ms=int(offline_grace * 1000),
            heartbeat_rate=heartbeat_rate,
            heartbeat_burst=heartbeat_burst,
            realm_max_bytes=realm_max_bytes,
            min_x=min_x,
            max_x=max_x,
            min_y=min_y,
            max_y=max_y,
        ),
    )
    setup_logging(log_level)
    if workers > 1:
        from presenced.server.workers import supervise

        raise typer.Exit(supervise(config, log_level))

    tune_gc()
    try:
        run_until_signalled(config)
    except ConfigError as e:
        typer.echo(f"presenced: {e}", err=True)
        raise typer.Exit(2) from None
    except SourceUnavailable as e:
        typer.echo(f"presenced: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# The operator tools: clients of the admin endpoint, one module per concern.
from presenced.cli import blocks, friends, seed, simulate, who  # noqa: E402

app.command("who-online")(who.who_online)
app.add_typer(friends.app, name="friends")
app.add_typer(blocks.app, name="blocks")
app.add_typer(seed.app, name="seed")
app.command("simulate")(simulate.simulate)


def main() -> None:
    app()
