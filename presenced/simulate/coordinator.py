"""The parent process: starts the workers, walks them through the phases, merges.

    start workers ─ they derive identities ─┐   parent builds the graph meanwhile
    seed the graph (admin API) ─────────────┘
    go ─ ramp (logins at --ramp/s) ─ load (--duration s) ─ stop ─ settle ─ report ─ exit

The parent never touches a socket of the daemon's WebSocket port: it only
reads pipes, matches cross-process receipts and draws the display. Its loop
is a plain `multiprocessing.connection.wait`, with no event loop.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from presenced.simulate.measure import SENDER_SHIFT, Matcher, SendLog
from presenced.simulate.plan import Population, SimConfig
from presenced.simulate.report import (
    CROSS_HISTOGRAM,
    LOGIN_HISTOGRAM,
    Convergence,
    Totals,
    build_summary,
    check_convergence,
    storm_summary,
)
from presenced.simulate.ui import LiveView, Progress
from presenced.simulate.worker import CLOSE_TIMEOUT_S, WorkerSpec, worker_main
from presenced.socialgraph import SocialGraph

# Seeds the graph: (graph, addresses) -> what the import reported.
Seeder = Callable[[SocialGraph, list[str]], dict[str, Any]]
# Reads the graph from elsewhere (a friends database): addresses of users
# 0..N-1 -> their friendships as index pairs (i < j).
GraphLoader = Callable[[list[str]], list[tuple[int, int]]]

_UI_INTERVAL_S = 0.25


class SimulationError(Exception):
    """The run could not be carried out (a worker died, a phase never ended)."""


class _Interrupted(Exception):
    """The operator asked to stop (Ctrl-C, SIGTERM): wind down and report."""


class _Handle:
    def __init__(self, wid: int, process: multiprocessing.process.BaseProcess,
                 to_worker: Connection, from_worker: Connection) -> None:
        self.id = wid
        self.process = process
        self.to_worker = to_worker
        self.from_worker = from_worker
        self.stats: dict[str, Any] | None = None
        self.flushed_until = 0.0
        self.addresses: list[tuple[int, str]] | None = None
        self.ramped = False
        # False from a latency restart (SIGUSR2) until the worker confirms it:
        # the latency samples it sends meanwhile predate the restart.
        self.measuring = True
        self.stopped = False
        self.final: dict[str, array] | None = None
        self.bye = False
        self.gone = False

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.to_worker.send(message)
        except (BrokenPipeError, OSError):
            # The worker died. Not marked gone here: what it sent before dying (a "fatal"
            # with its traceback) is still to be read, and the end of its pipe marks it.
            pass


class Coordinator:
    def __init__(self, config: SimConfig, ui: LiveView, seeder: Seeder | None,
                 graph_loader: GraphLoader | None = None) -> None:
        self.config = config
        self.ui = ui
        self.seeder = seeder
        self.graph_loader = graph_loader
        self.population = Population.choose(config)
        self.processes = config.processes
        self.handles: list[_Handle] = []
        self.totals = Totals()
        self.log = SendLog(config.retention_s)
        self.matcher = Matcher(self.log)
        # Parent-side matches land in the same histograms as the workers' deltas.
        self.matcher.histograms = self.totals.histograms[:3]
        self.matcher.cross = self.totals.histograms[CROSS_HISTOGRAM]
        self.pending: list[tuple[int, float, float, int]] = []
        self.owner = array("h", [-1]) * config.users
        self.phase = "starting"
        self.started = time.monotonic()
        self.peak_connections = 0
        self._rates: deque[tuple[float, int, int]] = deque()
        self._next_ui = 0.0
        self._next_prune = 0.0
        # Set by interrupt(), from a signal handler: the run stops early and
        # reports what it measured, marked interrupted.
        self.interrupted = False
        self._winding_down = False
        # Set (SIGUSR1) to end the load phase early; the run then stops and reports as usual.
        self.end_load = False
        # Set (SIGUSR2) to measure latency again from now (taken by the pump).
        self._measure_now = False

    def interrupt(self) -> None:
        """Stop the run at the next chance and report what was measured so far."""
        self.interrupted = True

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        # SIGUSR1 ends the load phase early: a caller that measures its own
        # window (bench/) stops the load when it is done, whenever the load
        # phase began; the run then stops, settles and reports as usual.
        # SIGUSR2 restarts the latency measurement: such a caller's window
        # starts after a warm-up, and the latency it reports should too.
        previous: dict[int, Any] = {}
        try:
            previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._end_load_now)
            previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._restart_latency)
        except ValueError:  # not the main thread: no signal handling
            pass
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._shutdown()

    def _end_load_now(self, *_: object) -> None:
        self.end_load = True

    def _restart_latency(self, *_: object) -> None:
        self._measure_now = True

    def _run(self) -> dict[str, Any]:
        config = self.config
        shares = self.population.shares(self.processes)
        subscribers = self.population.subscribers
        order = {index: k for k, index in enumerate(self.population.online)}
        target_of = b""
        if len(config.targets) > 1:
            targets = bytearray(b"\xff") * config.users
            for index, k in order.items():
                targets[index] = k % len(config.targets)
            target_of = bytes(targets)
        context = multiprocessing.get_context("spawn")
        self.phase = "deriving identities"
        for wid, (online, offline) in enumerate(shares):
            for index in online:
                self.owner[index] = wid
            spec = WorkerSpec(
                wid, config,
                tuple((index, order[index], index in subscribers,
                       self.population.churns(index)) for index in online),
                tuple(offline),
                target_of,
            )
            from_worker, worker_end = context.Pipe(duplex=False)
            worker_in, to_worker = context.Pipe(duplex=False)
            process = context.Process(target=worker_main, args=(spec, worker_end, worker_in),
                                      name=f"presenced-simulate-{wid}", daemon=True)
            process.start()
            worker_end.close()
            worker_in.close()
            self.handles.append(_Handle(wid, process, to_worker, from_worker))

        # The graph is needed for seeding and for the final check; build it
        # while the workers sign.
        graph = (SocialGraph.generate(config.users, config.avg_friends, config.seed)
                 if self.graph_loader is None else None)
        addresses = [""] * config.users
        seeded = None
        times: dict[str, float] = {}
        try:
            self._pump(lambda: all(h.addresses is not None for h in self.handles), None,
                       "the workers to derive identities")
            for h in self.handles:
                for index, address in h.addresses or ():
                    addresses[index] = address
            if graph is None:
                assert self.graph_loader is not None
                self.phase = "reading the graph"
                graph = SocialGraph(config.seed, config.users, self.graph_loader(addresses))
                self.ui.note(f"read {len(graph.edges):,} friendships among {config.users:,} "
                             "users from the friends database")

            if self.seeder is not None:
                self.phase = "seeding"
                self.ui.note(f"seeding {len(graph.edges):,} friendships among "
                             f"{config.users:,} users")
                seeded = self.seeder(graph, addresses)

            self.phase = "ramp"
            times["go"] = time.monotonic()
            for h in self.handles:
                h.send(("go", addresses))
            # Each attempt ends within two timeouts (connect, then login) of
            # its slot; the rest is slack for a loaded machine.
            ramp_limit = (1.5 * len(self.population.online) / config.ramp
                          + 2 * config.connect_timeout_s + 60)
            self._pump(lambda: all(h.ramped for h in self.handles), times["go"] + ramp_limit,
                       "the initial logins")

            self.phase = "load"
            times["load"] = time.monotonic()
            self.matcher.measure_from = times["load"]
            for h in self.handles:
                h.send(("load", times["load"]))
            self._pump(lambda: self.end_load, times["load"] + config.duration_s, "")
        except _Interrupted:
            self.ui.note("interrupted: stopping the virtual users and reporting what was "
                         "measured so far")
        self._winding_down = True
        finals_expected = "go" in times

        self.phase = "stopping"
        times["stop"] = time.monotonic()
        if finals_expected:
            for h in self.handles:
                h.send(("stop",))
            self._pump(lambda: all(h.stopped for h in self.handles),
                       times["stop"] + config.connect_timeout_s + 30,
                       "the virtual users to stop")

        self.phase = "settling"
        times["settle"] = time.monotonic()
        if not self.interrupted:
            self._pump(lambda: False, times["settle"] + config.settle_s, "")
        times["report"] = time.monotonic()
        if finals_expected:
            for h in self.handles:
                h.send(("report",))
            self._pump(lambda: all(h.final is not None for h in self.handles),
                       times["report"] + 60, "the final reports")
        # Nobody has sent anything since "stop", and every worker's sends up
        # to its report are in: match what waited for a slower worker.
        for receipt in self.pending:
            if not self.matcher.match(*receipt):
                self.matcher.unmatched += 1
        self.pending.clear()

        self.phase = "closing"
        for h in self.handles:
            h.send(("exit",))
        self._pump(lambda: all(h.bye or h.gone for h in self.handles),
                   time.monotonic() + CLOSE_TIMEOUT_S + 10, "the workers to close")
        t_end = time.monotonic()
        self._merge_worker_matches()

        # Without the settle an interrupted run's views are not final yet:
        # comparing them would count updates still on their way as lost.
        finals = [h.final for h in self.handles if h.final is not None]
        convergence: Convergence = (
            Convergence() if self.interrupted or graph is None else check_convergence(
                graph.adjacency(), finals, addresses, config.realms,
                presence_only=config.subscribe_protocol == "v2"))
        t_go = times.get("go", times["stop"])
        t_load = times.get("load", times["stop"])
        workers = []
        rates: Counter[str] = Counter()
        connected_at_stop = 0
        for h in self.handles:
            stats = h.stats or {}
            marks = stats.get("marks", {})
            cpu_percent = 0.0
            if "load" in marks and "stop" in marks:
                start, end = marks["load"], marks["stop"]
                span = end["t"] - start["t"]
                if span > 0:
                    cpu_percent = 100.0 * (end["cpu_s"] - start["cpu_s"]) / span
                    for name in ("heartbeats", "updates"):
                        rates[name] += (end["counters"][name] - start["counters"][name]) / span
                connected_at_stop += end["counters"]["connected"]
            workers.append({
                "id": h.id,
                "users": stats.get("users", 0),
                "cpu_s": round(stats.get("cpu_s", 0.0), 2),
                "cpu_percent": round(cpu_percent, 1),
                "rss_mib": round(stats.get("rss_kib", 0) / 1024.0, 1),
                "gc": stats.get("gc"),
            })
        return build_summary(
            config=config,
            online_users=len(self.population.online),
            subscribers=len(self.population.subscribers),
            friendships=len(graph.edges) if graph is not None else 0,
            totals=self.totals,
            rates=rates,
            connected_at_stop=connected_at_stop,
            phases={"ramp": t_load - t_go, "load": times["stop"] - t_load,
                    "settle": times["report"] - times["settle"],
                    "total": t_end - self.started},
            peak_connections=self.peak_connections,
            convergence=convergence,
            workers=workers,
            seeded=seeded,
            interrupted=self.interrupted,
            storm=storm_summary(finals, config.offline_grace_s)
            if config.storm_at_s is not None else None,
        )

    def _shutdown(self) -> None:
        for h in self.handles:
            if not h.bye:
                h.send(("exit",))
        deadline = time.monotonic() + CLOSE_TIMEOUT_S + 5
        for h in self.handles:
            h.process.join(max(0.1, deadline - time.monotonic()))
            if h.process.is_alive():
                h.process.terminate()
                h.process.join(5)
            h.to_worker.close()
            h.from_worker.close()

    # ------------------------------------------------------------ the loop

    def _pump(self, done: Callable[[], bool], deadline: float | None, what: str) -> None:
        """Handle worker messages until `done()` or `deadline` (then fail, if `what`)."""
        while not done():
            if self.interrupted and not self._winding_down:
                raise _Interrupted
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if what:
                    raise SimulationError(f"gave up waiting for {what}")
                return
            timeout = _UI_INTERVAL_S if deadline is None else min(_UI_INTERVAL_S,
                                                                   deadline - now)
            live = {h.from_worker: h for h in self.handles if not h.gone}
            if not live:
                raise SimulationError("every worker process has exited")
            for conn in wait(list(live), timeout=max(0.0, timeout)):
                handle = live[conn]  # type: ignore[index]
                try:
                    message = handle.from_worker.recv()
                except (EOFError, OSError):
                    handle.gone = True
                    if not handle.bye:
                        code = handle.process.exitcode
                        raise SimulationError(
                            f"worker {handle.id} exited unexpectedly (status {code})") from None
                    continue
                self._handle(handle, message)
            self._tick()

    def _handle(self, h: _Handle, message: tuple[Any, ...]) -> None:
        what = message[0]
        if what == "stats":
            self._on_stats(h, message[2])
        elif what == "ready":
            h.addresses = message[2]
        elif what == "ramped":
            h.ramped = True
        elif what == "stopped":
            h.stopped = True
        elif what == "measuring":
            h.measuring = True
        elif what == "final":
            h.final = message[2]
        elif what == "bye":
            h.bye = True
        elif what == "fatal":
            raise SimulationError(f"worker {h.id} failed:\n{message[2]}")

    def _on_stats(self, h: _Handle, stats: dict[str, Any]) -> None:
        h.stats = stats
        for i, (mine, delta) in enumerate(zip(self.totals.histograms, stats["histograms"],
                                              strict=True)):
            if h.measuring or i == LOGIN_HISTOGRAM:
                mine.merge(delta)
        keys, times = stats["sends"]
        if keys:
            self.log.record_many(keys, times)
        h.flushed_until = stats["t"]
        resolve = self._resolve
        pending = self.pending
        for receipt in zip(*stats["receipts"], strict=True):
            if not resolve(*receipt):
                pending.append(receipt)
        if pending:
            self.pending = [r for r in pending if not resolve(*r)]

    def _resolve(self, key: int, arrival: float, since: float, cross: int = 0) -> bool:
        """Match a receipt once its sender's sends up to its arrival are in; False to wait.

        Matching earlier could pick an older send of the same key: a login's
        ONLINE (or a logout's OFFLINE) key is the same every session, so the
        previous session's time would still be in the log.
        """
        wid = self.owner[key >> SENDER_SHIFT]
        if wid < 0:
            # Not one of our virtual users: nothing of ours caused it.
            self.matcher.unmatched += 1
            return True
        if self.handles[wid].flushed_until < arrival:
            return False
        if not self.matcher.match(key, arrival, since, cross):
            self.matcher.unmatched += 1
        return True

    def _tick(self) -> None:
        now = time.monotonic()
        if self._measure_now and self.phase == "load":
            self._measure_now = False
            self.matcher.restart(now)
            for h in self.handles:
                h.measuring = False
                h.send(("measure", now))
        if now >= self._next_prune:
            self.log.prune(now)
            self._next_prune = now + 5.0
        counters = self._sum_counters()
        self.peak_connections = max(self.peak_connections, counters["connected"])
        if now < self._next_ui:
            return
        self._next_ui = now + _UI_INTERVAL_S
        rates = self._rates
        rates.append((now, counters["heartbeats"], counters["updates"]))
        while len(rates) > 2 and now - rates[0][0] > 2.0:
            rates.popleft()
        t0, hb0, up0 = rates[0]
        span = now - t0
        notify = self.totals.histograms[0]
        self.ui.update(Progress(
            phase=self.phase,
            elapsed_s=now - self.started,
            connected=counters["connected"],
            online_users=len(self.population.online),
            subscribed=counters["subscribed"],
            logins=counters["logins"],
            login_errors=counters["login_errors"],
            heartbeats_per_s=(counters["heartbeats"] - hb0) / span if span > 0 else 0.0,
            updates_per_s=(counters["updates"] - up0) / span if span > 0 else 0.0,
            p50_ms=notify.percentile(50),
            p99_ms=notify.percentile(99),
            samples=notify.count,
            errors=sum(self._sum_errors().values()),
        ))

    # ------------------------------------------------------------- merging

    def _sum_counters(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for h in self.handles:
            if h.stats is not None:
                total.update(h.stats["counters"])
        return total

    def _sum_errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for h in self.handles:
            if h.stats is not None:
                total.update(h.stats["errors"])
        return total

    def _merge_worker_matches(self) -> None:
        totals = self.totals
        totals.counters = self._sum_counters()
        totals.errors = self._sum_errors()
        matched = list(self.matcher.matched)
        excluded = self.matcher.excluded
        unmatched = self.matcher.unmatched + totals.unmatched
        for h in self.handles:
            stats = h.stats or {}
            for kind, n in enumerate(stats.get("matched", (0, 0, 0))):
                matched[kind] += n
            excluded += stats.get("excluded", 0)
            unmatched += stats.get("unmatched", 0)
            for kind, samples in stats.get("samples", {}).items():
                totals.samples.setdefault(kind, []).extend(samples)
        totals.matched = matched
        totals.excluded = excluded
        totals.unmatched = unmatched
