"""`presenced simulate`: realistic load from virtual users, with latency and a correctness check."""

from __future__ import annotations

import ipaddress
import signal
import socket
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from presenced.cli.common import (
    DEFAULT_ADMIN_URL,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AdminClient,
    AdminUrlOption,
    CliError,
    JsonOption,
    TokenOption,
    fail,
    handle_errors,
    print_json,
    report,
    stderr_console,
    stdout_console,
)
from presenced.cli.seed import _parse_area, _send_lines
from presenced.cli.seed_db import check_db_url, database_graph
from presenced.simulate.plan import DEFAULT_AREA, DEFAULT_REALMS

if TYPE_CHECKING:
    from presenced.simulate.plan import SimConfig
    from presenced.socialgraph import SocialGraph

# The simulator itself (its processes, trio, rich's live display) is
# imported when a run starts: shell completion imports this module.

DEFAULT_TARGET = "ws://127.0.0.1:8085/"
# Margin over the daemon's offline grace before views are compared.
SETTLE_MARGIN_S = 2.0
# Used when the admin endpoint cannot tell (with --no-seed and no endpoint).
ASSUMED_GRACE_S = 5.0


@handle_errors
def simulate(
    targets: Annotated[list[str] | None, typer.Option(
        "--target", metavar="URL", show_default=False, envvar="PRESENCED_TARGET",
        help="WebSocket URL of a daemon; repeat to spread the users round-robin over "
             "several (default: the WebSocket port of the daemon at --admin-url, on that "
             f"host; {DEFAULT_TARGET} if it cannot tell).")] = None,
    users: Annotated[int, typer.Option(
        "--users", min=2, metavar="N",
        help="Users in the social graph (the graph of `seed friendships --random` with the "
             "same --users, --avg-friends and --seed).")] = 1000,
    avg_friends: Annotated[float, typer.Option(
        "--avg-friends", min=0, metavar="K", help="Average friends per user.")] = 20.0,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="S",
        help="Seed of the graph, the users' keys and every random choice of the run.")] = 0,
    online_fraction: Annotated[float, typer.Option(
        "--online-fraction", min=0, max=1, metavar="F",
        help="Fraction of the graph's users that connect; the others never do.")] = 0.5,
    subscribe_fraction: Annotated[float, typer.Option(
        "--subscribe-fraction", min=0, max=1, metavar="F",
        help="Fraction of the connecting users that subscribe to their friends' updates.")
    ] = 1.0,
    duration: Annotated[float, typer.Option(
        "--duration", min=0, metavar="SECONDS",
        help="Real seconds of load after every user made its first login.")] = 60.0,
    speed: Annotated[float, typer.Option(
        "--speed", min=0.001, metavar="X",
        help="Time compression: every interval (heartbeats, churn, reconnects) is divided by "
             "X. The daemon's own timers (offline grace, TTL, rate limit) are not.")] = 1.0,
    heartbeat_interval: Annotated[float, typer.Option(
        "--heartbeat-interval", min=0.001, metavar="SECONDS",
        help="Simulated seconds between a user's heartbeats.")] = 30.0,
    jitter: Annotated[float, typer.Option(
        "--jitter", metavar="F",
        help="Each interval is drawn uniformly within ±F of its nominal value.")] = 0.1,
    move_probability: Annotated[float, typer.Option(
        "--move-probability", metavar="P",
        help="Probability that a heartbeat moves the user (a heartbeat that does not move "
             "changes nothing friends see).")] = 0.8,
    realm_probability: Annotated[float, typer.Option(
        "--realm-probability", metavar="P",
        help="Probability that a move changes realm (and jumps to a random parcel) instead "
             "of walking to a nearby parcel.")] = 0.1,
    realms: Annotated[list[str] | None, typer.Option(
        "--realm", metavar="REALM", show_default=False,
        help=f"Realm users go to; repeat for several (default: {', '.join(DEFAULT_REALMS)}).")
    ] = None,
    area: Annotated[str, typer.Option(
        "--area", metavar="MIN_X,MIN_Y,MAX_X,MAX_Y", help="Parcels users move on.")
    ] = ",".join(str(v) for v in DEFAULT_AREA),
    churn: Annotated[float, typer.Option(
        "--churn", min=0, metavar="PER_HOUR",
        help="Disconnects per connected user per simulated hour (sessions last 60/PER_HOUR "
             "minutes on average); 0 disables churn.")] = 2.0,
    reconnect_delay: Annotated[float, typer.Option(
        "--reconnect-delay", min=0, metavar="SECONDS",
        help="Simulated seconds a churned user stays away (uniform within ±50 %).")] = 10.0,
    churn_fraction: Annotated[float | None, typer.Option(
        "--churn-fraction", min=0, max=1, metavar="F", show_default=False,
        help="Only this fraction of the connecting users churns, and never subscribes; the "
             "others stay connected all run and --subscribe-fraction picks subscribers among "
             "them: steady subscribers watching friends come and go (default: everyone "
             "churns).")] = None,
    ramp: Annotated[float, typer.Option(
        "--ramp", min=0.1, metavar="LOGINS_PER_S",
        help="Initial logins per second, over all processes. Each login costs the daemon "
             "and the generator a few milliseconds of CPU (handshake, AuthChain, RPC set-up): "
             "too fast a ramp only queues them.")] = 100.0,
    processes: Annotated[int, typer.Option(
        "--processes", min=1, metavar="P",
        help="Load-generator processes; each drives its share of the users.")] = 1,
    source_addresses: Annotated[str | None, typer.Option(
        "--source-addresses", metavar="ADDR,...", show_default=False,
        help="Local addresses to connect from, round-robin (e.g. 127.0.0.1,127.0.0.2): one "
             "address has only ~28,000 ephemeral ports. Only for ws:// targets.")] = None,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0.1, metavar="SECONDS",
        help="Seconds a login (connect, handshake, SERVER_READY, module) or a heartbeat's "
             "answer may take before it counts as an error.")] = 10.0,
    settle: Annotated[float | None, typer.Option(
        "--settle", min=0, metavar="SECONDS", show_default=False,
        help=f"Seconds to wait after the load before comparing what subscribers saw with "
             f"their friends' final state (default: the daemon's offline grace + "
             f"{SETTLE_MARGIN_S:g}).")] = None,
    no_heartbeats: Annotated[bool, typer.Option(
        "--no-heartbeats", help="Users only log in and stay connected, answering the daemon's "
                                "pings, as a SocialService v2 client does; they never send a "
                                "PositionHeartbeat (idle connections).")] = False,
    subscribe_protocol: Annotated[str, typer.Option(
        "--subscribe-protocol", metavar="adr246|v2",
        help="The stream subscribers open: adr246 (PresenceService's "
             "SubscribeFriendshipPresenceUpdates) or v2 (the SocialService module's "
             "SubscribeToFriendConnectivityUpdates: online and offline only).")] = "adr246",
    storm_at: Annotated[float | None, typer.Option(
        "--storm-at", min=0, metavar="SECONDS", show_default=False,
        help="A reconnect storm: this many seconds into the load, drop every connection at "
             "once (no close frame) and log everyone in again within --storm-spread; the "
             "summary says when all were back and whether friends saw anyone OFFLINE who came "
             "back within the daemon's offline grace.")] = None,
    storm_spread: Annotated[float, typer.Option(
        "--storm-spread", min=0, metavar="SECONDS",
        help="Real seconds over which the dropped users log in again.")] = 1.0,
    no_seed: Annotated[bool, typer.Option(
        "--no-seed", help="Do not import the graph through the admin endpoint: it is "
                          "already there (seeded earlier, or loaded with serve --friends).")
    ] = False,
    friends_db: Annotated[str | None, typer.Option(
        "--friends-db", metavar="URL", show_default=False,
        help="Take the social graph from this social-service database (the daemons serve "
             "it with serve --friends-db; fill it with `seed friendships --random --db` of "
             "the same --users and --seed): its friendships among the run's users, nothing "
             "imported through the admin endpoint.")] = None,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Put realistic load on running daemons and measure notify latency.

    Builds the social graph of `seed friendships --random` (same --users,
    --avg-friends, --seed), imports it through the admin endpoint unless
    --no-seed, and logs in a fraction of its users over real WebSockets, each
    with its own AuthChain identity, at --ramp logins per second. Each user
    sends a heartbeat every --heartbeat-interval (with jitter), moves between
    parcels and realms, subscribes to its friends' updates, and disconnects and
    comes back at the --churn rate. --speed compresses all of that in time.

    Every move goes to a position that names the heartbeat, so each update a
    friend receives is matched to the heartbeat (or login, or logout) that
    caused it: notify latency is the time from sending the heartbeat to the
    update's arrival. After the load, users stop, the run waits --settle
    seconds, and every subscriber's view of each friend is compared with that
    friend's final state; each difference counts as undelivered.

    The import only adds friendships: against a daemon that holds another
    graph of the same --seed (an earlier run with other --users or
    --avg-friends), use a new --seed or a fresh daemon, or the extra
    friendships show up as errors.

    SIGUSR1 ends the load phase before --duration is up (the run then stops,
    settles and reports as usual): a caller that measures its own window can
    end the load when it is done. SIGUSR2 during the load phase drops the
    latency samples so far, so that the reported latency starts then (after
    the caller's warm-up, say). While the load runs, the generator's
    processes do no automatic garbage collection: its pauses would count as
    notify latency.

    A live display shows progress on a terminal; at the end a summary table
    is printed, or with --json one JSON object. Exit status 1 if any virtual
    user saw a protocol error (a remote error, an unexpected close, a bad
    frame, a failed login, a refused heartbeat) or an update was undelivered.

    Ctrl-C or SIGTERM stops the run early: the users disconnect and the
    summary of what was measured until then is printed (marked interrupted,
    exit status 130); a second one aborts at once. A run whose --duration is
    shorter than one heartbeat interval (--heartbeat-interval / --speed)
    measures little: it is warned about.
    """
    from presenced.simulate.plan import SimConfig
    from presenced.socialgraph import check_parameters

    check = _Checks()
    try:
        check_parameters(users, avg_friends)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    sources = tuple(s.strip() for s in (source_addresses or "").split(",") if s.strip())
    for source in sources:
        check.source(source)
    min_x, min_y, max_x, max_y = _parse_area(area)
    if friends_db is not None:
        check_db_url(friends_db)
        no_seed = True
    status = _daemon_status(admin_url, token, required=not no_seed)
    target_list = tuple(targets or [default_target(admin_url, status)])
    for url in target_list:
        check.target(url, bound=bool(sources))
    engine = (status or {}).get("engine", {})
    grace_s = engine.get("offline_grace_ms", ASSUMED_GRACE_S * 1000) / 1000.0
    config = SimConfig(
        targets=target_list,
        users=users,
        avg_friends=avg_friends,
        seed=seed,
        online_fraction=online_fraction,
        subscribe_fraction=subscribe_fraction,
        duration_s=duration,
        speed=speed,
        heartbeat_interval_s=heartbeat_interval,
        jitter=jitter,
        move_probability=move_probability,
        realm_probability=realm_probability,
        realms=tuple(realms or DEFAULT_REALMS),
        area=(min_x, min_y, max_x, max_y),
        churn_per_hour=churn,
        reconnect_delay_s=reconnect_delay,
        churn_fraction=churn_fraction,
        ramp=ramp,
        processes=min(processes, max(1, round(users * online_fraction))),
        source_addresses=sources,
        connect_timeout_s=connect_timeout,
        settle_s=settle if settle is not None else grace_s + SETTLE_MARGIN_S,
        heartbeats=not no_heartbeats,
        subscribe_protocol=subscribe_protocol,
        storm_at_s=storm_at,
        storm_spread_s=storm_spread,
        offline_grace_s=grace_s,
    )
    problems = config.problems()
    if problems:
        fail(problems[0], EXIT_USAGE)
    if engine:
        _check_engine_limits(config, engine)
    for url in target_list:
        _probe(url)
    if config.duration_s < config.heartbeat_real_s:
        report(f"warning: --duration {config.duration_s:g} s is shorter than one heartbeat "
               f"interval ({config.heartbeat_real_s:g} s: --heartbeat-interval "
               f"{config.heartbeat_interval_s:g} / --speed {config.speed:g}), so few friends "
               f"move during the load and notify latency may have no samples; use --speed "
               f"{config.heartbeat_interval_s * 3 / max(config.duration_s, 1):.3g} or a longer "
               f"--duration")

    loader = database_graph(friends_db) if friends_db is not None else None
    summary = _run(config, None if no_seed else _seeder(admin_url, token), loader)
    if json_output:
        print_json(summary)
    else:
        from presenced.simulate.report import summary_table

        stdout_console().print(summary_table(summary))
        _explain_failures(summary)
    if summary.get("interrupted"):
        report("simulate interrupted: the summary covers the run until the stop")
        raise typer.Exit(EXIT_INTERRUPTED)
    if not summary["ok"]:
        report(f"simulate failed: {summary['errors']} errors, {summary['undelivered']} "
               "undelivered updates")
        raise typer.Exit(EXIT_ERROR)


def _run(config: SimConfig, seeder: Any, loader: Any = None) -> dict[str, Any]:
    """The run, with Ctrl-C and SIGTERM turned into an early, reported stop."""
    from presenced.simulate import Coordinator, SimulationError
    from presenced.simulate.ui import LiveView

    with LiveView(stderr_console(), enabled=True) as ui:
        coordinator = Coordinator(config, ui, seeder, loader)

        def on_signal(signum: int, frame: object) -> None:
            if coordinator.interrupted:
                # A second one: stop waiting for the users to wind down.
                raise KeyboardInterrupt
            coordinator.interrupt()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return coordinator.run()
        except SimulationError as e:
            fail(f"simulate: {e}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def default_target(admin_url: str, status: dict[str, Any] | None) -> str:
    """The WebSocket URL of the daemon behind `admin_url`: same host, its listening port."""
    host = urlsplit(admin_url).hostname or "127.0.0.1"
    listen = (status or {}).get("listen") or {}
    port = listen.get("port") or urlsplit(DEFAULT_TARGET).port
    host = f"[{host}]" if ":" in host else host
    return f"ws://{host}:{port}/"


def _explain_failures(summary: dict[str, Any]) -> None:
    """A few examples of what went wrong, on stderr (--json has them all)."""
    for kind, samples in summary["error_samples"].items():
        for sample in samples[:2]:
            report(f"{kind}: {sample}")
    for example in summary["undelivered_examples"][:3]:
        report(f"undelivered: {example['receiver']} sees {example['friend']} as "
               f"{example['seen']}, but it is {example['expected']}")


class _Checks:
    def target(self, url: str, bound: bool) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            fail(f"--target: expected ws://HOST:PORT/, got {url!r}", EXIT_USAGE)
        if bound and parts.scheme != "ws":
            fail(f"--source-addresses only works with ws:// targets, not {url!r}", EXIT_USAGE)
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            fail(f"--target: bad port in {url!r}", EXIT_USAGE)

    def source(self, address: str) -> None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            fail(f"--source-addresses: not an IP address: {address!r}", EXIT_USAGE)


def _daemon_status(admin_url: str, token: str | None, required: bool) -> dict[str, Any] | None:
    """The daemon's /v1/status; without it the run can still go on with --no-seed."""
    try:
        with AdminClient(admin_url, token, timeout=10.0) as client:
            return client.get("/v1/status")
    except CliError:
        if required:
            raise
        return None


def _check_engine_limits(config: SimConfig, engine: dict[str, Any]) -> None:
    # A heartbeat refused for its rate is an error of the run, so refuse a
    # run whose own pace the daemon would refuse.
    rate = float(engine.get("heartbeat_rate", 0) or 0)
    shortest = config.heartbeat_real_s * (1.0 - config.jitter)
    if config.heartbeats and rate > 0 and shortest < 1.0 / rate:
        fail(f"heartbeats every {shortest:.3g} s at the shortest (--heartbeat-interval "
             f"{config.heartbeat_interval_s:g} / --speed {config.speed:g}, less --jitter) are "
             f"faster than the daemon accepts ({rate:g} per second per connection): lower "
             f"--speed or start serve with a higher --heartbeat-rate", EXIT_USAGE)
    ttl_s = float(engine.get("ttl_ms", 0) or 0) / 1000.0
    longest = config.heartbeat_real_s * (1.0 + config.jitter)
    # Without heartbeats the daemon's pings keep users alive.
    if config.heartbeats and ttl_s > 0 and longest + config.settle_s >= ttl_s:
        # Users would expire between heartbeats, or while the run settles,
        # and their friends would rightly see them go offline.
        fail(f"heartbeats up to {longest:.3g} s apart plus {config.settle_s:g} s of --settle "
             f"reach the daemon's --ttl ({ttl_s:g} s): raise --speed or lower --settle",
             EXIT_USAGE)
    bounds = engine.get("bounds")
    if bounds:
        min_x, min_y, max_x, max_y = config.area
        if (min_x < bounds["min_x"] or min_y < bounds["min_y"] or max_x > bounds["max_x"]
                or max_y > bounds["max_y"]):
            fail(f"--area {min_x},{min_y},{max_x},{max_y} exceeds the daemon's --bounds "
                 f"{bounds['min_x']},{bounds['min_y']},{bounds['max_x']},{bounds['max_y']}",
                 EXIT_USAGE)


def _probe(url: str) -> None:
    """Fail with one line if nothing listens at a target (the usual mistake)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=5.0):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        fail(f"cannot connect to {url} ({reason}); is `presenced serve` running there? "
             "(see --target)")


def _seeder(admin_url: str, token: str | None) -> Any:
    def seed_graph(graph: SocialGraph, addresses: list[str]) -> dict[str, int]:
        # The lines `seed friendships --random` would send: the same pairs,
        # with the addresses the workers already derived.
        lines = [f"# presenced social graph: seed={graph.seed} users={graph.users} "
                 f"friendships={len(graph.edges)}\n"]
        lines += [f"{addresses[a]},{addresses[b]}\n" for a, b in graph.edges]
        return _send_lines(lines, 50_000, admin_url, token, "seeding the graph")

    return seed_graph
