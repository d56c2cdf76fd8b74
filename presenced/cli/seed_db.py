"""`presenced seed friendships --db`: fill a social-service database with friendships.

For tests, the simulator and the benchmark: the friendships go straight into
PostgreSQL, in the social service's schema (created if missing), exactly as
`serve --friends-db` reads them. Idempotent: existing friendships are
counted, inactive ones reactivated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import typer

from presenced.cli.common import EXIT_USAGE, fail, print_json, report


def check_db_url(url: str) -> None:
    from presenced.graph.postgres import check_url

    problem = check_url(url)
    if problem:
        fail(f"--db: {problem}", EXIT_USAGE)


def seed_database(
    url: str, pairs: Iterable[tuple[str, str]], source: str, json_output: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `pairs` (lower-case addresses) as active friendships; report like an import."""
    import psycopg

    from presenced.graph.postgres import (
        connect_for_writing,
        create_schema,
        safe_url,
        seed_friendships,
    )

    started = time.perf_counter()
    try:
        with connect_for_writing(url) as conn:
            create_schema(conn)
            result = seed_friendships(conn, pairs)
    except psycopg.Error as e:
        text = str(e).strip()
        fail(f"cannot seed {safe_url(url)}: {text.splitlines()[0] if text else type(e).__name__}")
    seconds = time.perf_counter() - started
    if json_output:
        print_json({**(extra or {}), "database": safe_url(url), "friendships": result.friendships,
                    "added": result.added, "reactivated": result.reactivated,
                    "existing": result.existing, "seconds": round(seconds, 3)})
        return
    typer.echo(f"seeded {result.friendships} friendships from {source} into {safe_url(url)}: "
               f"{result.added} added, {result.reactivated} reactivated, {result.existing} "
               f"already active ({seconds:.1f} s)")
    if result.added + result.reactivated == 0:
        report("nothing changed: every friendship was already there")


def database_graph(url: str) -> Callable[[list[str]], list[tuple[int, int]]]:
    """For `simulate --friends-db`: the database's friendships among the run's users."""

    def load(addresses: list[str]) -> list[tuple[int, int]]:
        import psycopg

        from presenced.graph.postgres import read_active_friendships, safe_url
        from presenced.simulate import SimulationError

        index = {address: i for i, address in enumerate(addresses)}
        edges: set[tuple[int, int]] = set()
        try:
            for a, b in read_active_friendships(url):
                i, j = index.get(a), index.get(b)
                if i is not None and j is not None:
                    edges.add((i, j) if i < j else (j, i))
        except psycopg.Error as e:
            text = str(e).strip()
            raise SimulationError(f"cannot read the friends database {safe_url(url)}: "
                                  f"{text.splitlines()[0] if text else type(e).__name__}"
                                  ) from None
        return sorted(edges)

    return load
