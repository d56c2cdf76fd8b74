"""AuthChain verifications per second on one core (two secp256k1 recoveries each).

    .venv/bin/python bench/auth_verify.py [--frames 4000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from presenced.auth import verify_login  # noqa: E402
from presenced.auth.identity import Identity, login_frame  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=4000)
    args = parser.parse_args()
    rng = random.Random(1)
    expiration = datetime.now(UTC) + timedelta(days=1)
    identities = [Identity.generate(rng, expiration) for _ in range(200)]
    now = int(time.time() * 1000)
    frames = [login_frame(identities[i % 200], now + i) for i in range(args.frames)]
    print(describe())
    best = 0.0
    for _ in range(5):
        start = time.process_time()
        for frame in frames:
            verify_login(frame, now_ms=now, window_ms=600_000)
        rate = len(frames) / (time.process_time() - start)
        best = max(best, rate)
    print(f"load: {len(frames)} distinct login frames from 200 identities, best of 5 runs")
    print(f"result: {best:,.0f} verifications/s on one core ({1e6 / best:.0f} µs each)")


if __name__ == "__main__":
    main()
