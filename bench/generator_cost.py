"""The load generator's own CPU per message, against a local `presenced serve`.

`presenced simulate` shares the machine's two cores with the server it loads,
so every microsecond it spends per message is one the server cannot have.
This runs it twice against a fresh embedded-store server (the machinery of
bench/suite: one process of the generator, no churn) and divides the
generator's CPU in a measured window (after the logins) by what crossed the
wire in that window:

- heartbeats only (nobody subscribes): µs per heartbeat (request out,
  response in);
- everyone subscribed: µs per stream item (item in, ACK out) after taking
  off the heartbeats at the first run's cost.

    .venv/bin/python bench/generator_cost.py [--users 2000] [--window 15] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import loadrun  # noqa: E402
from bench.suite.loadrun import FAST_SETTLE, RunSpec  # noqa: E402
from bench.suite.simload import Load  # noqa: E402


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def one(users: int, speed: float, subscribe: float, window: float) -> dict:
    load = Load(users=users, subscribe_fraction=subscribe, speed=speed, churn=0.0,
                ramp=500.0, processes=1)
    run = loadrun.run(RunSpec(f"generator-sub{subscribe:g}", load, "embedded", 1,
                              window, 4.0, FAST_SETTLE), log)
    w = run.window
    return {"generator_cpu_s": w.generator_cpu_s, "server_cpu_s": w.server_cpu_s,
            "heartbeats": w.heartbeats, "stream_items": w.stream_items,
            "delivered": w.delivered, "seconds": w.seconds,
            "errors": run.summary.get("errors")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--speed", type=float, default=15.0,
                        help="heartbeats every 30 s / speed (default: every 2 s)")
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.repeat):
        beats = one(args.users, args.speed, 0.0, args.window)
        subs = one(args.users, args.speed, 1.0, args.window)
        per_beat = 1e6 * beats["generator_cpu_s"] / beats["heartbeats"]
        item_cpu = subs["generator_cpu_s"] - per_beat * 1e-6 * subs["heartbeats"]
        per_item = 1e6 * item_cpu / subs["stream_items"] if subs["stream_items"] else None
        print(json.dumps({
            "generator_us_per_heartbeat": round(per_beat, 1),
            "generator_us_per_stream_item": round(per_item, 1) if per_item else None,
            "generator_us_per_message_subscribed": round(
                1e6 * subs["generator_cpu_s"] / (subs["heartbeats"] + subs["stream_items"]), 1),
            "heartbeat_run": beats, "subscribed_run": subs,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
