"""`presenced seed friendships|presence`: load a friendship graph, mark synthetic users online."""

from __future__ import annotations

import io
import random
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from presenced.cli import seed_db
from presenced.cli.common import (
    DEFAULT_ADMIN_URL,
    EXIT_USAGE,
    AdminClient,
    AdminUrlOption,
    ApiFailure,
    JsonOption,
    TokenOption,
    address_argument,
    fail,
    handle_errors,
    print_json,
    report,
    stderr_console,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from presenced.store.friends_file import LineError

# Modules that take a while to import (rich's widgets, the graph generator
# and its key derivation) are imported where used: shell completion runs
# this module on every TAB.

app = typer.Typer(
    name="seed",
    help="Load friendships and mark synthetic users online, for tests and load runs.",
    no_args_is_help=True,
)

# Malformed lines printed before the summary line; the count is always given.
SHOWN_ERRORS = 20
# Genesis City's parcels: where players actually are.
DEFAULT_AREA = "-150,-150,163,158"


# --------------------------------------------------------------- friendships


@app.command("friendships")
@handle_errors
def friendships(
    file: Annotated[Path | None, typer.Argument(
        metavar="FILE", show_default=False,
        help="Friendships to import: CSV lines 'address_a,address_b' ('#' starts a comment) "
             "or JSON lines ([\"0x...\", \"0x...\"] or {\"a\": \"0x...\", \"b\": \"0x...\"}); '-' "
             "reads standard input. Not with --random.")] = None,
    random_graph: Annotated[bool, typer.Option(
        "--random", help="Generate a reproducible random graph instead of reading FILE.")
    ] = False,
    users: Annotated[int, typer.Option(
        "--users", min=1, metavar="N", help="With --random: number of users.")] = 1000,
    avg_friends: Annotated[float, typer.Option(
        "--avg-friends", min=0, metavar="K",
        help="With --random: average friends per user; individual counts follow a "
             "power law, so most users have fewer and a few have many more.")] = 20.0,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="S",
        help="With --random: seed of the graph and of the users' keys; the same seed "
             "always gives the same users and friendships.")] = 0,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="With --random: write the graph as CSV to FILE ('-': standard output) "
             "instead of sending it to the daemon.")] = None,
    chunk_lines: Annotated[int, typer.Option(
        "--chunk-lines", min=1, metavar="N", help="Lines sent to the daemon per request.")
    ] = 50_000,
    db: Annotated[str | None, typer.Option(
        "--db", metavar="URL", show_default=False,
        help="Write the friendships into this social-service PostgreSQL database "
             "(postgresql://USER@HOST:PORT/DB; tables created if missing) instead of "
             "sending them to the daemon: what `serve --friends-db` reads.")] = None,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Import friendships from a file, or generate a random social graph.

    The whole file is checked first: if any line is malformed, every such line
    is reported with its number and nothing is imported. Large files are sent
    in chunks, with a progress bar. Friendships that already exist are
    counted, not duplicated.

    With --random, user I of seed S has the identity
    Identity.generate(random.Random("S:I")) (see presenced/socialgraph.py), so
    `presenced simulate` can log in as the same users.

    With --db, the friendships go into a social-service PostgreSQL database
    (what `serve --friends-db` reads) instead of the daemon: tables are created
    if missing, existing friendships are counted, inactive ones reactivated.
    """
    if random_graph == (file is not None):
        fail("give either FILE or --random", EXIT_USAGE)
    if output is not None and not random_graph:
        fail("--output only applies to --random", EXIT_USAGE)
    if db is not None:
        if output is not None:
            fail("give either --output or --db", EXIT_USAGE)
        seed_db.check_db_url(db)
    if random_graph:
        _random_friendships(users, avg_friends, seed, output, chunk_lines, admin_url, token,
                            json_output, db)
        return
    assert file is not None
    name = "<stdin>" if str(file) == "-" else str(file)
    lines = _read_lines(file)
    from presenced.store.friends_file import parse_friendships

    pairs, errors = parse_friendships(lines)
    if errors:
        _report_line_errors(name, errors, len(errors))
        fail(f"{name}: {_plural(len(errors), 'malformed line')}; nothing was imported")
    if db is not None:
        seed_db.seed_database(db, pairs, name, json_output, {"file": name})
        return
    totals = _send_lines(lines, chunk_lines, admin_url, token, f"importing {Path(name).name}")
    if json_output:
        print_json({"file": name, **totals})
    else:
        typer.echo(_import_summary(totals, name))


def _random_friendships(
    users: int, avg_friends: float, seed: int, output: Path | None, chunk_lines: int,
    admin_url: str, token: str | None, json_output: bool, db: str | None = None,
) -> None:
    try:
        from presenced.socialgraph import check_parameters

        check_parameters(users, avg_friends)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    from presenced.socialgraph import SocialGraph

    graph = SocialGraph.generate(users, avg_friends, seed)
    with _progress() as progress:
        task = progress.add_task("deriving user addresses", total=users)
        graph.addresses(lambda n: progress.advance(task, n))
    degrees = graph.degrees()
    summary: dict[str, Any] = {
        "seed": seed,
        "users": users,
        "friendships": len(graph.edges),
        "avg_friends": round(2 * len(graph.edges) / users, 3),
        "max_friends": max(degrees),
        "users_without_friends": degrees.count(0),
    }
    if db is not None:
        seed_db.seed_database(db, graph.friendships(), f"random graph (seed {seed}, {users} "
                              f"users)", json_output, summary)
        return
    lines = list(graph.csv_lines(avg_friends))
    if output is not None:
        _write_lines(output, lines)
        if json_output:
            print_json({**summary, "output": str(output)})
        else:
            report(f"wrote {_plural(len(graph.edges), 'friendship')} among "
                   f"{_plural(users, 'user')} (seed {seed}) to {output}")
        return
    totals = _send_lines(lines, chunk_lines, admin_url, token, "importing graph")
    if json_output:
        print_json({**summary, **totals})
    else:
        typer.echo(_import_summary(totals, f"random graph (seed {seed}, {users} users)"))


def _read_lines(file: Path) -> list[str]:
    try:
        if str(file) == "-":
            # Universal newlines, as the daemon reads files, so line numbers agree.
            # utf-8-sig: a byte-order mark (spreadsheets write one) is dropped.
            text = sys.stdin.buffer.read().decode("utf-8-sig")
            return io.StringIO(text, newline=None).readlines()
        with open(file, encoding="utf-8-sig", newline=None) as f:
            return f.readlines()
    except UnicodeDecodeError as e:
        fail(f"{file}: not UTF-8 text (byte {e.start})")
    except OSError as e:
        fail(f"cannot read {file}: {e.strerror or e}")


def _write_lines(output: Path, lines: Sequence[str]) -> None:
    if str(output) == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.writelines(lines)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror or e}")


def _send_lines(
    lines: Sequence[str], chunk_lines: int, admin_url: str, token: str | None, label: str
) -> dict[str, int]:
    """POST the lines in chunks to the import endpoint; returns the summed counts."""
    totals = {"lines": 0, "friendships": 0, "duplicates": 0, "added": 0, "existing": 0,
              "requests": 0}
    with AdminClient(admin_url, token) as client, _progress() as progress:
        task = progress.add_task(label, total=len(lines))
        for start in range(0, len(lines), chunk_lines):
            chunk = lines[start:start + chunk_lines]
            body = "".join(line if line.endswith("\n") else line + "\n" for line in chunk)
            try:
                result = client.request(
                    "POST", "/v1/friendships/import", params={"first_line": start + 1},
                    content=body.encode(), headers={"Content-Type": "text/csv; charset=utf-8"},
                )
            except ApiFailure as e:
                _explain_rejected_chunk(e, totals)
                raise
            for key in totals:
                totals[key] += result.get(key, 0)
            totals["requests"] += 1
            progress.advance(task, len(chunk))
    return totals


def _explain_rejected_chunk(e: ApiFailure, totals: dict[str, int]) -> None:
    body = e.body if isinstance(e.body, dict) else {}
    errors = body.get("errors") or []
    for error in errors[:SHOWN_ERRORS]:
        report(f"line {error.get('line')}: {error.get('message')}")
    if totals["requests"]:
        report(f"earlier chunks were applied: {totals['added']} friendships added")


def _report_line_errors(name: str, errors: Sequence[LineError], total: int) -> None:
    for error in errors[:SHOWN_ERRORS]:
        report(f"{name}:{error.line}: {error.message}")
    if total > SHOWN_ERRORS:
        report(f"{name}: ... and {_plural(total - SHOWN_ERRORS, 'more malformed line')}")


def _import_summary(totals: dict[str, int], source: str) -> str:
    text = (f"imported {_plural(totals['friendships'], 'friendship')} from {source}: "
            f"{totals['added']} added, {totals['existing']} already existed")
    if totals["duplicates"]:
        text += f" ({_plural(totals['duplicates'], 'duplicate line')} ignored)"
    return text


# ------------------------------------------------------------------ presence


@app.command("presence")
@handle_errors
def presence(
    specs: Annotated[list[str] | None, typer.Argument(
        metavar="USER", show_default=False,
        help="Users to mark online, each as ADDRESS,REALM,X,Y (e.g. "
             "0xabc...,main,10,-3). Not with --random.")] = None,
    random_count: Annotated[int | None, typer.Option(
        "--random", metavar="N", min=1, show_default=False,
        help="Mark N users of the random graph of --seed online (the users that "
             "`seed friendships --random --seed S` creates), at random parcels.")] = None,
    population: Annotated[int | None, typer.Option(
        "--users", metavar="U", min=1, show_default=False,
        help="With --random: pick the N users at random among users 0 to U-1 of the graph "
             "(default: N, that is users 0 to N-1).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="S", help="With --random: seed of the graph and of the choices.")
    ] = 0,
    realms: Annotated[list[str] | None, typer.Option(
        "--realm", metavar="REALM", show_default=False,
        help="With --random: realm to put users in; repeat to spread them over several "
             "(default: main).")] = None,
    area: Annotated[str, typer.Option(
        "--area", metavar="MIN_X,MIN_Y,MAX_X,MAX_Y",
        help="With --random: parcels to place users on.")] = DEFAULT_AREA,
    chunk: Annotated[int, typer.Option(
        "--chunk", metavar="N", min=1, help="Users sent to the daemon per request.")] = 5000,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Mark synthetic users online, as if each had sent a heartbeat.

    Their friends see them come online. Nothing keeps them alive afterwards:
    they go offline after the daemon's TTL (--ttl of serve) like any silent
    user, unless marked again.
    """
    if (random_count is None) == (not specs):
        fail("give users as ADDRESS,REALM,X,Y or use --random N", EXIT_USAGE)
    if random_count is not None:
        users = _random_users(random_count, population or random_count, seed,
                              realms or ["main"], area)
    else:
        users = [_parse_spec(spec) for spec in specs or ()]
    injected = 0
    with AdminClient(admin_url, token) as client, _progress() as progress:
        task = progress.add_task("marking users online", total=len(users))
        for start in range(0, len(users), chunk):
            batch = users[start:start + chunk]
            try:
                result = client.request("POST", "/v1/presence", json={"users": batch})
            except ApiFailure as e:
                body = e.body if isinstance(e.body, dict) else {}
                for error in (body.get("errors") or [])[:SHOWN_ERRORS]:
                    index = start + int(error.get("index", 0))
                    user = users[index] if index < len(users) else {}
                    report(f"user {index + 1} ({user.get('address')}): {error.get('message')}")
                if injected:
                    report(f"{injected} users were marked online before the error")
                raise
            injected += result["injected"]
            progress.advance(task, len(batch))
    if json_output:
        print_json({"injected": injected, "users": users})
    else:
        typer.echo(f"marked {_plural(injected, 'user')} online; they go offline after the "
                   "daemon's TTL unless marked again")


