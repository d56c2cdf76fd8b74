"""Logins verified per second: server CPU per login, and the rate one process sustains.

A login is CPU-heavy on the server: two secp256k1 public-key recoveries for
the AuthChain, keccak hashes, JSON, then the friend set, the session and the
RPC set-up. The driver (its own process) keeps enough logins in flight to
saturate the server if it can; the server's own CPU per login gives the
rate a whole core would sustain, and the measured rate is what this
machine, shared with the driver, reached. The TypeScript peer is driven
the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

from bench.suite import metrics as m
from bench.suite.cpu import CONFIGS
from bench.suite.loadrun import seed_graph
from bench.suite.procs import PYTHON, ROOT, Redis, start_server, tree_cpu_seconds
from bench.suite.simload import SOURCES, Load

IDENTITIES = 2000
CONCURRENCY = 48


def run(config: str, window_s: float, log: Callable[[str], None]) -> dict:
    c = CONFIGS[config]
    store = c.store
    redis = Redis().start() if store == "redis" else None
    try:
        args = ["--redis-url", redis.url] if redis else []
        graph = Load(users=2 * IDENTITIES, seed=3)
        with start_server(c.server, *args, log_name=f"logins-{config}") as server:
            seed_graph(server, graph)
            log(f"logins ({c.label}): {CONCURRENCY} logins in flight, "
                f"{IDENTITIES:,} users of a {graph.users:,}-user graph (avg 20 friends)")
            warmup = 3.0
            driver = subprocess.Popen(
                [PYTHON, "-m", "bench.suite.login_driver", server.url, str(graph.seed),
                 str(IDENTITIES), str(CONCURRENCY), str(warmup + window_s + 2),
                 ",".join(SOURCES)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                assert driver.stdin is not None and driver.stdout is not None
                if driver.stdout.readline().strip() != "ready":
                    raise RuntimeError("the login driver did not start")
                driver.stdin.write("go\n")
                driver.stdin.flush()
                time.sleep(warmup)
                a = server.snapshot()
                gen0 = tree_cpu_seconds(driver.pid)
                time.sleep(window_s)
                b = server.snapshot()
                gen1 = tree_cpu_seconds(driver.pid)
                out, _ = driver.communicate(timeout=120)
                summary = json.loads(out.strip().splitlines()[-1])
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
        seconds = b.t - a.t
        cpu = b.cpu_s - a.cpu_s
        logins = m.logins_ok(b.metrics) - m.logins_ok(a.metrics)
        failed = m.logins_failed(b.metrics) - m.logins_failed(a.metrics)
        per_login = cpu / logins if logins else None
        return {
            "label": c.label,
            "store": store,
            "seconds": round(seconds, 2),
            "logins": logins,
            "failed": failed,
            "logins_per_s": round(logins / seconds, 1),
            "server_cpu_percent": round(100 * cpu / seconds, 1),
            "cpu_per_login_ms": round(1000 * per_login, 3) if per_login else None,
            "logins_per_s_per_core": round(1 / per_login, 1) if per_login else None,
            "generator_cpu_percent": round(100 * (gen1 - gen0) / seconds, 1),
            "driver": summary,
        }
    finally:
        if redis is not None:
            redis.stop()
