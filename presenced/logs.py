"""The daemon's log: set-up, formats, worker tags and a per-cause rate limit.

Everything else just uses `logging.getLogger("presenced.<part>")`; this
module decides what a line looks like. It sits at the bottom of the layers
(it imports nothing of presenced) so stores, the engine's neighbours and the
server can all use `RateLimit` without depending on each other.

Two formats (`--log-format`):

- `text`: `2026-12-03 10:23:32,181 INFO presenced.server: message`, with
  `[worker 1]` after the logger name in a process of `serve --workers N`.
- `json`: one object per line, `{"ts", "level", "logger", "msg"}` plus
  `"worker"` and any structured fields passed as `extra={"fields": {...}}`
  (the start-up line and the audit trail carry theirs this way), so a log
  pipeline need not parse the message.

A line is written for each notable event (start, ready, Redis lost and back,
resynchronisations, admin changes), never for each message a client sends;
where a cause can repeat quickly (a client that keeps failing to log in,
a flapping dependency) the line goes through a `RateLimit`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(worker_tag)s: %(message)s"


class _WorkerTag(logging.Filter):
    """Adds `worker` (None outside `--workers N`) and its text tag to every record."""

    def __init__(self, worker: str | None) -> None:
        super().__init__()
        self.worker = worker
        self.tag = f" [{worker}]" if worker is not None else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        record.worker_tag = self.tag
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            body["worker"] = worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                body.setdefault(str(key), value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    *,
    worker: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route every logger to one handler on stderr in the chosen format.

    `worker` ("worker 1", "supervisor") tags each line of a process of
    `serve --workers N`; None (a single process) adds nothing.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_WorkerTag(worker))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # trio-websocket logs every frame at DEBUG; keep it quiet unless asked.
    logging.getLogger("trio-websocket").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


def redact_url(url: str) -> str:
    """`url` without its password (and without a user name that may be a secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if parts.username is None and parts.password is None:
        return url
    netloc = "…@" + (f"[{host}]" if host and ":" in host else (host or ""))
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ------------------------------------------------------------- rate limit


@dataclass(slots=True)
class _Window:
    opened: float
    suppressed: int = 0


class RateLimit:
    """At most one line per cause per `interval_s`; the rest are counted.

        limit = RateLimit(60)
        ...
        if (note := limit.allow(("login-refused", reason))) is not None:
            log.info("login refused from %s: %s%s", peer, reason, note)

    `allow` returns None to drop the line, or a suffix to append: "" for the
    first line of a cause, " (12 more like this in the last 60 s)" when lines
    were dropped since the previous one. Causes are hashable keys; at most
    `max_causes` are remembered (the oldest are forgotten), so a cause built
    from client input cannot grow it without bound. `clock` is injectable
    for tests. Not thread-safe: use it from one thread (the trio thread).
    """

    def __init__(
        self,
        interval_s: float = 60.0,
        *,
        max_causes: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_causes = max_causes
        self._clock = clock
        self._windows: dict[object, _Window] = {}

    def allow(self, cause: object) -> str | None:
        now = self._clock()
        window = self._windows.get(cause)
        if window is not None and now - window.opened < self.interval_s:
            window.suppressed += 1
            return None
        suppressed = window.suppressed if window is not None else 0
        self._windows.pop(cause, None)
        if len(self._windows) >= self.max_causes:
            del self._windows[next(iter(self._windows))]
        self._windows[cause] = _Window(now)
        if suppressed:
            return (f" ({suppressed} more like this in the last "
                    f"{_seconds(now - window.opened if window else 0)})")
        return ""

    def suppressed(self, cause: object) -> int:
        """Lines dropped for `cause` since its last allowed one."""
        window = self._windows.get(cause)
        return window.suppressed if window is not None else 0


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"
