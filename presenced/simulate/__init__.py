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

from presenced.simulate.coordinator import Coordinator, SimulationError
from presenced.simulate.plan import Population, SimConfig

__all__ = ["Coordinator", "Population", "SimConfig", "SimulationError"]
