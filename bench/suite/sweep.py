"""Expiry sweep cost with N online users: the engine's tick and the Redis claim script.

Two sweeps exist (docs/redis.md, "Expiry"): each instance's engine expires
its own silent users on every tick (0.5 s), and every instance's sweeper
runs the claim script (every 5 s) for users whose instance died. Both are
timed with nothing to expire (the steady state) and with 10 % of the users
expiring at once.

- engine: N users with sessions and friends (the graph `simulate` uses), half
  of them subscribed, in a `PresenceEngine` in this process; a tenth of the
  users last heard from more than the TTL ago.
- claim: N users in Redis, written by an instance that stays alive; for the
  10 % case a tenth of them are written by an instance that then dies, with
  a last-seen older than the TTL, and wait until it counts as dead.

Runs as its own process (`python -m bench.suite.sweep engine|claim N REPEATS
[REDIS_URL]`), printing JSON, so its memory never burdens the benchmark.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from bench.suite.procs import PYTHON, ROOT, Redis, cpu_seconds

EXPIRING = 0.1


def _stats(values: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values)
    return {"median_ms": round(statistics.median(ms), 3), "max_ms": round(ms[-1], 3),
            "runs": len(ms)}


# ------------------------------------------------------------------ engine


def engine(users: int, repeats: int) -> dict:
    from bench.suite.populate import address
    from presenced.engine import EngineConfig, PresenceEngine
    from presenced.server.hub import EXPIRY_STEP
    from presenced.simulate.plan import Population, SimConfig
    from presenced.socialgraph import SocialGraph

    config = EngineConfig()
    graph = SocialGraph.generate(2 * users, 20.0, 1)
    adjacency = graph.adjacency()
    population = Population.choose(SimConfig(users=2 * users, seed=1, online_fraction=0.5,
                                             subscribe_fraction=0.5))
    online = list(population.online)
    stale = set(online[::int(1 / EXPIRING)])
    idle, expiring, longest_step = [], [], []
    for _ in range(repeats):
        writes: list = []
        eng = PresenceEngine(config, writes.append)
        now = int(time.time() * 1000)
        old = now - config.ttl_ms - 1000
        # Stale users first: the engine keeps its users in order of last sign of life.
        order = sorted(online, key=lambda i: i not in stale)
        for sid, i in enumerate(order, 1):
            eng.open_session(sid, address(i), [address(f) for f in adjacency[i]],
                             old if i in stale else now)
            if i in population.subscribers:
                eng.subscribe(sid)
        writes.clear()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # The steady state: the oldest user is fresher than the TTL.
        fresh = eng.tick(old + 1)
        assert not fresh
        for _ in range(200):
            t = time.perf_counter()
            eng.tick(old + 1)
            idle.append(time.perf_counter() - t)
        # As the server's ticker does it: steps of EXPIRY_STEP users, between
        # which the event loop serves connections.
        closed = []
        t = time.perf_counter()
        while eng.due(now):
            s = time.perf_counter()
            closed += eng.tick(now, EXPIRY_STEP)
            longest_step.append(time.perf_counter() - s)
        expiring.append(time.perf_counter() - t)
        gc.unfreeze()
    return {"users": len(online), "expired": len(closed), "writes": len(writes),
            "step_users": EXPIRY_STEP,
            "nothing_expires": _stats(idle), "ten_percent_expire": _stats(expiring),
            "longest_step": _stats(longest_step)}


# ------------------------------------------------------------------- claim


async def _claim(url: str, users: int, repeats: int, redis_pid: int) -> dict:
    import trio

    from bench.suite.populate import write_presence
    from presenced.server.config import ServerConfig
    from presenced.store.redis_store import RedisStore

    config = ServerConfig()
    ttl = config.engine.ttl_ms
    stale = int(users * EXPIRING)
    owner = RedisStore(url, config.redis_store_config(), instance_id="alive-owner")
    claimer = RedisStore(url, config.redis_store_config(), instance_id="claimer")
    idle, expiring, redis_idle, redis_expiring, claimed = [], [], [], [], []
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run, lambda events: None)
        await nursery.start(claimer.run, lambda events: None)
        await write_presence(owner, range(stale, users), int(time.time() * 1000))
        for k in range(repeats):
            dead = RedisStore(url, config.redis_store_config(), instance_id=f"dead-{k}")
            async with trio.open_nursery() as inner:
                await inner.start(dead.run, lambda events: None)
                await write_presence(dead, range(stale), int(time.time() * 1000) - ttl - 5000)
                inner.cancel_scope.cancel()
            await dead.aclose(leave=False)
            # Its users are only claimable once it no longer counts as alive.
            await trio.sleep(dead.dead_after_ms / 1000 + 1.0)
            for _ in range(20):
                r0 = cpu_seconds(redis_pid)
                t = time.perf_counter()
                got = await claimer.claim_expired(int(time.time() * 1000) - 60_000, ttl)
                idle.append(time.perf_counter() - t)
                redis_idle.append(cpu_seconds(redis_pid) - r0)
                assert not got
            r0 = cpu_seconds(redis_pid)
            t = time.perf_counter()
            got = await claimer.claim_expired(int(time.time() * 1000), ttl)
            expiring.append(time.perf_counter() - t)
            redis_expiring.append(cpu_seconds(redis_pid) - r0)
            claimed.append(len(got))
        nursery.cancel_scope.cancel()
    await owner.aclose(leave=False)
    await claimer.aclose(leave=False)
    return {"users": users, "expired": claimed,
            "nothing_expires": _stats(idle), "ten_percent_expire": _stats(expiring),
            "redis_cpu_ms_ten_percent": round(1000 * statistics.median(redis_expiring), 1)}


def claim(url: str, users: int, repeats: int, redis_pid: int) -> dict:
    import trio

    return trio.run(_claim, url, users, repeats, redis_pid)


# --------------------------------------------------------------- the part


def _subprocess(*args: str) -> dict:
    done = subprocess.run([PYTHON, "-m", "bench.suite.sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"sweep {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(users: int, repeats: int, log: Callable[[str], None]) -> dict:
    log(f"sweep: engine tick with {users:,} online users (sessions, friends, half subscribed)")
    eng = _subprocess("engine", str(users), str(repeats))
    log(f"sweep: Redis claim script with {users:,} online users")
    with Redis() as redis:
        clm = _subprocess("claim", str(users), str(repeats), redis.url, str(redis.pid))
    return {"engine_tick": eng, "claim": clm}


if __name__ == "__main__":
    what, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if what == "engine":
        out = engine(n, reps)
    else:
        out = claim(sys.argv[4], n, reps, int(sys.argv[5]))
    print(json.dumps(out))
