"""Reading the server's Prometheus text, and the counters the benchmark divides by."""

from __future__ import annotations


def parse_prometheus(text: str) -> dict[str, float]:
    """Series name with its labels (as written) -> value; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def heartbeats(m: dict[str, float]) -> float:
    return m.get('presenced_heartbeats_total{reason="",result="accepted"}', 0.0)


def heartbeats_rejected(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items()
               if k.startswith("presenced_heartbeats_total{") and 'result="rejected"' in k)


def delivered(m: dict[str, float]) -> float:
    return m.get("presenced_updates_delivered_total", 0.0)


def stream_items(m: dict[str, float]) -> float:
    return m.get("presenced_stream_items_sent_total", 0.0)


def logins_ok(m: dict[str, float]) -> float:
    return m.get('presenced_logins_total{reason="",result="ok"}', 0.0)


def logins_failed(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items()
               if k.startswith("presenced_logins_total{") and 'result="failed"' in k)


def sessions(m: dict[str, float]) -> float:
    return m.get("presenced_sessions", 0.0)


def gc_pauses(m: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per generation: count, total seconds, and pauses longer than 100 ms."""
    out = {}
    for gen in ("0", "1", "2"):
        count = m.get(f'presenced_gc_pause_seconds_count{{generation="{gen}"}}', 0.0)
        total = m.get(f'presenced_gc_pause_seconds_sum{{generation="{gen}"}}', 0.0)
        under = m.get(f'presenced_gc_pause_seconds_bucket{{generation="{gen}",le="0.1"}}', 0.0)
        out[gen] = {"count": count, "seconds": total, "over_100ms": count - under}
    return out


def delta(after: dict[str, float], before: dict[str, float], fn) -> float:
    return fn(after) - fn(before)
