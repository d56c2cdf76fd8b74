"""`presenced simulate`: a load generator of virtual users over real WebSockets.

- `plan`: the settings, who takes part, each user's seeded choices;
- `measure`: send logs, receipt matching and latency histograms;
- `user`: one virtual user's life;
- `wire`: its connection (WebSocket and @dcl/rpc, lean);
- `alarms`: the users' sleeps, in one heap;
- `worker`: one process driving thousands of users on a trio loop;
- `coordinator`: the parent process, its phases and the merging;
- `report`: the convergence check and the summary;
- `ui`: the live display.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presenced.simulate.coordinator import Coordinator, SimulationError
    from presenced.simulate.plan import Population, SimConfig

__all__ = ["Coordinator", "Population", "SimConfig", "SimulationError"]

# Imported on first use: `presenced simulate`'s options (and so shell
# completion) need only `plan`, not the worker and its event loop.
_EXPORTS = {"Coordinator": "coordinator", "SimulationError": "coordinator",
            "Population": "plan", "SimConfig": "plan"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