def _random_users(
    count: int, population: int, seed: int, realms: list[str], area: str
) -> list[dict[str, Any]]:
    if count > population:
        fail(f"--random {count} is more than --users {population}", EXIT_USAGE)
    from presenced.socialgraph import user_address

    min_x, min_y, max_x, max_y = _parse_area(area)
    rng = random.Random(f"{seed}:presence")
    indices = sorted(rng.sample(range(population), count))
    users = []
    with _progress() as progress:
        task = progress.add_task("deriving user addresses", total=count)
        for index in indices:
            users.append({
                "address": user_address(seed, index),
                "realm": rng.choice(realms),
                "x": rng.randint(min_x, max_x),
                "y": rng.randint(min_y, max_y),
            })
            progress.advance(task)
    return users


def _parse_spec(spec: str) -> dict[str, Any]:
    usage = f"expected ADDRESS,REALM,X,Y, got {spec!r}"
    address, _, rest = spec.partition(",")
    # The realm is everything between the address and the last two fields.
    parts = rest.rsplit(",", 2)
    if len(parts) != 3 or not parts[0]:
        fail(usage, EXIT_USAGE)
    realm, x, y = parts
    try:
        coords = int(x), int(y)
    except ValueError:
        fail(f"{usage}: X and Y must be integers", EXIT_USAGE)
    return {"address": address_argument(address), "realm": realm, "x": coords[0],
            "y": coords[1]}


def _parse_area(text: str) -> tuple[int, int, int, int]:
    try:
        min_x, min_y, max_x, max_y = (int(v) for v in text.split(","))
    except ValueError:
        fail(f"--area: expected MIN_X,MIN_Y,MAX_X,MAX_Y, e.g. {DEFAULT_AREA}", EXIT_USAGE)
    if min_x > max_x or min_y > max_y:
        fail("--area: minimums must not exceed maximums", EXIT_USAGE)
    return min_x, min_y, max_x, max_y


# -------------------------------------------------------------------- output


@contextmanager
def _progress() -> Iterator[Progress]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # Only on a terminal: in logs and pipes a progress bar is noise.
    console = stderr_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        yield progress


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
