"""Where a heartbeat's CPU goes at a low rate: py-spy profiles of the server, embedded vs Redis.

The CPU runs of `scripts/bench` (part `heartbeat`) find a heartbeat at 400/s costs about twice
as much with the Redis store as with the embedded one, far more than the Redis write itself.
This runs the same "slow" load (the cpu part's run 2: everyone online, nobody subscribed) once
per store, samples the server with py-spy for `--seconds` after the window (as the realistic
run does), and prints the busiest functions of each, split by thread.

    .venv/bin/python bench/profile_heartbeat.py [--quick] [--seconds 30]

Needs the `bench` extra (py-spy); `scripts/bench` installs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import cpu, loadrun  # noqa: E402
from bench.suite.loadrun import FAST_SETTLE, RunSpec  # noqa: E402
from bench.suite.procs import Server  # noqa: E402
from bench.suite.profile import _py_spy, samples  # noqa: E402
from bench.suite.scales import FULL, QUICK  # noqa: E402

TOP = 15
RESULTS = Path(__file__).resolve().parent / "results"


Profile = tuple[int, Counter[str], dict[str, Counter[str]], dict[str, Counter[str]]]


def by_thread(raw: str) -> Profile:
    """Samples per thread; per thread, samples by innermost function (self) and by function
    anywhere on the stack (inclusive)."""
    threads: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    total = 0
    for stack, n in samples(raw):
        total += n
        # The first frame names the thread ("thread (0x7f..): MainThread"): kept whole, or
        # every thread would be "thread"; the others lose their file and line.
        thread = stack[0]
        frames = [thread] + [f.split(" (")[0] for f in stack[1:]]
        threads[thread] += n
        own.setdefault(thread, Counter())[frames[-1]] += n
        seen = inclusive.setdefault(thread, Counter())
        for frame in set(frames[1:]):
            seen[frame] += n
    return total, threads, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick scale's load")
    parser.add_argument("--seconds", type=float, default=30.0, help="py-spy sampling time")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    spy = _py_spy()
    if spy is None:
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    for store in ("embedded", "redis"):
        raw_text: list[str] = []

        def sample(server: Server, seconds: float, raw_text: list[str] = raw_text) -> dict:
            log(f"py-spy on the server for {seconds:.0f} s")
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "raw.txt"
                subprocess.run(
                    [spy, "record", "--pid", str(server.worker_pids()[0]), "--duration",
                     str(int(seconds)), "--rate", "200", "--format", "raw", "--nonblocking",
                     "--threads", "--output", str(out)],
                    check=True, capture_output=True)
                raw_text.append(out.read_text())
            return {}

        spec = RunSpec(f"profile-{store}-slow", cpu.quiet_load(scale), store, 1,
                       scale.cpu_window_s, scale.cpu_warmup_s, FAST_SETTLE,
                       after=sample, after_s=args.seconds)
        result = loadrun.run(spec, log)
        per_hb = cpu.per_heartbeat_us(result)[0] or float("nan")
        raw = raw_text[0] if raw_text else ""
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-profile-{store}.txt").write_text(raw)
        total, threads, own, inclusive = by_thread(raw)
        print(f"\n== {store} store: {per_hb:.1f} µs per heartbeat in the window; "
              f"{total} busy samples at 200/s over {args.seconds:.0f} s "
              f"({total / 2 / args.seconds:.1f} % of a core)")
        for thread, n in threads.most_common():
            print(f"  {100 * n / total:5.1f} %  {thread}")
            print("     self:")
            for frame, m in own[thread].most_common(TOP):
                print(f"           {100 * m / total:5.1f} %  {frame}")
            # Frames on almost every stack (main, run, ...) say nothing: left out.
            print("     inclusive (frames on less than 60 % of the thread's samples):")
            shown = [(f, m) for f, m in inclusive[thread].most_common() if m < 0.6 * n][:TOP]
            for frame, m in shown:
                print(f"           {100 * m / total:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
