"""Runs the baseline server and its generator through the same two phases as presenced.

Phase 1 has nobody subscribed (heartbeats only): its CPU per heartbeat is
subtracted from phase 2's CPU before dividing by deliveries, exactly the
arithmetic applied to presenced, so the ratio compares like with like.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

from websockets.sync.client import connect

from bench.suite.procs import PYTHON, ROOT, cpu_seconds, free_port, tree_cpu_seconds
from bench.suite.simload import SOURCES, Load


class _Stats:
    def __init__(self, url: str) -> None:
        self.ws = connect(url, compression=None, open_timeout=30)
        self.ws.send(b"S")

    def get(self) -> dict:
        self.ws.send(b"?")
        return json.loads(self.ws.recv(timeout=30))

    def close(self) -> None:
        self.ws.close()


def _phase(load: Load, subscribe_fraction: float, window_s: float, warmup_s: float,
           processes: int) -> dict:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [PYTHON, "-m", "bench.suite.baseline_server", str(port), str(load.users),
         str(load.avg_friends), str(load.seed)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clients: list[subprocess.Popen] = []
    stats = None
    try:
        line = server.stdout.readline() if server.stdout else ""
        if "ready" not in line:
            raise RuntimeError(f"baseline server did not start: {line}")
        interval = load.heartbeat_interval / load.speed
        for p in range(processes):
            clients.append(subprocess.Popen(
                [PYTHON, "-m", "bench.suite.baseline_client", url, str(load.users),
                 str(load.online_fraction), str(subscribe_fraction), str(load.seed),
                 str(interval), str(p), str(processes), SOURCES[p % len(SOURCES)]],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        stats = _Stats(url)
        deadline = time.monotonic() + load.online / 100 + 120
        while stats.get()["connected"] < load.online:
            if time.monotonic() > deadline:
                raise TimeoutError("baseline clients did not all connect")
            if any(c.poll() is not None for c in clients):
                err = next(c for c in clients if c.poll() is not None).stderr
                raise RuntimeError("a baseline client exited:\n"
                                   + (err.read().decode()[-2000:] if err else ""))
            time.sleep(0.5)
        time.sleep(warmup_s)
        gen0 = sum(tree_cpu_seconds(c.pid) for c in clients)
        cpu0, s0, t0 = cpu_seconds(server.pid), stats.get(), time.monotonic()
        time.sleep(window_s)
        cpu1, s1, t1 = cpu_seconds(server.pid), stats.get(), time.monotonic()
        gen1 = sum(tree_cpu_seconds(c.pid) for c in clients)
        seconds = t1 - t0
        return {
            "seconds": round(seconds, 2),
            "connections": s1["connected"],
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / seconds, 1),
            "generator_cpu_s": round(gen1 - gen0, 3),
            "heartbeats": s1["heartbeats"] - s0["heartbeats"],
            "heartbeats_per_s": round((s1["heartbeats"] - s0["heartbeats"]) / seconds, 1),
            "deliveries": s1["deliveries"] - s0["deliveries"],
            "delivered_per_s": round((s1["deliveries"] - s0["deliveries"]) / seconds, 1),
            "acks": s1["acks"] - s0["acks"],
        }
    finally:
        if stats is not None:
            stats.close()
        for c in clients:
            c.terminate()
        for c in clients:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run(load: Load, window_s: float, warmup_s: float, log: Callable[[str], None],
        processes: int = 2) -> dict:
    log(f"baseline (websockets fan-out): {load.describe()}, heartbeats only")
    beats = _phase(load, 0.0, window_s, warmup_s, processes)
    log(f"baseline (websockets fan-out): {load.describe()}")
    updates = _phase(load, load.subscribe_fraction, window_s, warmup_s, processes)
    hb_us = 1e6 * beats["server_cpu_s"] / beats["heartbeats"] if beats["heartbeats"] else None
    upd_us = None
    if hb_us is not None and updates["deliveries"]:
        upd_us = 1e6 * (updates["server_cpu_s"] - updates["heartbeats"] * hb_us / 1e6) \
            / updates["deliveries"]
    return {"heartbeat_phase": beats, "update_phase": updates,
            "cpu_per_heartbeat_us": _r(hb_us), "cpu_per_update_us": _r(upd_us)}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
