"""`presenced blocks add|remove|list`: one block at a time."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from presenced.cli.common import (
    DEFAULT_ADMIN_URL,
    EXIT_USAGE,
    AdminClient,
    AdminUrlOption,
    JsonOption,
    TokenOption,
    address_argument,
    fail,
    handle_errors,
    print_json,
    stdout_console,
)

app = typer.Typer(
    name="blocks",
    help="Add, remove and list blocks. A block either way hides two users from each other.",
    no_args_is_help=True,
)

Blocker = Annotated[str, typer.Argument(metavar="BLOCKER", help="The user who blocks.")]
Blocked = Annotated[str, typer.Argument(metavar="BLOCKED", help="The user blocked.")]


def _pair(blocker: str, blocked: str) -> tuple[str, str]:
    blocker, blocked = address_argument(blocker), address_argument(blocked)
    if blocker == blocked:
        fail("a user cannot block themselves", EXIT_USAGE)
    return blocker, blocked


@app.command("add")
@handle_errors
def add(
    blocker: Blocker,
    blocked: Blocked,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """BLOCKER blocks BLOCKED.

    If they were friends, each disappears from the other's streams and lists
    at once (as offline); adding an existing block changes nothing and is
    not an error.
    """
    blocker, blocked = _pair(blocker, blocked)
    with AdminClient(admin_url, token) as client:
        result = client.request("PUT", f"/v1/blocks/{blocker}/{blocked}")
    if json_output:
        print_json(result)
    elif result["added"]:
        typer.echo(f"{blocker} now blocks {blocked}")
    else:
        typer.echo(f"{blocker} already blocked {blocked}")


@app.command("remove")
@handle_errors
def remove(
    blocker: Blocker,
    blocked: Blocked,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """BLOCKER stops blocking BLOCKED.

    If they are friends and no block is left either way, they see each other
    again at once; removing a block that does not exist is not an error.
    """
    blocker, blocked = _pair(blocker, blocked)
    with AdminClient(admin_url, token) as client:
        result = client.request("DELETE", f"/v1/blocks/{blocker}/{blocked}")
    if json_output:
        print_json(result)
    elif result["removed"]:
        typer.echo(f"{blocker} no longer blocks {blocked}")
    else:
        typer.echo(f"{blocker} did not block {blocked}")


@app.command("list")
@handle_errors
def list_(
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The user's address.")],
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """List whom a user blocks and who blocks them, sorted by address."""
    address = address_argument(address)
    with AdminClient(admin_url, token) as client:
        result = client.get(f"/v1/users/{address}/blocks")
    if json_output:
        print_json(result)
        return
    console = stdout_console()
    rows = [(a, "blocks") for a in result["blocking"]]
    rows += [(a, "blocked by") for a in result["blocked_by"]]
    if rows:
        table = Table("User", "Relation")
        table.columns[0].no_wrap = True
        for other, relation in rows:
            table.add_row(other, relation)
        console.print(table)
    console.print(f"{address} blocks {len(result['blocking'])}, blocked by "
                  f"{len(result['blocked_by'])}")
