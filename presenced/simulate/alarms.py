"""Every virtual user's sleep in one heap, woken by one task.

A user spends its life sleeping until its next heartbeat, churn or login.
With `trio.move_on_at` each of those sleeps costs a cancel scope, a deadline
registration and a parking-lot wait, which a profile of a worker driving
thousands of users put among its largest costs. Here a sleeping user is just
a heap entry and a parked task: one timer task wakes whoever is due, and the
stop of a run wakes everyone at once.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio


class Alarms:
    def __init__(self) -> None:
        # [deadline, tie-breaker, task or None once woken or cancelled]
        self._heap: list[list] = []
        self._ids = itertools.count()
        self._scope: trio.CancelScope | None = None

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` (trio time) or until `wake_all()`."""
        entry = [deadline, next(self._ids), trio.lowlevel.current_task()]
        heapq.heappush(self._heap, entry)
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

        def abort(_: object) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake_all(self) -> None:
        heap, self._heap = self._heap, []
        for entry in heap:
            self._wake(entry)

    @staticmethod
    def _wake(entry: list) -> None:
        task = entry[2]
        if task is not None:
            entry[2] = None
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """The timer task: runs until cancelled."""
        while True:
            heap = self._heap
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                self._wake(heapq.heappop(heap))
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
