"""Wall-clock milliseconds that follow trio's clock.

Presence shows Unix times (`last_seen_ms`), but tests run the server under
trio's MockClock; deriving the wall clock from `trio.current_time()` keeps
both in step, so a test that jumps 120 s sees users expire.
"""

from __future__ import annotations

import time

import trio


class TrioWallClock:
    def __init__(self) -> None:
        self._wall_at_start = time.time()
        self._trio_at_start = trio.current_time()

    def now_ms(self) -> int:
        return int((self._wall_at_start + trio.current_time() - self._trio_at_start) * 1000)
