"""`presenced simulate` as the load generator, in its own processes.

The benchmark never measures the generator's side of the numbers except
latency: CPU and counts come from the server. A run is started in the
background; the caller waits until the initial logins are in (read from
the server's own login counter), measures a window, and then collects
simulate's JSON summary (latency, errors, convergence).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.suite import metrics as m
from bench.suite.procs import PYTHON, ROOT, Group, Server, descendants, tree_cpu_seconds

# Source addresses the generator spreads its connections over: one address
# has ~28,000 ephemeral ports, and churned connections linger in TIME_WAIT.
SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 10))


@dataclass
class Load:
    """One simulate run's settings (see `presenced simulate --help`)."""

    users: int
    online_fraction: float = 0.5
    subscribe_fraction: float = 1.0
    avg_friends: float = 20.0
    speed: float = 1.0
    heartbeat_interval: float = 30.0
    churn: float = 2.0
    duration: float = 60.0
    ramp: float = 300.0
    processes: int = 1
    seed: int = 1
    # False: users only log in and answer pings (idle connections).
    heartbeats: bool = True
    subscribe_protocol: str = "adr246"
    reconnect_delay: float = 10.0
    # None: everyone churns; else only this share of the online users, who never subscribe.
    churn_fraction: float | None = None
    # The reconnect storm: seconds into the load phase, and its spread.
    storm_at: float | None = None
    storm_spread: float = 1.0
    extra: list[str] = field(default_factory=list)

    @property
    def online(self) -> int:
        return max(1, round(self.users * self.online_fraction))

    def describe(self) -> str:
        churn = f"churn {self.churn:g}/h" if self.churn else "no churn"
        if self.churn and self.speed != 1:
            churn += " simulated"
        if self.churn and self.churn_fraction is not None:
            churn += (f" for {self.churn_fraction:.0%} of them (never subscribed; the others "
                      f"stay connected)")
        beats = (f"heartbeat every {self.heartbeat_interval / self.speed:g} s"
                 if self.heartbeats else "no heartbeats (keepalive only)")
        subscribed = f"{self.subscribe_fraction:.0%} subscribed"
        if self.subscribe_fraction and self.subscribe_protocol != "adr246":
            subscribed += f" ({self.subscribe_protocol})"
        text = (f"{self.online:,} online of {self.users:,} (avg {self.avg_friends:g} friends, "
                f"skewed), {subscribed}, {beats}, {churn}")
        if self.storm_at is not None:
            text += f"; everyone dropped at once, back within {self.storm_spread:g} s"
        return text


class Simulation:
    def __init__(self, server: Server | Group, load: Load, seed_graph: bool = True,
                 targets: list[str] | None = None) -> None:
        self.server = server
        self.load = load
        self.seed_graph = seed_graph
        self.targets = targets or [server.url]
        fd, name = tempfile.mkstemp(prefix="presenced-bench-sim-", suffix=".json")
        os.close(fd)
        self.out_path = Path(name)
        self.err_path = self.out_path.with_suffix(".err")
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def command(self) -> list[str]:
        load = self.load
        cmd = [
            PYTHON, "-m", "presenced", "simulate",
            *(arg for url in self.targets for arg in ("--target", url)),
            "--admin-url", self.server.admin_url(0),
            "--users", str(load.users), "--avg-friends", str(load.avg_friends),
            "--seed", str(load.seed), "--online-fraction", str(load.online_fraction),
            "--subscribe-fraction", str(load.subscribe_fraction),
            "--duration", str(load.duration), "--speed", str(load.speed),
            "--heartbeat-interval", str(load.heartbeat_interval),
            "--churn", str(load.churn), "--ramp", str(load.ramp),
            "--processes", str(load.processes),
            "--source-addresses", ",".join(SOURCES[:max(1, min(len(SOURCES),
                                                              load.processes))]),
            "--reconnect-delay", str(load.reconnect_delay),
            "--subscribe-protocol", load.subscribe_protocol,
            "--json", *load.extra,
        ]
        if not load.heartbeats:
            cmd.append("--no-heartbeats")
        if load.churn_fraction is not None:
            cmd += ["--churn-fraction", str(load.churn_fraction)]
        if load.storm_at is not None:
            cmd += ["--storm-at", str(load.storm_at), "--storm-spread", str(load.storm_spread)]
        if not self.seed_graph:
            cmd.append("--no-seed")
        return cmd

    def start(self) -> Simulation:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """The whole generator (parent and worker processes)."""
        return tree_cpu_seconds(self.pid)

    def wait_ramped(self, timeout: float) -> float:
        """Wait until the server counted a login of every online user; seconds waited.

        Churned users log in again, so the count can run a little ahead of
        the ramp; a window that starts a few seconds later absorbs that.
        """
        target = self.load.online
        start = time.monotonic()
        deadline = start + timeout
        while True:
            self._check_alive()
            if m.logins_ok(self.server.metrics()) >= target:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise TimeoutError(f"the generator did not log in {target:,} users within "
                                   f"{timeout:.0f} s\n{self.stderr_tail()}")
            time.sleep(1.0)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"presenced simulate exited early ({self.proc.returncode}):\n"
                               f"{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def measure_from_now(self) -> None:
        """Drop the latency samples so far: what simulate reports starts now."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR2)

    def end_load(self) -> None:
        """End the load phase now (simulate then stops, settles and reports)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)

    def result(self, timeout: float) -> dict:
        """simulate's JSON summary (its exit status is 1 on any error; still a result)."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(
                f"presenced simulate did not finish within {timeout:.0f} s") from None
        try:
            return json.loads(self.out_path.read_text())
        except ValueError:
            raise RuntimeError(f"presenced simulate printed no summary "
                               f"(exit {self.proc.returncode}):\n{self.stderr_tail()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Its workers end when the parent's pipe closes, but not if the
            # parent is killed mid-run: take the whole tree down.
            tree = descendants(self.proc.pid)
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in tree:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        for path in (self.out_path, self.err_path):
            try:
                path.unlink()
            except OSError:
                pass

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
