"""Run `presenced serve` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is returned, not raised."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def wait_until_ready(
    admin_url: str, timeout: float, proc: subprocess.Popen | None = None,
    token: str | None = None,
) -> None:
    """Until GET /readyz answers 200 (the admin port answers earlier, during start-up)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            status, body = http_get(f"{admin_url}/readyz", token, timeout=1.0)
            if status == 200:
                return
            last = f"{status} {body}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise TimeoutError(f"{admin_url}/readyz not 200 after {timeout} s: {last}")


class Daemon:
    """`presenced serve` on free ports; `args` are extra command-line options."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, admin_ports: int = 1,
        command: list[str] | None = None,
    ) -> None:
        self.args = list(args)
        # What runs `presenced` (the built binary, in tests/test_binary.py).
        self.command = command or [sys.executable, "-m", "presenced"]
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

    def start(self, timeout: float = 20.0, ready: bool = True) -> Daemon:
        """Start and wait until ready (`ready=False`: until the admin port answers)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            *self.command, "serve",
            "--port", str(self.port), "--admin-port", str(self.admin_port), *self.args,
        ]
        with open(self._log.name, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # The admin endpoint answers from early in start-up and /readyz
            # turns 200 once the WebSocket port listens. Probing the WebSocket
            # port itself would leave a connection that never sends a
            # handshake, and shutdown would wait for trio-websocket's connect
            # timeout (10 s) to end it.
            wait_for_port("127.0.0.1", self.admin_port, timeout, self.proc)
            if ready:
                token = {**os.environ, **self.env}.get("PRESENCED_ADMIN_TOKEN")
                wait_until_ready(self.admin_url, timeout, self.proc, token)
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
