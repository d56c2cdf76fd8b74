"""The benchmark of issues 5 and 11 in one command: presenced beside the TypeScript peer.

    scripts/bench --quick        # the few-minute version (installs what it needs first)
    scripts/bench                # the full run
    scripts/bench --only heartbeat update

Starts every process itself (presenced serve, the TypeScript peer of
bench/tspeer, private redis-server instances on free ports, `presenced
simulate`) and stops them at the end. Prints a table of every target with
presenced's number, the peer's beside it, their ratio and met/missed, and
writes everything measured to bench/results/<time>-<mode>.json (and the
table beside it, .md).

Parts (all by default; the peer runs in those marked *):
  heartbeat*  server CPU per heartbeat at the high and the low rate (full:
              2,000/s and 400/s), embedded and Redis store, and the marginal
              cost of a heartbeat
  update*     server CPU per delivered update, embedded and Redis store
  workers     --workers 2: capacity from CPU per delivered update, and the
              p99 of deliveries between two instances sharing Redis
  idle*       server CPU holding logged-in idle connections (keepalive only)
  memory*     the realistic run: memory per connected user, notify latency, a
              profile (full: 19,000 users, as many as one process may hold)
  logins*     server CPU per full login and logins/s
  storm*      every user of a loaded server dropped at once, back within 1 s
  scale       50,000 users on --workers 3 (full; --quick: 6,000)
  v2          CPU per update of a SocialService v2 subscriber vs ADR-246
              (skips until presenced serves the module)
  coldstart   time to /readyz with 100,000 online users in Redis
  sweep       expiry sweep cost with 100,000 online users
  saturation  1 vs 2 workers: highest deliveries/s with p99 ≤ 100 ms (full only)
Aliases: cpu = heartbeat update workers; realistic = memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import (  # noqa: E402
    coldstart,
    cpu,
    host,
    idle,
    logins,
    realistic,
    report,
    saturation,
    scale,
    storm,
    sweep,
    v2,
    workers,
)
from bench.suite.scales import FULL, QUICK  # noqa: E402

PARTS = ("heartbeat", "update", "workers", "idle", "memory", "logins", "storm", "scale", "v2",
         "coldstart", "sweep", "saturation")
ALIASES = {"cpu": ("heartbeat", "update", "workers"), "realistic": ("memory",)}
RESULTS = Path(__file__).resolve().parent / "results"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {host.load_now():.2f}] {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the few-minute version")
    parser.add_argument("--only", nargs="+", choices=(*PARTS, *ALIASES), default=list(PARTS),
                        metavar="PART", help=f"run only these parts ({', '.join(PARTS)}; "
                                             f"aliases: cpu, realistic)")
    args = parser.parse_args()
    only = {p for name in args.only for p in ALIASES.get(name, (name,))}
    scale_ = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stamp}-{scale_.name}.json"
    results: dict = {"mode": scale_.name, "machine": host.describe(), "started": stamp,
                     "settings": scale_.__dict__, "parts": [p for p in PARTS if p in only]}
    print(f"machine: {host.one_line(results['machine'])}", flush=True)
    start = time.monotonic()

    def part(name: str, fn) -> None:  # noqa: ANN001 - a thunk
        log(f"== {name}")
        t = time.monotonic()
        load_at_start = host.load_now()
        try:
            value = fn()
        except Exception as e:  # one failed part must not lose the others
            traceback.print_exc()
            value = {"error": f"{type(e).__name__}: {e}"}
        if isinstance(value, dict):
            value.setdefault("load_average_at_start", load_at_start)
            value.setdefault("elapsed_s", round(time.monotonic() - t, 1))
        results[name] = value
        results["elapsed_s"] = round(time.monotonic() - start, 1)
        out.write_text(json.dumps(results, indent=1, default=str))

    runs = cpu.Runs(scale_, log)
    if "heartbeat" in only:
        part("heartbeat", lambda: cpu.heartbeat_part(runs))
    if "update" in only:
        part("update", lambda: cpu.update_part(runs))
    if "workers" in only:
        part("workers", lambda: workers.run(runs, scale_, log))
    if "idle" in only:
        part("idle", lambda: idle.run(scale_, log))
    if "memory" in only:
        part("memory", lambda: realistic.run(
            scale_, log, profile_path=RESULTS / f"{stamp}-{scale_.name}-server-profile.txt"))
    if "logins" in only:
        part("logins", lambda: cpu.each(("presenced-embedded", "presenced-redis", "tspeer"),
                                        lambda c: logins.run(c, scale_.login_window_s, log)))
    if "storm" in only:
        part("storm", lambda: storm.run(scale_, log))
    if "scale" in only:
        part("scale", lambda: scale.run(scale_, log))
    if "v2" in only:
        part("v2", lambda: v2.run(scale_, log))
    if "coldstart" in only:
        part("coldstart", lambda: coldstart.run(scale_.coldstart_users, log))
    if "sweep" in only:
        part("sweep", lambda: sweep.run(scale_.sweep_users, scale_.sweep_repeats, log))
    if "saturation" in only and scale_.saturation_speeds:
        results["saturation"] = {}
        for w in (1, 2):
            part(f"saturation-w{w}", lambda w=w: saturation.search(w, scale_, log))
            results["saturation"][f"w{w}"] = results.pop(f"saturation-w{w}")
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    out.write_text(json.dumps(results, indent=1, default=str))
    text = report.table(results)
    out.with_suffix(".md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
