"""`presenced serve --workers N`: N processes sharing one listening port.

One Python process uses one core, so a host with several cores runs several
workers. Each worker is a full, independent instance (its own engine, its own
instance id in Redis) that binds the WebSocket port with SO_REUSEPORT, so the
kernel spreads new connections across them. They see one picture through the
Redis store, which is why several workers require it.

The parent only supervises: it starts the workers, restarts one that dies
unexpectedly (with a back-off, so a worker that cannot start does not spin),
forwards SIGINT/SIGTERM, and exits once every worker has exited. Worker `i`
serves its admin endpoint on `admin_port + i` (Prometheus scrapes each one).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

from presenced.server.config import ServerConfig

log = logging.getLogger("presenced.workers")

# A worker that dies this soon after starting is failing to start, not crashing.
MIN_UPTIME_S = 5.0
MAX_RESTART_DELAY_S = 30.0
# A worker that cannot serve its configuration exits with this; restarting
# it would not help, so the whole command stops (exit status 2).
CONFIG_ERROR_EXIT = 2
# A worker whose start-up timed out (Redis never came) exits with this; the
# whole command stops with exit status 1 so that the service manager, which
# knows the restart policy, decides what comes next.
STARTUP_FAILED_EXIT = 3


def worker_config(config: ServerConfig, index: int) -> ServerConfig:
    admin_port = config.admin_port + index if config.admin_port else 0
    return replace(config, workers=1, admin_port=admin_port, worker_index=index)


def _run_worker(config: ServerConfig, index: int, log_level: str, log_format: str) -> None:
    # Runs in a fresh interpreter (spawn): set up as `serve` would.
    import sys

    from presenced.logs import setup_logging
    from presenced.server.app import ConfigError, StartupFailed, run_until_signalled
    from presenced.server.runtime import tune_gc

    # The supervisor forwards SIGINT/SIGTERM; a Ctrl-C reaches the whole
    # process group, and the worker's own handler is installed by trio.
    setup_logging(log_level, log_format, worker=f"worker {index}")
    tune_gc()
    try:
        run_until_signalled(config, reuse_port=True)
    except ConfigError as e:
        print(f"presenced: worker {index}: {e}", file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT)
    except StartupFailed as e:
        print(f"presenced: worker {index}: {e}", file=sys.stderr)
        sys.exit(STARTUP_FAILED_EXIT)
    except KeyboardInterrupt:
        sys.exit(0)


def supervise(config: ServerConfig, log_level: str, log_format: str = "text") -> int:
    """Run `config.workers` workers until a signal; returns the exit status."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    procs: dict[int, BaseProcess] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    restart_at: dict[int, float] = {}

    def start(index: int) -> None:
        proc = context.Process(
            target=_run_worker,
            args=(worker_config(config, index), index, log_level, log_format),
            name=f"presenced-worker-{index}",
        )
        proc.start()
        procs[index] = proc
        started[index] = time.monotonic()

    for index in range(config.workers):
        start(index)
    log.info("started %d workers on port %d", config.workers, config.port)

    forwarded = False
    status = 0
    while True:
        if stopping and not forwarded:
            log.info("stopping %d workers", len(procs))
            for proc in procs.values():
                if proc.is_alive() and proc.pid is not None:
                    proc.terminate()  # SIGTERM: a graceful shutdown in the worker
            forwarded = True
        alive = False
        for index, proc in list(procs.items()):
            if proc.is_alive():
                alive = True
                continue
            if stopping:
                continue
            if proc.exitcode in (CONFIG_ERROR_EXIT, STARTUP_FAILED_EXIT):
                log.error("worker %d cannot start; stopping", index)
                stopping = True
                status = CONFIG_ERROR_EXIT if proc.exitcode == CONFIG_ERROR_EXIT else 1
                continue
            now = time.monotonic()
            if index not in restart_at:
                uptime = now - started[index]
                previous = delay.get(index, 0.5)
                delay[index] = (
                    min(previous * 2, MAX_RESTART_DELAY_S) if uptime < MIN_UPTIME_S else 0.5
                )
                restart_at[index] = now + delay[index]
                log.error("worker %d exited with %s; restarting in %.1f s",
                          index, proc.exitcode, delay[index])
            if now >= restart_at[index]:
                del restart_at[index]
                start(index)
            alive = True
        if stopping and not alive:
            break
        time.sleep(0.1)
    if status:
        return status
    failed = [i for i, p in procs.items() if p.exitcode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0
