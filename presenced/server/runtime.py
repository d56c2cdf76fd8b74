"""Process-level set-up for the daemon: the garbage collector (logging: presenced/logs.py)."""

from __future__ import annotations

import gc
import logging
import time

from presenced.server.metrics import Histogram

# Pauses of the garbage collector in this process, by generation (seconds).
GC_PAUSES: dict[int, Histogram] = {
    generation: Histogram((0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    for generation in range(3)
}
_gc_started = 0.0
# Pauses longer than this are logged: they delay every connection at once.
SLOW_GC_S = 0.1


def _time_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        pause = time.perf_counter() - _gc_started
        GC_PAUSES[info["generation"]].observe(pause)
        if pause > SLOW_GC_S:
            logging.getLogger("presenced.gc").info(
                "garbage collection of generation %d took %.0f ms (%d objects freed)",
                info["generation"], pause * 1000, info["collected"],
            )


# Young-generation threshold. Measured (docs/performance.md): a young
# collection's pause grows with the number of connections active since the
# previous one, because every suspended task's await chain is re-created
# (young) each time it wakes. Message traffic allocates and frees in balance
# and never advances this count; logins and growth do. A high threshold makes
# the pauses rare; the cyclic garbage it lets accumulate is small (a few
# hundred objects per collection were freed under load).
GC_THRESHOLDS = (200_000, 50, 1000)


def tune_gc() -> None:
    """Make garbage collection rare for a long-lived server with many tasks.

    With default thresholds, a server holding 10k connections was measured
    spending over half its time in the collector, with pauses up to 0.7 s.
    Raising the thresholds makes collections rare, and freezing what exists
    at start-up (modules, configuration) keeps it out of every later pass.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


def freeze_loaded_state() -> None:
    """Move what the daemon loaded at start (the store's picture) out of GC passes.

    Called once, when the store is ready and before connections arrive: the
    mirror of everyone online (100k users from Redis) is long-lived and would
    otherwise be traversed by every older-generation collection.
    """
    gc.collect()
    gc.freeze()
