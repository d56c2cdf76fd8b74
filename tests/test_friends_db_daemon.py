"""`serve --friends-db`, `blocks`, `seed --db` and `simulate --friends-db` as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from presenced.socialgraph import SocialGraph, user_address
from tests.support.admin import admin_client, new_address, run_cli, run_cli_process
from tests.support.daemon import Daemon
from tests.support.postgres import url_of

FAST = ("--heartbeat-rate", "20", "--heartbeat-burst", "4", "--offline-grace", "0.5")


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    # Wide enough that usage errors are not wrapped.
    env["COLUMNS"] = "300"
    return subprocess.run([sys.executable, "-m", "presenced", "serve", "--port", "0",
                           "--admin-port", "0", *args],
                          capture_output=True, text=True, timeout=30, env=env)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("args", "message"), [
    (["--friends-db", "mysql://x"], "expected postgresql://"),
    (["--friends-db", "postgresql://127.0.0.1/db", "--friends", __file__],
     "drop --friends"),
    (["--publish-social-status"], "needs --social-events-url"),
    (["--social-events-url", "redis://127.0.0.1:1/0"], "only used with --friends-db"),
    (["--friends-db", "postgresql://127.0.0.1/db", "--social-events-url", "http://x"],
     "expected redis://"),
])
def test_bad_graph_options_are_one_line_and_exit_2(args, message):
    out = serve(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_database_at_start_is_one_line_and_exit_1(social_db):
    out = serve("--friends-db", url_of("presenced_no_such_database_y"))
    assert out.returncode == 1
    # The start-up line, then the reason.
    assert "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("presenced: ")
    assert "cannot read the friends database postgresql://127.0.0.1:5432/" in line


def test_a_bad_blocks_file_is_one_line_and_exit_2(tmp_path):
    blocks = tmp_path / "blocks.csv"
    blocks.write_text(f"{new_address()},{new_address()}\n0xabc\n")
    out = serve("--blocks", str(blocks))
    assert out.returncode == 2
    assert "line 2" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ blocks


def test_blocks_file_and_blocks_commands(tmp_path):
    a, b, c = new_address(), new_address(), new_address()
    friends = tmp_path / "friends.csv"
    friends.write_text(f"{a},{b}\n{a},{c}\n")
    blocks = tmp_path / "blocks.csv"
    blocks.write_text(f"# blocker,blocked\n{b},{a}\n")
    with Daemon("--friends", str(friends), "--blocks", str(blocks)) as daemon, \
            admin_client(daemon.admin_url) as http:
        assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [c]
        result = run_cli(["blocks", "list", a], daemon.admin_url)
        assert result.exit_code == 0
        assert b in result.stdout and "blocked by" in result.stdout
        result = run_cli(["blocks", "add", a, c], daemon.admin_url)
        assert result.stdout.strip() == f"{a} now blocks {c}"
        assert run_cli(["blocks", "add", a, c], daemon.admin_url).stdout.strip() \
            == f"{a} already blocked {c}"
        assert http.get(f"/v1/users/{a}/friends").json()["friends"] == []
        result = run_cli(["blocks", "remove", b, a, "--json"], daemon.admin_url)
        assert json.loads(result.stdout) == {"blocker": b, "blocked": a, "removed": True}
        assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [b]
        listed = json.loads(run_cli(["blocks", "list", c, "--json"], daemon.admin_url).stdout)
        assert listed == {"address": c, "blocking": [], "blocked_by": [a]}
        bad = run_cli_process(["blocks", "add", a, a], daemon.admin_url)
        assert bad.returncode == 2 and "cannot block themselves" in one_line(bad.stderr)


# -------------------------------------------------------- the database, live


def test_daemon_follows_the_database_and_refuses_local_edits(social_db):
    a, b = new_address(), new_address()
    social_db.befriend(a, b)
    with Daemon("--friends-db", social_db.url, "--friends-db-reconcile-interval", "0.2") \
            as daemon, admin_client(daemon.admin_url) as http:
        assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [b]
        c = new_address()
        social_db.befriend(c, a)
        wait_for(lambda: http.get(f"/v1/users/{a}/friends").json()["count"] == 2)
        social_db.block(b, a)
        wait_for(lambda: http.get(f"/v1/users/{a}/friends").json()["friends"] == [c])
        assert http.get(f"/v1/users/{a}/blocks").json()["blocked_by"] == [b]
        status = http.get("/v1/status").json()["friends_source"]
        assert status["kind"] == "database" and status["healthy"] is True
        assert status["friendships"] == 1 and status["blocks"] == 1
        refused = run_cli_process(["friends", "add", a, c], daemon.admin_url)
        assert refused.returncode == 1
        assert "come from the friends database (--friends-db)" in one_line(refused.stderr)
        refused = run_cli_process(["blocks", "remove", b, a], daemon.admin_url)
        assert refused.returncode == 1 and "(409)" in one_line(refused.stderr)
        metrics = http.get("/metrics").text
        assert "presenced_friends_db_healthy 1.0" in metrics
        assert 'presenced_friends_db_passes_total{kind="incremental"}' in metrics


# ------------------------------------------------- seed --db and simulate


def test_seed_a_database_then_simulate_on_it(social_db):
    seeded = run_cli_process(["seed", "friendships", "--random", "--users", "240",
                              "--avg-friends", "8", "--seed", "7", "--db", social_db.url,
                              "--json"])
    assert seeded.returncode == 0, seeded.stderr
    report = json.loads(seeded.stdout)
    graph = SocialGraph.generate(240, 8, 7)
    assert report["added"] == report["friendships"] == len(graph.edges)
    again = run_cli_process(["seed", "friendships", "--random", "--users", "240",
                             "--avg-friends", "8", "--seed", "7", "--db", social_db.url])
    assert again.returncode == 0
    assert f"0 added, 0 reactivated, {len(graph.edges)} already active" in again.stdout
    with Daemon("--friends-db", social_db.url, *FAST) as daemon:
        with admin_client(daemon.admin_url) as http:
            friends = graph.adjacency()[3]
            body = http.get(f"/v1/users/{user_address(7, 3)}/friends").json()
            assert body["friends"] == sorted(user_address(7, f) for f in friends)
        run = run_cli_process(
            ["simulate", "--users", "240", "--seed", "7", "--duration", "1.5", "--speed", "30",
             "--churn", "60", "--reconnect-delay", "30", "--settle", "1.5", "--ramp", "2000",
             "--json", "--target", daemon.url, "--friends-db", social_db.url],
            admin_url=daemon.admin_url)
        assert run.returncode == 0, run.stderr + run.stdout
        summary = json.loads(run.stdout)
        assert summary["ok"] and summary["undelivered"] == 0
        assert summary["friendships"] == len(graph.edges)
        assert summary["seeded"] is None


def test_seed_a_database_from_a_file_and_bad_urls(social_db, tmp_path):
    a, b = new_address(), new_address()
    file = tmp_path / "friends.csv"
    file.write_text(f"{a},{b}\n{b},{a}\n")
    out = run_cli_process(["seed", "friendships", str(file), "--db", social_db.url])
    assert out.returncode == 0, out.stderr
    assert "1 added" in out.stdout
    bad = run_cli_process(["seed", "friendships", str(file), "--db", "http://x"])
    assert bad.returncode == 2 and "--db: expected postgresql://" in one_line(bad.stderr)
    gone = run_cli_process(["seed", "friendships", str(file), "--db",
                            url_of("presenced_no_such_database_z")])
    assert gone.returncode == 1 and "cannot seed postgresql://" in one_line(gone.stderr)
