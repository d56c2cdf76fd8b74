"""A py-spy profile of a running server, reduced to its top functions."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.suite.procs import PYTHON

TOP = 25


def _py_spy() -> str | None:
    beside = Path(PYTHON).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, keep: Path | None = None) -> dict:
    """Sample `pid` for `seconds` without pausing it (py-spy --nonblocking)."""
    spy = _py_spy()
    if spy is None:
        return {"error": "py-spy not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        done = subprocess.run(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
             "--format", "raw", "--nonblocking", "--output", str(raw)],
            capture_output=True, text=True, timeout=seconds + 60)
        if not raw.exists():
            return {"error": f"py-spy failed: {done.stderr.strip()[-500:]}"}
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, keep)
        return summarize(raw.read_text())


def samples(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output as (frames, outermost first; how many samples had that stack)."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def summarize(raw: str, top: int = TOP) -> dict:
    """Self and inclusive shares of the busiest functions (idle samples are not recorded)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, n in samples(raw):
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[tuple[float, str]]:
        return [(round(100 * n / total, 1), f) for f, n in counter.most_common(top)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
