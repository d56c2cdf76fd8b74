"""The hub's background work, driven by trio's MockClock (no sockets)."""

from __future__ import annotations

import logging

import pytest
import trio

from presenced.server.config import ServerConfig
from presenced.server.hub import Hub
from presenced.store.memory import MemoryStore


async def test_a_failing_background_task_is_logged_counted_and_restarted(
    nursery, autojump_clock, caplog, monkeypatch
):
    hub = Hub(ServerConfig(tick_interval_s=1.0), MemoryStore())
    ticks: list[float] = []
    real_tick = hub.engine.tick

    def flaky_tick(now_ms, limit=None):
        ticks.append(trio.current_time())
        if len(ticks) <= 3:
            raise RuntimeError(f"bug {len(ticks)}")
        return real_tick(now_ms, limit)

    monkeypatch.setattr(hub.engine, "tick", flaky_tick)
    with caplog.at_level(logging.ERROR, logger="presenced.hub"):
        await nursery.start(hub.run)
        await trio.sleep(20)
    assert hub.metrics.task_failures["ticker"] == 3
    # The loop kept running after the failures (one tick a second once it works) ...
    assert len(ticks) > 10
    # ... and waited longer after each failure in a row.
    gaps = [b - a for a, b in zip(ticks, ticks[1:4], strict=False)]
    assert gaps == pytest.approx([1.1, 1.2, 1.4])
    failures = [r for r in caplog.records if "background task ticker failed" in r.message]
    assert len(failures) == 3 and failures[0].exc_info is not None
    # The other tasks never stopped.
    assert hub.metrics.task_failures.keys() == {"ticker"}
