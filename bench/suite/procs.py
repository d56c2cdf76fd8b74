"""Processes the benchmark starts, and their own CPU and memory accounting.

The machine is shared by the server, Redis and the load generator (and by
whatever else runs there), so every CPU figure is read from the measured
process's own `/proc/<pid>/stat` (utime + stime), never inferred from wall
time. A `--workers N` server is a supervisor plus N spawned children: its
CPU and memory are the sum over the whole process tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------ /proc readers


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    # The command name may contain spaces: fields start after its ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    out = [pid]
    i = 0
    while i < len(out):
        try:
            tasks = os.listdir(f"/proc/{out[i]}/task")
        except OSError:
            tasks = []
        for tid in tasks:
            try:
                with open(f"/proc/{out[i]}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        i += 1
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in descendants(pid))


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(p) for p in descendants(pid))


def open_files(pid: int) -> int:
    """File descriptors a process holds (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# ------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (a worker's admin port is base + i)."""
    for _ in range(200):
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None,
              status: int = 200) -> float:
    """Poll `url` until it answers `status`; returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} while waiting "
                                   f"for {url}")
            try:
                if client.get(url).status_code == status:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer {status} within {timeout} s")
            time.sleep(0.01)


# ---------------------------------------------------------------- presenced


@dataclass
class Snapshot:
    """The server's own accounting at one moment."""

    t: float
    cpu_s: float
    rss: int
    metrics: dict[str, float]


class Server:
    """`presenced serve` on free ports, as a subprocess (a process tree with --workers)."""

    kind = "presenced"

    def __init__(self, *args: str, workers: int = 1, log_name: str = "server",
                 env: dict[str, str] | None = None) -> None:
        self.workers = workers
        self.port = free_port()
        self.admin_port = free_ports(workers)
        self.args = ["--port", str(self.port), "--admin-port", str(self.admin_port),
                     "--log-level", "warning", *args]
        if workers > 1:
            self.args += ["--workers", str(workers)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(tempfile.gettempdir()) / (
            f"presenced-bench-{log_name}-{os.getpid()}-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def admin_url(self, worker: int = 0) -> str:
        return f"http://127.0.0.1:{self.admin_port + worker}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [PYTHON, "-m", "presenced", "serve", *self.args]

    def start(self, timeout: float = 60.0, wait: bool = True) -> Server:
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=ROOT)
        if wait:
            try:
                self.wait_ready(timeout)
            except Exception as e:
                self.stop()
                raise RuntimeError(f"{self.kind} did not become ready: {e}\n"
                                   f"{self.log_tail()}") from None
        return self

    def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn until every worker's /readyz answers 200."""
        for w in range(self.workers):
            wait_http(f"{self.admin_url(w)}/readyz", timeout, self.proc)
        return time.monotonic() - self.started_at

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The processes that serve connections (the supervisor's children with --workers)."""
        tree = descendants(self.pid)
        return tree[1:] if self.workers > 1 else tree[:1]

    def metrics(self) -> dict[str, float]:
        """Every worker's /metrics, summed by series."""
        from bench.suite.metrics import parse_prometheus

        total: dict[str, float] = {}
        with httpx.Client(timeout=10.0) as client:
            for w in range(self.workers):
                text = client.get(f"{self.admin_url(w)}/metrics").text
                for key, value in parse_prometheus(text).items():
                    total[key] = total.get(key, 0.0) + value
        return total

    def open_files(self) -> list[int]:
        """File descriptors held by each process that serves connections."""
        return [open_files(pid) for pid in self.worker_pids()]

    def snapshot(self, with_metrics: bool = True) -> Snapshot:
        # CPU first and metrics after: the scrape itself costs the server a
        # little CPU, which then lands outside the measured window.
        cpu = tree_cpu_seconds(self.pid)
        rss = tree_rss_bytes(self.pid)
        t = time.monotonic()
        return Snapshot(t, cpu, rss, self.metrics() if with_metrics else {})

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(descendants(proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        try:
            self.log_path.unlink()
        except OSError:
            pass


class TsPeer(Server):
    """bench/tspeer (the TypeScript peer) on free ports: `node dist/index.js`.

    It takes presenced's option names for the rules both share (offline grace,
    TTL, rate limit, ...) and answers the same admin subset, so every part
    drives it exactly as it drives `presenced serve`. Built by scripts/bench.
    """

    kind = "tspeer"
    ENTRY = ROOT / "bench" / "tspeer" / "dist" / "index.js"

    def __init__(self, *args: str, workers: int = 1, log_name: str = "tspeer",
                 env: dict[str, str] | None = None) -> None:
        if workers != 1:
            raise ValueError("the TypeScript peer runs one process")
        super().__init__(*args, workers=1, log_name=log_name, env=env)
        # presenced's --log-level has no counterpart there.
        i = self.args.index("--log-level")
        del self.args[i:i + 2]

    @classmethod
    def missing(cls) -> str | None:
        """Why the peer cannot run here, or None."""
        if shutil.which("node") is None:
            return "node is not installed (the TypeScript peer needs Node 20)"
        if not cls.ENTRY.is_file():
            return (f"{cls.ENTRY.relative_to(ROOT)} is missing: scripts/bench installs and "
                    "builds the peer (npm ci --prefix bench/tspeer && bench/tspeer/build)")
        return None

    def command(self) -> list[str]:
        problem = self.missing()
        if problem is not None:
            raise RuntimeError(problem)
        return [shutil.which("node") or "node", str(self.ENTRY), *self.args]


def start_server(kind: str, *args: str, workers: int = 1, log_name: str = "server") -> Server:
    """presenced or the TypeScript peer, not started yet (use it as a context manager)."""
    cls = TsPeer if kind == "tspeer" else Server
    return cls(*args, workers=workers, log_name=log_name)


class Group:
    """Several servers measured as one (two instances sharing one Redis)."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.workers = sum(s.workers for s in servers)
        self.kind = servers[0].kind

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def admin_url(self, worker: int = 0) -> str:
        return self.servers[0].admin_url(worker)

    @property
    def pid(self) -> int:
        return self.servers[0].pid

    def worker_pids(self) -> list[int]:
        return [p for s in self.servers for p in s.worker_pids()]

    def open_files(self) -> list[int]:
        return [n for s in self.servers for n in s.open_files()]

    def metrics(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for s in self.servers:
            for key, value in s.metrics().items():
                total[key] = total.get(key, 0.0) + value
        return total

    def snapshot(self, with_metrics: bool = True) -> Snapshot:
        cpu = sum(tree_cpu_seconds(s.pid) for s in self.servers)
        rss = sum(tree_rss_bytes(s.pid) for s in self.servers)
        t = time.monotonic()
        return Snapshot(t, cpu, rss, self.metrics() if with_metrics else {})

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(s.log_tail(lines) for s in self.servers)


# -------------------------------------------------------------------- Redis


class Redis:
    """A private redis-server on a free port: no persistence, never anyone else's."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="presenced-bench-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Redis:
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
                 "--loglevel", "warning"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError("redis-server did not start")

    def client(self):  # noqa: ANN201 - redis.Redis, imported lazily
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Redis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
