"""Logins as fast as a server takes them: connect, log in, load the module, close.

Each login is what a client does before its first heartbeat (WebSocket
handshake, a freshly signed AuthChain frame, SERVER_READY, port and module);
then the connection closes cleanly. `concurrency` loops do this over and over
with the users of a seeded graph, so the server also loads real friend sets.

    python -m bench.suite.login_driver URL SEED USERS CONCURRENCY SECONDS SOURCES

Prints "ready" once the identities are derived, starts on a line on stdin,
and prints a JSON summary at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import trio

from presenced.simulate.user import classify
from presenced.simulate.wire import WireClient
from presenced.socialgraph import user_identity


async def drive(url: str, identities: list, concurrency: int, seconds: float,
                sources: list[str]) -> dict:
    done = 0
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def loop(k: int) -> None:
        nonlocal done
        i = k
        while trio.current_time() < deadline:
            identity = identities[i % len(identities)]
            source = sources[i % len(sources)]
            i += concurrency
            start = time.monotonic()
            try:
                async with WireClient.connect(url, identity, local_address=source):
                    latencies.append(time.monotonic() - start)
                    done += 1
            except Exception as e:  # counted by kind, the run goes on
                errors[classify(e, True)[0]] += 1

    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(loop, k)
    latencies.sort()
    return {
        "logins": done, "errors": dict(errors),
        "login_ms_p50": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "login_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 1)
        if latencies else None,
    }


def main() -> None:
    url, seed, users, concurrency, seconds, sources = sys.argv[1:7]
    identities = [user_identity(int(seed), i) for i in range(int(users))]
    print("ready", flush=True)
    sys.stdin.readline()
    result = trio.run(drive, url, identities, int(concurrency), float(seconds),
                      sources.split(","))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
