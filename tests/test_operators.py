"""Issue 12, as an operator meets it: friends files from spreadsheets, errors as
JSON, `presenced status`, an interrupted `simulate`, logs an operator can use.

Every test runs the command as a real process against a real daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from presenced import __version__
from tests.support.admin import admin_client, new_address, run_cli_process
from tests.support.daemon import Daemon, free_port

ADDRESSES = [new_address() for _ in range(4)]


def spreadsheet_csv(tmp_path, name: str = "friends.csv"):
    """What a spreadsheet exports: a byte-order mark, a header, CRLF, quoted fields."""
    a, b, c, d = ADDRESSES
    path = tmp_path / name
    path.write_bytes(("\ufeffaddress_a,address_b\r\n"
                      f"{a},{b}\r\n"
                      f'"{a}","{c}"\r\n'
                      f"{c.upper().replace('0X', '0x')},{d}\r\n").encode())
    return path


def friends_of(admin_url: str, address: str) -> list[str]:
    with admin_client(admin_url) as http:
        return http.get(f"/v1/users/{address}/friends").json()["friends"]


# ------------------------------------------------------------ friends files


def test_serve_loads_a_friends_file_from_a_spreadsheet(tmp_path):
    a, b, c, d = ADDRESSES
    with Daemon("--friends", str(spreadsheet_csv(tmp_path))) as daemon:
        assert friends_of(daemon.admin_url, a) == sorted([b, c])
        assert friends_of(daemon.admin_url, c) == sorted([a, d])


def test_seed_friendships_imports_a_file_from_a_spreadsheet(tmp_path):
    a, b, c, d = ADDRESSES
    with Daemon() as daemon:
        result = run_cli_process(["seed", "friendships", str(spreadsheet_csv(tmp_path)),
                                  "--json"], admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["added"] == 3
        assert friends_of(daemon.admin_url, c) == sorted([a, d])


def test_a_header_is_only_accepted_as_the_first_line(tmp_path):
    a, b, *_ = ADDRESSES
    path = tmp_path / "friends.csv"
    path.write_text(f"{a},{b}\naddress_a,address_b\n")
    result = subprocess.run([sys.executable, "-m", "presenced", "serve", "--check",
                             "--friends", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "line 2" in result.stderr


# ------------------------------------------------------------ --json errors


@pytest.mark.parametrize("args, code", [
    (["who-online", "0x12", "--json"], 2),
    (["who-online", "0x" + "a" * 40, "--json"], 1),  # nothing listens at --admin-url
    (["friends", "list", "0x" + "a" * 40, "--json", "--bogus"], 2),
    (["status", "--json"], 1),
])
def test_with_json_errors_are_json_on_stdout_too(args, code):
    result = run_cli_process(args, admin_url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == code
    body = json.loads(result.stdout)
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_rejected_import_keeps_the_daemons_details_in_json(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0x12,0x34\n")
    with Daemon() as daemon:
        result = run_cli_process(["seed", "friendships", str(path), "--json"],
                                 admin_url=daemon.admin_url)
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["code"] == 1 and "malformed" in body["error"]


# ------------------------------------------------------------------- status


def test_status_of_a_ready_daemon():
    with Daemon() as daemon:
        result = run_cli_process(["status", "--json"], admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["ready"] is True and body["version"] == __version__
        assert body["store_kind"] == "memory" and body["online_users"] == 0
        assert body["listen"]["port"] == daemon.port and body["pid"] == daemon.proc.pid
        text = run_cli_process(["status"], admin_url=daemon.admin_url)
        assert text.returncode == 0
        assert "ready" in text.stdout and "yes" in text.stdout and "memory" in text.stdout


def test_status_is_a_health_check_during_start_up():
    # Redis not there: the daemon is alive but not ready.
    daemon = Daemon("--redis-url", f"redis://127.0.0.1:{free_port()}/0").start(ready=False)
    try:
        result = run_cli_process(["status"], admin_url=daemon.admin_url)
        assert result.returncode == 1
        assert "starting: waiting for Redis" in result.stdout
        live = run_cli_process(["status", "--live"], admin_url=daemon.admin_url)
        assert live.returncode == 0
    finally:
        daemon.stop()


# ----------------------------------------------------------------- simulate

FAST_DAEMON = ("--heartbeat-rate", "20", "--heartbeat-burst", "4", "--offline-grace", "0.5")
SIMULATE = ["simulate", "--users", "60", "--avg-friends", "6", "--seed", "12",
            "--speed", "30", "--settle", "1", "--ramp", "2000", "--json"]


def _simulate_env(admin_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    return {**env, "PRESENCED_ADMIN_URL": admin_url, "COLUMNS": "120"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_simulate_reports_what_it_measured(sig):
    with Daemon(*FAST_DAEMON) as daemon:
        proc = subprocess.Popen(
            [sys.executable, "-m", "presenced", *SIMULATE, "--duration", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_simulate_env(daemon.admin_url),
        )
        try:
            # Interrupt once the users are in the load phase (logged in).
            deadline = time.monotonic() + 60
            with admin_client(daemon.admin_url) as http:
                while http.get("/v1/status").json()["sessions"] < 30:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            time.sleep(1.5)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["ok"] is False
    assert summary["logins"] >= 30 and summary["heartbeats"] > 0
    assert "interrupted" in err


def test_simulate_targets_the_daemon_behind_admin_url_and_warns_about_a_short_run():
    with Daemon(*FAST_DAEMON) as daemon:
        # No --target: the WebSocket port comes from the daemon's status.
        # 0.5 s of load at one heartbeat per second measures little.
        result = subprocess.run(
            [sys.executable, "-m", "presenced", *SIMULATE, "--duration", "0.5"],
            capture_output=True, text=True, timeout=120, env=_simulate_env(daemon.admin_url))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["targets"] == [daemon.url]
    assert "shorter than one heartbeat interval" in result.stderr
    assert "--speed" in result.stderr


def test_simulate_target_from_the_environment():
    with Daemon(*FAST_DAEMON) as daemon:
        env = {**_simulate_env(daemon.admin_url), "PRESENCED_TARGET": daemon.url}
        result = subprocess.run(
            [sys.executable, "-m", "presenced", *SIMULATE, "--duration", "1.5",
             "--admin-url", f"http://127.0.0.1:{free_port()}", "--no-seed"],
            capture_output=True, text=True, timeout=120, env=env)
    # Without the graph the users have no friends on the daemon: the run
    # itself works, against the target from the environment.
    summary = json.loads(result.stdout)
    assert summary["targets"] == [daemon.url]


# --------------------------------------------------------------------- logs


def test_admin_changes_leave_an_audit_trail():
    a, b, c, _ = ADDRESSES
    with Daemon() as daemon:
        for args in (["friends", "add", a, b], ["friends", "add", a, c],
                     ["friends", "remove", a, b]):
            assert run_cli_process(args, admin_url=daemon.admin_url).returncode == 0
        daemon.stop()
        log = daemon.log()
    audit = [line for line in log.splitlines() if "presenced.audit" in line]
    assert f"admin friendship-add by 127.0.0.1 [presenced/{__version__} friends add]: " \
           f"{min(a, b)} {max(a, b)}, 1 changed" in audit[0]
    # The second add within the interval is held back, not lost: counted.
    assert len(audit) == 2 and "friendship-remove" in audit[1]


def test_each_worker_says_which_it_is_in_json_logs():
    from tests.support.admin import redis_store_available
    from tests.support.redis_server import RedisServer

    missing = redis_store_available()
    if missing is not None:
        pytest.skip(missing)
    with RedisServer() as redis:
        daemon = Daemon("--workers", "2", "--redis-url", redis.url, "--log-format", "json",
                        admin_ports=2).start()
        try:
            deadline = time.monotonic() + 20
            while daemon.log().count('"event": "ready"') < 2:
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.1)
        finally:
            daemon.stop()
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    starts = {line["worker"]: line for line in lines if line.get("event") == "start"}
    assert set(starts) == {"worker 0", "worker 1"}
    assert len({s["instance"] for s in starts.values()}) == 2
    assert len({s["pid"] for s in starts.values()}) == 2
    assert any(line.get("worker") == "supervisor" for line in lines)
    assert all("worker" in line for line in lines)
