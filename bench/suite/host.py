"""What the numbers were measured on: recorded with every result."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _redis_version() -> str:
    if shutil.which("redis-server") is None:
        return "not installed"
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "not installed"
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def describe() -> dict:
    import trio
    import trio_websocket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(_mem_gib(), 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "trio_websocket": trio_websocket.__version__,
        "node": _node_version(),
        "redis": _redis_version(),
        "open_files": f"{soft}/{hard}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def one_line(m: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    return (f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']:.0f} GiB, Python {m['python']}, "
            f"Node {m.get('node', '?')}, Redis {m['redis']}, open files {m['open_files']}; "
            f"load average at start {load}")


def load_now() -> float:
    return round(os.getloadavg()[0], 2)
