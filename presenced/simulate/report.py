"""Merging what the workers report, the convergence check, and the summary.

The summary is one flat-ish dict: `--json` prints it as is, and the table
shown to people is drawn from the same dict, so both always agree.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from presenced.simulate.measure import KINDS, OFFLINE, ONLINE, Histogram, describe
from presenced.simulate.plan import SimConfig

# Undelivered updates described in the summary (all are counted).
EXAMPLES = 10
# Error details shown per kind.
SAMPLES = 5


# Totals.histograms: notify, online, offline (as measure.KINDS), then these.
LOGIN_HISTOGRAM = len(KINDS)
CROSS_HISTOGRAM = len(KINDS) + 1


@dataclass
class Totals:
    """The sum of every worker's latest report, and everything merged so far."""

    counters: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    # notify, online, offline (as measure.KINDS), then login durations, then
    # notify between users on different --target daemons.
    histograms: tuple[Histogram, ...] = field(
        default_factory=lambda: tuple(Histogram() for _ in range(len(KINDS) + 2)))
    matched: list[int] = field(default_factory=lambda: [0, 0, 0])
    excluded: int = 0
    unmatched: int = 0


@dataclass
class Convergence:
    receivers: int = 0
    friendships: int = 0
    undelivered: int = 0
    not_friends: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)


def check_convergence(
    adjacency: Sequence[Sequence[int]],
    finals: Sequence[dict[str, array]],
    addresses: Sequence[str],
    realms: Sequence[str],
    presence_only: bool = False,
) -> Convergence:
    """Compare every subscribed user's view of each friend with that friend's final state.

    A friend who never connected, or whose last connection ended, must be
    absent from the view (offline); a connected friend must be there with
    the position of their last accepted heartbeat (with `presence_only`, the
    v2 stream's view, just online).
    """
    state: dict[int, int] = {}
    for final in finals:
        state.update(zip(final["indices"], final["keys"], strict=True))
    result = Convergence()
    for final in finals:
        offset = 0
        friends, seen = final["friends"], final["seen"]
        for receiver, count in zip(final["receivers"], final["counts"], strict=True):
            view = dict(zip(friends[offset:offset + count], seen[offset:offset + count],
                            strict=True))
            offset += count
            result.receivers += 1
            mine = adjacency[receiver]
            result.friendships += len(mine)
            for friend in mine:
                expected = state.get(friend, OFFLINE)
                if presence_only and expected != OFFLINE:
                    expected = ONLINE
                got = view.pop(friend, OFFLINE)
                if got != expected:
                    result.undelivered += 1
                    if len(result.examples) < EXAMPLES:
                        result.examples.append({
                            "receiver": addresses[receiver],
                            "friend": addresses[friend],
                            "expected": describe(expected, realms),
                            "seen": describe(got, realms),
                        })
            # Whatever is left was announced by someone who is not a friend.
            result.not_friends += len(view)
    return result


def storm_summary(finals: Sequence[dict[str, array]], grace_s: float) -> dict[str, Any]:
    """What the reconnect storm did: how fast everyone was back, and whether a friend
    was told OFFLINE about someone who came back inside the offline grace."""
    back: dict[int, float] = {}
    dropped = 0
    offline: list[int] = []
    for final in finals:
        dropped += sum(final["storm_dropped"])
        # The first login after the drop is the one that counts.
        for index, seconds in zip(final["storm_back_users"], final["storm_back_s"],
                                  strict=True):
            back.setdefault(index, seconds)
        offline.extend(final["storm_offline"])
    times = sorted(back.values())
    within = {index for index, seconds in back.items() if seconds <= grace_s}

    def at(q: float) -> float | None:
        return round(times[min(len(times) - 1, int(q * len(times)))], 3) if times else None

    return {
        "dropped": dropped,
        "back": len(back),
        "not_back": dropped - len(back),
        "all_back_s": round(times[-1], 3) if times and len(back) >= dropped else None,
        "back_p50_s": at(0.5),
        "back_p99_s": at(0.99),
        "offline_grace_s": grace_s,
        "back_within_grace": len(within),
        "offline_seen": len(offline),
        "offline_seen_back_within_grace": sum(1 for i in offline if i in within),
    }


