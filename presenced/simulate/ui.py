"""The live display while a simulation runs (only on a terminal, on stderr).

Refreshed by the coordinator's loop, not by a rich thread, so the parent
stays single-threaded and the display never races the numbers it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class Progress:
    phase: str
    elapsed_s: float
    connected: int
    online_users: int
    subscribed: int
    logins: int
    login_errors: int
    heartbeats_per_s: float
    updates_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    samples: int
    errors: int


class LiveView:
    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def note(self, text: str) -> None:
        """A line above the live display (phases, warnings)."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False)

    def update(self, p: Progress) -> None:
        if self._live is None:
            return
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        table.add_row("phase", f"{p.phase}  ({p.elapsed_s:.0f} s)")
        table.add_row("connected", f"{p.connected:,} of {p.online_users:,} "
                                   f"({p.subscribed:,} subscribed)")
        table.add_row("logins", f"{p.logins:,} ({p.login_errors:,} failed)")
        table.add_row("heartbeats", f"{p.heartbeats_per_s:,.0f}/s")
        table.add_row("updates", f"{p.updates_per_s:,.0f}/s")
        table.add_row("latency", f"p50 {ms(p.p50_ms)}  p99 {ms(p.p99_ms)}  "
                                 f"(n={p.samples:,})")
        table.add_row("errors", f"{p.errors:,}")
        self._live.update(table, refresh=True)
