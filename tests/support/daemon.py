"""Run `presenced serve` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Lines of a daemon's log printed when a test using it fails.
LOG_TAIL_LINES = 60


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (worker i uses base + i)."""
    for _ in range(100):
        base = free_port(host)
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind((host, base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout} s")


class Daemon:
    """`presenced serve` on free ports; `args` are extra command-line options."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, admin_ports: int = 1
    ) -> None:
        self.args = list(args)
        self.env = env or {}
        self.port = free_port()
        # `--workers N` serves admin endpoints on N consecutive ports.
        self.admin_port = free_ports(admin_ports)
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="presenced-", suffix=".log", delete=False)
        # Only the name is kept: an open handle would leak (a ResourceWarning,
        # an error under pytest) for a Daemon stopped without __exit__.
        self._log.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            sys.executable, "-m", "presenced", "serve",
            "--port", str(self.port), "--admin-port", str(self.admin_port), *self.args,
        ]
        with open(self._log.name, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # serve() opens the admin port after the WebSocket port is bound, so
            # this waits for both. Probing the WebSocket port itself would leave
            # a connection that never sends a handshake, and shutdown would wait
            # for trio-websocket's connect timeout (10 s) to end it.
            wait_for_port("127.0.0.1", self.admin_port, timeout, self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"presenced serve did not start: {e}\n{self.log()}") from None
        return self

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    @property
    def log_path(self) -> str:
        return self._log.name

    def close(self, failed: bool = False) -> None:
        """Stop, and remove the log, unless the test `failed`: then the log is
        kept and its path and last lines printed (pytest shows them with the
        failure)."""
        self.stop()
        if not failed:
            os.unlink(self._log.name)
            return
        tail = "\n".join(self.log().splitlines()[-LOG_TAIL_LINES:])
        print(f"\n--- presenced serve {' '.join(self.args)}: log kept at {self._log.name}; "
              f"last lines:\n{tail}\n---")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)