def build_summary(
    *,
    config: SimConfig,
    online_users: int,
    subscribers: int,
    friendships: int,
    totals: Totals,
    rates: Counter[str],
    connected_at_stop: int,
    phases: dict[str, float],
    peak_connections: int,
    convergence: Convergence,
    workers: list[dict[str, Any]],
    seeded: dict[str, Any] | None,
    interrupted: bool = False,
    storm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    c = totals.counters
    errors = Counter(totals.errors)
    if convergence.not_friends:
        errors["not-a-friend"] += convergence.not_friends
    error_count = sum(errors.values())
    summary: dict[str, Any] = {
        "ok": error_count == 0 and convergence.undelivered == 0 and not interrupted,
        # Stopped early (Ctrl-C, SIGTERM): what was measured until then,
        # without the final comparison of views.
        "interrupted": interrupted,
        "users": config.users,
        "online_users": online_users,
        "subscribers": subscribers,
        "friendships": friendships,
        "processes": config.processes,
        "targets": list(config.targets),
        "connections": peak_connections,
        "connections_at_stop": connected_at_stop,
        "logins": c["logins"],
        "login_attempts": c["login_attempts"],
        "login_errors": c["login_errors"],
        "churn_disconnects": c["churn_disconnects"],
        "heartbeats": c["heartbeats"],
        "heartbeats_per_s": round(rates["heartbeats"], 2),
        "updates": c["updates"],
        "updates_per_s": round(rates["updates"], 2),
        "notify_latency_ms": totals.histograms[0].summary(),
        "online_latency_ms": totals.histograms[1].summary(),
        "offline_latency_ms": totals.histograms[2].summary(),
        "login_ms": totals.histograms[LOGIN_HISTOGRAM].summary(),
        "notify_cross_target_latency_ms": totals.histograms[CROSS_HISTOGRAM].summary()
        if len(config.targets) > 1 else None,
        "live_updates": {
            "position": totals.matched[0],
            "online": totals.matched[1],
            "offline": totals.matched[2],
        },
        "snapshot_updates": totals.excluded,
        "unmatched_updates": totals.unmatched,
        "foreign_updates": c["foreign_updates"],
        "errors": error_count,
        "error_breakdown": dict(sorted(errors.items())),
        "error_samples": {k: v[:SAMPLES] for k, v in sorted(totals.samples.items())
                          if k in errors},
        "undelivered": convergence.undelivered,
        "undelivered_examples": convergence.examples,
        "checked_subscribers": convergence.receivers,
        "checked_friendships": convergence.friendships,
        "duration_s": round(phases["load"], 3),
        "ramp_s": round(phases["ramp"], 3),
        "settle_s": round(phases["settle"], 3),
        "total_s": round(phases["total"], 3),
        "speed": config.speed,
        "heartbeat_interval_s": config.heartbeat_interval_s,
        "seed": config.seed,
        "workers": workers,
        "seeded": seeded,
        "storm": storm,
    }
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _latency_row(summary: dict[str, Any]) -> str:
    if not summary["count"]:
        return "no samples"
    return (f"p50 {_ms(summary['p50'])}  p95 {_ms(summary['p95'])}  "
            f"p99 {_ms(summary['p99'])}  max {_ms(summary['max'])}  (n={summary['count']:,})")


def summary_table(s: dict[str, Any]) -> Table:
    table = Table(title="presenced simulate", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("result", _result(s))
    table.add_row("users", f"{s['users']:,} in the graph ({s['friendships']:,} friendships), "
                           f"{s['online_users']:,} online, {s['subscribers']:,} subscribed")
    table.add_row("processes", f"{s['processes']} → {', '.join(s['targets'])}")
    table.add_row("connections", f"{s['connections']:,} peak, {s['connections_at_stop']:,} at "
                                 f"stop; {s['logins']:,} logins, {s['login_errors']:,} failed, "
                                 f"{s['churn_disconnects']:,} churn disconnects")
    table.add_row("duration", f"{s['duration_s']:.1f} s load (after {s['ramp_s']:.1f} s ramp, "
                              f"then {s['settle_s']:.1f} s settle), speed ×{s['speed']:g}")
    table.add_row("heartbeats", f"{s['heartbeats_per_s']:,.1f}/s ({s['heartbeats']:,} in all)")
    table.add_row("updates", f"{s['updates_per_s']:,.1f}/s ({s['updates']:,} in all)")
    table.add_row("notify latency", _latency_row(s["notify_latency_ms"]))
    table.add_row("online latency", _latency_row(s["online_latency_ms"]))
    table.add_row("offline latency", _latency_row(s["offline_latency_ms"]) + " incl. grace")
    table.add_row("login time", _latency_row(s["login_ms"]))
    if s.get("notify_cross_target_latency_ms"):
        table.add_row("across targets", _latency_row(s["notify_cross_target_latency_ms"])
                      + " (moves, sender and receiver on different --target)")
    storm = s.get("storm")
    if storm:
        back = (f"all back after {storm['all_back_s']:.2f} s" if storm["all_back_s"] is not None
                else f"{storm['not_back']:,} never back")
        table.add_row("storm", f"{storm['dropped']:,} dropped, {back} (p50 "
                               f"{storm['back_p50_s']} s); {storm['offline_seen']:,} OFFLINE "
                               f"seen, {storm['offline_seen_back_within_grace']:,} of them for "
                               f"users back within the {storm['offline_grace_s']:g} s grace")
    live = s["live_updates"]
    table.add_row("live updates", f"{live['position']:,} moves, {live['online']:,} online, "
                                  f"{live['offline']:,} offline; {s['snapshot_updates']:,} "
                                  f"snapshot/ramp, {s['unmatched_updates']:,} unmatched")
    breakdown = ", ".join(f"{k} {v}" for k, v in s["error_breakdown"].items())
    table.add_row("errors", f"{s['errors']:,}" + (f" ({breakdown})" if breakdown else ""))
    if s.get("interrupted"):
        table.add_row("undelivered", "not checked (interrupted before the views settled)")
    else:
        table.add_row("undelivered", f"{s['undelivered']:,} of {s['checked_friendships']:,} "
                                     f"friend views checked ({s['checked_subscribers']:,} "
                                     "subscribers)")
    for w in s["workers"]:
        text = (f"{w['users']:,} users, {w['cpu_percent']:.0f} % CPU during load, "
                f"{w['rss_mib']:.0f} MiB RSS")
        gc = w.get("gc")
        if gc:
            # Its own pauses delay what it receives: read latency with them in mind.
            text += (f", GC {gc['seconds']:.1f} s during load (longest pause "
                     f"{max(gc['max_pause_ms']):.0f} ms)")
        table.add_row(f"worker {w['id']}", text)
    return table


def _result(s: dict[str, Any]) -> str:
    if s.get("interrupted"):
        return "INTERRUPTED (partial results, until the stop)"
    if not s["ok"]:
        return "FAILED"
    if not s["notify_latency_ms"]["count"]:
        # No friend moved during the load: the run proves little.
        return "OK, but no notify latency was measured (see the warning)"
    return "OK"
