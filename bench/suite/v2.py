"""Issue 10's check: a SocialService v2 subscriber costs within 10 % of an ADR-246 one.

The v2 stream (`SubscribeToFriendConnectivityUpdates`) carries only online
and offline, never positions, so the load is made of logins and logouts:
users connect without heartbeats (as v2 clients do). Half the online users
churn (sessions of 20 s, away longer than the offline grace, so each session
is one ONLINE and one OFFLINE for every subscribed friend) and never
subscribe; the other half stay connected from the ramp on and subscribe:
players watching friends come and go. Three runs with the same seeded churn:
nobody subscribed, the steady half subscribed over ADR-246, the same over
v2. CPU per delivered update = (CPU of the run − CPU of the quiet run) ÷
updates delivered, for each protocol.

The subscriptions open during the ramp, before the window: a subscription's
first answer (every friend online now) is one message per friend in v2 and
one message for all of them in ADR-246, a cost per subscribe that the
protocol fixes, not a cost per update. An earlier version of this part had
every user churn and subscribe again at each login, so those snapshots made
up a third of the v2 messages in the window (docs/performance.md).

Until presenced serves the SocialService module, the part says so and skips.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from bench.suite import cpu, loadrun
from bench.suite.loadrun import FAST_SETTLE, RunResult, RunSpec
from bench.suite.procs import Server
from bench.suite.scales import Scale
from bench.suite.simload import Load
from presenced.auth.identity import Identity
from presenced.client import RemoteError
from presenced.simulate.v2 import SOCIAL_SERVICE, SUBSCRIBE_CONNECTIVITY
from presenced.simulate.wire import WireClient

TARGET_RATIO = 1.10
CHURN_FRACTION = 0.5
SKIPPED = (f"presenced does not serve the {SOCIAL_SERVICE} module yet (issue 10): this part "
           f"drives {SUBSCRIBE_CONNECTIVITY} once it does")


def serves_v2(url: str) -> str | None:
    """None if the server offers the v2 subscription, else why not."""
    async def probe() -> str | None:
        async with WireClient.connect(url, Identity.generate()) as client:
            try:
                procedures = await client.load_module(SOCIAL_SERVICE)
            except RemoteError as e:
                return f"{SKIPPED} ({e})"
            if SUBSCRIBE_CONNECTIVITY not in procedures:
                return f"the {SOCIAL_SERVICE} module has no {SUBSCRIBE_CONNECTIVITY}"
            return None

    return trio.run(probe)


def load_for(scale: Scale, subscribe: float, protocol: str) -> Load:
    # Half the online users churn: sessions of 20 s on average, 10-30 s away (longer than
    # the 1 s grace); the other half stay and subscribe.
    return Load(users=scale.cpu_users, subscribe_fraction=subscribe, heartbeats=False,
                churn=180.0, reconnect_delay=20.0, churn_fraction=CHURN_FRACTION, speed=1.0,
                ramp=scale.ramp, processes=2, subscribe_protocol=protocol, seed=7)


def run(scale: Scale, log: Callable[[str], None]) -> dict:
    with Server(*FAST_SETTLE, log_name="v2-probe") as server:
        why = serves_v2(server.url)
    if why is not None:
        log(f"v2: skipped: {why}")
        return {"skipped": why}
    window = 2 * scale.cpu_window_s

    def measure(name: str, subscribe: float, protocol: str) -> RunResult:
        return loadrun.run(RunSpec(f"v2-{name}", load_for(scale, subscribe, protocol),
                                   "embedded", 1, window, scale.cpu_warmup_s + 5,
                                   FAST_SETTLE), log)

    quiet = measure("quiet", 0.0, "adr246")
    adr = measure("adr246", 1.0, "adr246")
    v2 = measure("v2", 1.0, "v2")
    # The server's count if it counts both streams, else the generator's.
    by_server = bool(adr.window.delivered and v2.window.delivered)
    out = {"quiet_run": cpu.describe_run(quiet),
           "counted_by": "server" if by_server else "generator"}
    for name, result in (("adr246", adr), ("v2", v2)):
        n = delivered(result, by_server)
        items = result.window.stream_items
        out[name] = {"cpu_per_update_us": per_update_us(result, quiet, n), "delivered": n,
                     "stream_items": items,
                     "updates_per_item": round(n / items, 3) if items else None,
                     "run": cpu.describe_run(result)}
    a, b = out["adr246"]["cpu_per_update_us"], out["v2"]["cpu_per_update_us"]
    out["ratio"] = round(b / a, 3) if a and b else None
    return out


def delivered(run: RunResult, by_server: bool) -> float:
    """Updates delivered in the window: the server's count, or the generator's rate."""
    if by_server:
        return run.window.delivered
    return (run.summary.get("updates_per_s") or 0.0) * run.window.seconds


def per_update_us(run: RunResult, quiet: RunResult, n: float) -> float | None:
    if not n:
        return None
    # Same seeded churn in both runs: the quiet run's CPU rate is what the
    # logins and connections cost without any subscriber.
    base = quiet.window.server_cpu_s / quiet.window.seconds * run.window.seconds
    return round(1e6 * (run.window.server_cpu_s - base) / n, 1)
