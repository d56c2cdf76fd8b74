"""`presenced serve` as an operator runs it: signals, environment, version."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import trio

from presenced import __version__
from presenced.auth.identity import Identity
from presenced.client import ConnectionEnded, PresenceClient
from tests.support.daemon import Daemon, free_port, http_get, wait_for_port, wait_until_ready

USER = Identity.generate(random.Random(77))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_closes_connections_with_1001_and_exits_0(sig):
    with Daemon() as daemon:
        async with PresenceClient.connect(daemon.url, USER) as client:
            async with client.subscribe() as updates:
                daemon.signal(sig)
                with pytest.raises(ConnectionEnded) as info:
                    with trio.fail_after(10):
                        while True:
                            await updates.next_batch()
                assert info.value.code == 1001
        assert daemon.proc.wait(10) == 0
        assert "Traceback" not in daemon.log()


def test_options_come_from_the_environment():
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "PRESENCED_PORT": str(port), "PRESENCED_ADMIN_PORT": str(admin_port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "presenced", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", admin_port, 20, proc)
        wait_for_port("127.0.0.1", port, 5, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_version():
    out = subprocess.run([sys.executable, "-m", "presenced", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.strip() == f"presenced {__version__}"


def test_a_bad_friends_file_is_one_clear_line_and_exit_2(tmp_path):
    friends = tmp_path / "friends.csv"
    friends.write_text("0xabc,0xdef\n")
    out = subprocess.run(
        [sys.executable, "-m", "presenced", "serve", "--port", "0", "--admin-port", "0",
         "--friends", str(friends)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "line 1" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------- issue 12: start-up, options


def serve_once(*args: str, timeout: float = 30, env: dict | None = None):
    """`presenced serve ARGS` to completion (for options that must fail at once)."""
    return subprocess.run(
        [sys.executable, "-m", "presenced", "serve", *args],
        capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in {**os.environ, **(env or {})}.items()
             if not k.startswith("PRESENCED_") or k in (env or {})},
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def absent_redis():
    """The URL of a Redis that is not there (yet): started, then stopped."""
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    server.kill()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_start_waiting_for_redis_answers_probes_and_stops_on_a_signal(absent_redis, sig):
    daemon = Daemon("--redis-url", absent_redis.url).start(ready=False)
    try:
        assert http_get(f"{daemon.admin_url}/healthz")[0] == 200
        status, body = http_get(f"{daemon.admin_url}/readyz")
        assert status == 503
        assert json.loads(body)["reasons"] == ["starting: waiting for Redis"]
        # Requests that need the store wait for it, with the same reason.
        status, body = http_get(f"{daemon.admin_url}/v1/users/0x{'ab' * 20}/friends")
        assert status == 503 and "waiting for Redis" in json.loads(body)["error"]
        daemon.signal(sig)
        assert daemon.proc.wait(10) == 0
        assert "Traceback" not in daemon.log()
    finally:
        daemon.stop()


def test_a_start_completes_when_redis_arrives(absent_redis):
    daemon = Daemon("--redis-url", absent_redis.url).start(ready=False)
    try:
        assert http_get(f"{daemon.admin_url}/readyz")[0] == 503
        absent_redis.start()
        wait_until_ready(daemon.admin_url, 20, daemon.proc)
        status = json.loads(http_get(f"{daemon.admin_url}/v1/status")[1])
        assert status["ready"] is True and status["store_kind"] == "redis"
    finally:
        assert daemon.stop() == 0


def test_startup_timeout_ends_a_start_that_cannot_complete(absent_redis):
    result = serve_once("--port", "0", "--admin-port", "0", "--redis-url", absent_redis.url,
                        "--startup-timeout", "1")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("presenced: gave up after 1 s of start-up (--startup-timeout)")
    assert f"waiting for Redis at {absent_redis.url}" in last
    assert "Traceback" not in result.stderr


def test_the_start_up_line_says_what_runs_without_the_redis_password(absent_redis):
    url = f"redis://user:hunter2@127.0.0.1:{absent_redis.port}/0"
    daemon = Daemon("--redis-url", url, "--log-format", "json").start(ready=False)
    try:
        deadline = time.monotonic() + 10
        while '"event": "start"' not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
    log = daemon.log()
    assert "hunter2" not in log
    start = next(json.loads(line) for line in log.splitlines() if '"event": "start"' in line)
    assert start["version"] == __version__ and start["pid"] == daemon.proc.pid
    assert start["store"] == "redis"
    assert start["store_url"] == f"redis://…@127.0.0.1:{absent_redis.port}/0"
    assert start["ws"] == f"127.0.0.1:{daemon.port}" and start["instance"]
    assert start["level"] == "info" and start["logger"] == "presenced.server"
    assert start["max_connections"] == 0 and start["ttl_s"] == 120


@pytest.mark.parametrize("args, expected", [
    (["--port", "70000"], "'--port'"),
    (["--port", "-1"], "'--port'"),
    (["--admin-port", "65536"], "'--admin-port'"),
    (["--log-level", "verbose"], "'--log-level'"),
    (["--log-format", "xml"], "'--log-format'"),
    (["--redis-url", "http://127.0.0.1:6379"], "--redis-url"),
    (["--workers", "2", "--redis-url", "redis://127.0.0.1:1", "--admin-port", "65535"],
     "--admin-port"),
])
def test_a_bad_option_value_is_one_line_and_exit_2(args, expected):
    result = serve_once(*args)
    assert result.returncode == 2, result.stderr
    assert expected in one_line(result.stderr)


def test_a_bad_value_from_the_environment_is_one_line_too():
    result = serve_once(env={"PRESENCED_PORT": "70000"})
    assert result.returncode == 2
    assert "PRESENCED_PORT" in one_line(result.stderr)


def test_log_level_is_a_choice_offered_by_completion():
    env = {**os.environ, "_PRESENCED_COMPLETE": "complete_bash",
           "COMP_WORDS": "presenced serve --log-level ", "COMP_CWORD": "3"}
    out = subprocess.run([sys.executable, "-m", "presenced"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.split() == ["debug", "info", "warning", "error"]


def test_serve_check_prints_the_effective_settings_and_starts_nothing(tmp_path):
    port = free_port()
    result = serve_once("--check", "--port", str(port), "--redis-url",
                        "redis://me:hunter2@127.0.0.1:1/0",
                        env={"PRESENCED_TTL": "90", "PRESENCED_ADMIN_TOKEN": "sekrit"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the configuration is valid" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["--port"] == [str(port), "command", "line"]
    assert rows["--ttl"] == ["90.0", "environment", "(PRESENCED_TTL)"]
    assert rows["--heartbeat-rate"] == ["1.0", "default"]
    assert rows["--admin-token"][0] == "(set)"
    assert "hunter2" not in out and "sekrit" not in out
    # Nothing was started: the port is still free.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    # A malformed friends file is found by --check too.
    bad = tmp_path / "friends.csv"
    bad.write_text("0xabc,0xdef\n")
    result = serve_once("--check", "--friends", str(bad))
    assert result.returncode == 2 and "line 1" in one_line(result.stderr)


def test_workers_waiting_for_redis_stop_on_sigterm_and_time_out_as_one(absent_redis):
    daemon = Daemon("--workers", "2", "--redis-url", absent_redis.url,
                    admin_ports=2).start(ready=False)
    try:
        wait_for_port("127.0.0.1", daemon.admin_port + 1, 20, daemon.proc)
        for port in (daemon.admin_port, daemon.admin_port + 1):
            status, body = http_get(f"http://127.0.0.1:{port}/readyz")
            assert status == 503 and "waiting for Redis" in body
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
    finally:
        daemon.stop()
    result = serve_once("--workers", "2", "--redis-url", absent_redis.url, "--port", "0",
                        "--admin-port", "0", "--startup-timeout", "1")
    assert result.returncode == 1, result.stderr
    assert "gave up after 1 s of start-up" in result.stderr
    assert "Traceback" not in result.stderr
