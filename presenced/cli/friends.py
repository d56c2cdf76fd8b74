"""`presenced friends add|remove|list`: one friendship at a time."""

from __future__ import annotations

from typing import Annotated

import typer

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
    name="friends",
    help="Add, remove and list friendships.",
    no_args_is_help=True,
)

AddressA = Annotated[str, typer.Argument(metavar="ADDRESS_A", help="One user's address.")]
AddressB = Annotated[str, typer.Argument(metavar="ADDRESS_B", help="The other user's address.")]


def _pair(a: str, b: str) -> tuple[str, str]:
    a, b = address_argument(a), address_argument(b)
    if a == b:
        fail("a user cannot be their own friend", EXIT_USAGE)
    return a, b


@app.command("add")
@handle_errors
def add(
    address_a: AddressA,
    address_b: AddressB,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Make two users friends.

    Friends online at the time see each other at once; adding an existing
    friendship changes nothing and is not an error.
    """
    a, b = _pair(address_a, address_b)
    with AdminClient(admin_url, token) as client:
        result = client.request("PUT", f"/v1/friendships/{a}/{b}")
    if json_output:
        print_json(result)
    elif result["added"]:
        typer.echo(f"added friendship {result['a']} - {result['b']}")
    else:
        typer.echo(f"{result['a']} and {result['b']} were already friends")


@app.command("remove")
@handle_errors
def remove(
    address_a: AddressA,
    address_b: AddressB,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """End a friendship.

    Online friends see each other go offline at once; removing a friendship
    that does not exist changes nothing and is not an error.
    """
    a, b = _pair(address_a, address_b)
    with AdminClient(admin_url, token) as client:
        result = client.request("DELETE", f"/v1/friendships/{a}/{b}")
    if json_output:
        print_json(result)
    elif result["removed"]:
        typer.echo(f"removed friendship {result['a']} - {result['b']}")
    else:
        typer.echo(f"{result['a']} and {result['b']} were not friends")


@app.command("list")
@handle_errors
def list_(
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The user's address.")],
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """List a user's friends, online or not, sorted by address."""
    address = address_argument(address)
    with AdminClient(admin_url, token) as client:
        result = client.get(f"/v1/users/{address}/friends")
    if json_output:
        print_json(result)
        return
    console = stdout_console()
    if result["friends"]:
        from rich.table import Table

        table = Table("Friend")
        table.columns[0].no_wrap = True
        for friend in result["friends"]:
            table.add_row(friend)
        console.print(table)
    count = result["count"]
    console.print(f"{address} has {count} friend{'s' if count != 1 else ''}")
