"""`presenced status`: is the daemon alive and ready, and what is it doing.

Its exit status is meant for health checks (a container's HEALTHCHECK, a
systemd ExecStartPost, a script): 0 when the daemon is ready, 1 when it is
not (starting, shutting down, its store unreachable) or cannot be reached.
With --live, 0 as soon as the daemon answers at all. Readiness is the
daemon's `/readyz`, what a load balancer or an orchestrator probes.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from presenced.cli.common import (
    DEFAULT_ADMIN_URL,
    EXIT_ERROR,
    AdminClient,
    AdminUrlOption,
    ApiFailure,
    JsonOption,
    TokenOption,
    handle_errors,
    print_json,
    stdout_console,
)


@handle_errors
def status(
    live: Annotated[bool, typer.Option(
        "--live",
        help="Exit 0 whenever the daemon answers, ready or not (a liveness check); without "
             "it, exit 0 only when it is ready for clients.")] = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, metavar="SECONDS",
        help="Seconds to wait for the daemon's answer.")] = 5.0,
    admin_url: AdminUrlOption = DEFAULT_ADMIN_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the daemon's health, readiness, instance, store, users online and connections.

    Exit status 0 when the daemon is ready (with --live: when it answers),
    1 when it is not ready or cannot be reached, so the command serves as a
    container health check as it is.
    """
    with AdminClient(admin_url, token, timeout=timeout) as client:
        # Readiness as a load balancer sees it (/readyz), then the details.
        try:
            readiness = client.get("/readyz")
        except ApiFailure as e:
            if e.status != 503 or not isinstance(e.body, dict):
                raise
            readiness = e.body
        body: dict[str, Any] = {**client.get("/v1/status"), "ready": readiness.get("ready"),
                                "reasons": readiness.get("reasons", [])}
    ok = bool(body.get("ready")) or live
    if json_output:
        print_json({**body, "admin_url": client.url, "alive": True})
    else:
        _show(body, client.url)
    if not ok:
        raise typer.Exit(EXIT_ERROR)


def _show(body: dict[str, Any], url: str) -> None:
    from rich.table import Table

    ready = body.get("ready")
    reasons = "; ".join(body.get("reasons") or [])
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("daemon", f"alive at {url}")
    table.add_row("ready", "yes" if ready else f"no: {reasons or 'unknown'}")
    if "version" in body:
        worker = body.get("worker")
        table.add_row("version", f"presenced {body['version']} (pid {body.get('pid', '?')})")
        table.add_row("instance", str(body.get("instance"))
                      + (f", worker {worker}" if worker is not None else ""))
        store = str(body.get("store_kind") or body.get("store"))
        if body.get("store_url"):
            store += f" at {body['store_url']}"
        if body.get("store_healthy") is False:
            store += " (unreachable)"
        table.add_row("store", store)
        listen = body.get("listen") or {}
        if listen:
            table.add_row("listening", f"ws://{listen.get('host')}:{listen.get('port')}/")
        table.add_row("users online", f"{body.get('online_users', 0):,}")
        table.add_row("connections", f"{body.get('connections', 0):,} "
                                     f"({body.get('sessions', 0):,} logged in)")
    stdout_console().print(table)
