"""Resident memory of a socket awaiting login (docs/security.md, "Connection caps").

Starts `presenced serve` (login timeout 600 s), opens N sockets that connect and send nothing,
then N that complete the WebSocket upgrade and send nothing more, spread over 50 loopback
source addresses (so that the per-address limit closes none of them), and prints the growth
of the server's RSS per socket after each step.

    .venv/bin/python bench/preauth_memory.py [--n 3000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
SOURCES = 50


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_sockets(port: int, n: int, send: bytes | None) -> list[socket.socket]:
    sockets = []
    for i in range(n):
        sock = socket.socket()
        sock.bind((f"127.0.0.{2 + i % SOURCES}", 0))
        sock.connect(("127.0.0.1", port))
        if send:
            sock.sendall(send)
        sockets.append(sock)
    return sockets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    n = parser.parse_args().n
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "presenced", "serve", "--port", str(port), "--admin-port", "0",
         "--log-level", "warning", "--auth-timeout", "600"], cwd=ROOT)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.5)
        base = rss_kib(server.pid)
        silent = open_sockets(port, n, None)
        time.sleep(3)
        after_silent = rss_kib(server.pid)
        upgraded = open_sockets(port, n, UPGRADE)
        time.sleep(3)
        after_upgraded = rss_kib(server.pid)
        answered = sum(1 for s in upgraded[:50] if s.recv(4096).startswith(b"HTTP/1.1 101"))
        print(f"{n} silent sockets: {(after_silent - base) * 1024 / n:,.0f} B each; "
              f"{n} upgraded: {(after_upgraded - after_silent) * 1024 / n:,.0f} B each "
              f"({answered}/50 answered 101); server RSS at start {base:,} KiB")
        for sock in silent + upgraded:
            sock.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
