"""The benchmark of issue 5 in one command: presenced against a baseline, on this machine.

    scripts/bench --quick        # about 9 minutes (installs what it needs first)
    scripts/bench                # the full run, about 35 minutes
    scripts/bench --only cpu baseline

Starts every process itself (presenced serve, private redis-server instances
on free ports, `presenced simulate` and the baseline's generator) and stops
them at the end. Prints a results table and writes everything measured to
bench/results/<time>-<mode>.json (and the table beside it, .md).

Parts (all by default):
  cpu         server CPU per heartbeat and per delivered update: embedded store,
              Redis store with 1 and with 2 workers
  baseline    the same load on a minimal websockets fan-out server
  realistic   memory per user, notify latency and a server profile at the
              largest connection count one process may hold (full: 19,000)
  logins      server CPU per login and logins/s, embedded and Redis store
  coldstart   time to /readyz with 100,000 online users in Redis
  sweep       expiry sweep cost with 100,000 online users
  saturation  1 vs 2 workers: highest deliveries/s with p99 ≤ 100 ms (full only)
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
    baseline,
    coldstart,
    cpu,
    host,
    logins,
    realistic,
    report,
    saturation,
    sweep,
)
from bench.suite.scales import FULL, QUICK  # noqa: E402

PARTS = ("cpu", "baseline", "realistic", "logins", "coldstart", "sweep", "saturation")
RESULTS = Path(__file__).resolve().parent / "results"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {host.load_now():.2f}] {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the few-minute version")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                        metavar="PART", help=f"run only these parts ({', '.join(PARTS)})")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stamp}-{scale.name}.json"
    results: dict = {"mode": scale.name, "machine": host.describe(), "started": stamp,
                     "scale": scale.__dict__}
    print(f"machine: {host.one_line(results['machine'])}", flush=True)
    start = time.monotonic()

    def part(name: str, fn) -> None:  # noqa: ANN001 - a thunk
        log(f"== {name}")
        t = time.monotonic()
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

    only = set(args.only)
    load_at_start = host.load_now()
    if "cpu" in only:
        results["cpu"] = {}
        for store, workers in (("embedded", 1), ("redis", 1), ("redis", 2)):
            load_at_start = host.load_now()
            key = f"{store}-w{workers}"
            part(f"cpu-{key}", lambda s=store, w=workers: cpu.measure(s, w, scale, log))
            results["cpu"][key] = results.pop(f"cpu-{key}")
    if "baseline" in only:
        load_at_start = host.load_now()
        part("baseline", lambda: baseline.run(cpu.update_load(scale), scale.cpu_window_s,
                                              scale.cpu_warmup_s, log))
    if "realistic" in only:
        load_at_start = host.load_now()
        part("realistic", lambda: realistic.run(
            scale, log, profile_path=RESULTS / f"{stamp}-{scale.name}-server-profile.txt"))
    if "logins" in only:
        for store in ("embedded", "redis"):
            load_at_start = host.load_now()
            part(f"logins-{store}", lambda s=store: logins.run(s, scale.login_window_s, log))
    if "coldstart" in only:
        load_at_start = host.load_now()
        part("coldstart", lambda: coldstart.run(scale.coldstart_users, log))
    if "sweep" in only:
        load_at_start = host.load_now()
        part("sweep", lambda: sweep.run(scale.sweep_users, scale.sweep_repeats, log))
    if "saturation" in only and scale.saturation_speeds:
        results["saturation"] = {}
        for workers in (1, 2):
            load_at_start = host.load_now()
            part(f"saturation-w{workers}", lambda w=workers: saturation.search(w, scale, log))
            results["saturation"][f"w{workers}"] = results.pop(f"saturation-w{workers}")
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
