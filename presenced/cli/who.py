"""`presenced who-online`: a user's presence and their online friends."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from presenced.cli.common import (
    DEFAULT_ADMIN_URL,
    AdminClient,
    AdminUrlOption,
    JsonOption,
    TokenOption,
    address_argument,
    ago,
    handle_errors,
    print_json,
    stdout_console,
)


@handle_errors
def who_online(
    address: Annotated[str, typer.Argument(metavar="ADDRESS",
                                           help="The user's address (0x and 40 hex digits).")],
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show whether a user is online, and which of their friends are.

    Lists the user's own presence, then every online friend with their realm,
    parcel and when they last showed a sign of life, sorted by address. Times
    are measured by the daemon's clock.
    """
    address = address_argument(address)
    with AdminClient(admin_url, token) as client:
        me = client.get(f"/v1/users/{address}/presence")
        friends = client.get(f"/v1/users/{address}/online-friends")
    if json_output:
        print_json({
            "user": _without_now(me),
            "friends_count": friends["friends_count"],
            "online_count": friends["online_count"],
            "online_friends": friends["online_friends"],
            "now_ms": friends["now_ms"],
        })
        return
    console = stdout_console()
    console.print(_describe_user(me, me["now_ms"]))
    online = sorted(friends["online_friends"], key=lambda p: p["address"])
    now = friends["now_ms"]
    if online:
        from rich.table import Table

        table = Table("Address", "Realm", "X", "Y", "Last seen")
        table.columns[0].no_wrap = True
        for column in table.columns[2:4]:
            column.justify = "right"
        for p in online:
            table.add_row(p["address"], p["realm"] or "-", _coord(p["x"]), _coord(p["y"]),
                          ago(now, p["last_seen_ms"]))
        console.print(table)
    console.print(f"{len(online)} of {friends['friends_count']} "
                  f"friend{'s' if friends['friends_count'] != 1 else ''} online")


def _describe_user(p: dict[str, Any], now: int) -> str:
    if not p["online"]:
        return f"{p['address']} is offline"
    where = f" in {p['realm']} at {p['x']},{p['y']}" if p.get("realm") is not None else ""
    return f"{p['address']} is online{where} (last seen {ago(now, p['last_seen_ms'])})"


def _coord(value: int | None) -> str:
    return "-" if value is None else str(value)


def _without_now(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "now_ms"}
