"""`presenced simulate`: its parts, and short real runs against `presenced serve`.

The runs use compressed time (--speed) against daemons started with a
higher heartbeat rate and a short offline grace, so a few seconds cover
several heartbeats, moves and churned sessions per user.
"""

from __future__ import annotations

import json
from array import array

import pytest
import trio
from trio_websocket import HandshakeError

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.simulate.measure import (
    OFFLINE,
    ONLINE,
    SENDER_SHIFT,
    Histogram,
    Matcher,
    SendLog,
    describe,
    kind_of,
    position_key,
    unpack_position,
)
from presenced.simulate.plan import Population, SimConfig, UserPlan, connection_slot
from presenced.simulate.report import check_convergence
from presenced.socialgraph import SocialGraph, user_address
from tests.support.admin import admin_client, redis_store_available, run_cli_process
from tests.support.daemon import Daemon, free_port

# What the daemons of these tests run with: heartbeats up to 20/s (the runs
# beat every 30 s / --speed 30 = 1 s), friends told OFFLINE 0.5 s after a
# disconnect (settling takes 1.5 s).
FAST_DAEMON = ("--heartbeat-rate", "20", "--heartbeat-burst", "4", "--offline-grace", "0.5")
RUN = ["simulate", "--users", "240", "--avg-friends", "8", "--seed", "7", "--duration", "1.5",
       "--speed", "30", "--churn", "60", "--reconnect-delay", "30", "--settle", "1.5",
       "--ramp", "2000", "--json"]


def run_simulate(*args: str, admin_url: str | None = None, timeout: float = 60):
    return run_cli_process([*RUN, *args], admin_url=admin_url, timeout=timeout)


def check_clean_run(summary: dict, *, online: int, processes: int) -> None:
    assert summary["ok"] is True
    assert summary["errors"] == 0, summary["error_breakdown"]
    assert summary["undelivered"] == 0, summary["undelivered_examples"]
    assert summary["unmatched_updates"] == 0
    assert summary["online_users"] == online
    assert summary["processes"] == processes
    assert len(summary["workers"]) == processes
    # Churn happened: more logins than users, some of them after a disconnect.
    assert summary["churn_disconnects"] > 0
    assert summary["logins"] > online
    assert summary["checked_subscribers"] > 0 and summary["checked_friendships"] > 0
    assert summary["heartbeats_per_s"] > 0 and summary["updates_per_s"] > 0
    latency = summary["notify_latency_ms"]
    assert latency["count"] > 100
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # Sane on any machine: loopback, a light load.
    assert latency["p50"] < 1000
    live = summary["live_updates"]
    assert live["position"] >= latency["count"]
    assert live["offline"] > 0
    for key in ("users", "connections", "heartbeats_per_s", "updates_per_s", "errors",
                "duration_s", "logins", "login_errors"):
        assert key in summary


# ------------------------------------------------------------ measurement


def test_position_keys_round_trip_and_kinds():
    for realm, x, y in ((0, 0, 0), (3, -1024, 1023), (61, 150, -150)):
        key = position_key(realm, x, y)
        assert unpack_position((5 << SENDER_SHIFT) | key) == (realm, x, y)
        assert kind_of(key) == 0
    assert kind_of((9 << SENDER_SHIFT) | ONLINE) == 1
    assert kind_of((9 << SENDER_SHIFT) | OFFLINE) == 2
    assert describe(position_key(1, 10, -3), ["main", "dg"]) == "dg 10,-3"
    assert describe(OFFLINE, ["main"]) == "offline"


def test_histogram_percentiles_within_one_percent():
    h = Histogram()
    for v in range(1, 1001):  # 1..1000 ms
        h.add(float(v))
    assert h.count == 1000 and h.max == 1000.0
    for q, exact in ((50, 500), (95, 950), (99, 990)):
        assert abs(h.percentile(q) - exact) / exact < 0.01
    # Deltas merge by addition.
    other = Histogram()
    other.add(5000.0)
    taken = h.take()
    assert h.count == 0
    taken.merge(other)
    assert taken.count == 1001 and taken.max == 5000.0
    assert Histogram().summary()["p50"] is None


def test_matcher_counts_live_updates_only():
    log = SendLog(retention_s=60)
    matcher = Matcher(log)
    matcher.measure_from = 100.0
    key = (1 << SENDER_SHIFT) | position_key(0, 1, 1)
    log.record(key, 101.0)
    assert matcher.match(key, 101.05, since=50.0)
    assert matcher.histograms[0].count == 1
    assert abs(matcher.histograms[0].max - 50.0) < 1e-6
    # Sent before the receiver subscribed: part of its snapshot.
    assert matcher.match(key, 102.0, since=101.5)
    assert matcher.excluded == 1
    # Never sent, or a newer send of the same position: not this update's cause.
    assert not matcher.match(key + 1, 102.0, since=0.0)
    assert not matcher.match(key, 100.5, since=0.0)
    log.prune(now=500.0)
    assert log.sent_before(key, 1e9) is None


def test_send_log_keeps_a_few_times_of_a_reused_key():
    log = SendLog(retention_s=60)
    login = (3 << SENDER_SHIFT) | ONLINE
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        log.record(login, t)
    # A late receipt of the second-to-last login finds that login, not the last.
    assert log.sent_before(login, 4.5) == 4.0
    assert log.sent_before(login, 9.0) == 5.0
    assert log.sent_before(login, 1.5) is None  # only the last four are kept
    log.record(7, 6.0)
    log.prune(now=65.5)  # the login's last time (5.0) is too old, 6.0 is not
    assert log.sent_before(login, 9.0) is None and log.sent_before(7, 9.0) == 6.0


# ------------------------------------------------------------------ plans


def test_population_and_plans_are_seeded():
    config = SimConfig(users=200, seed=3, online_fraction=0.5, subscribe_fraction=0.5,
                       processes=3, targets=("ws://a/", "ws://b/"),
                       source_addresses=("127.0.0.1", "127.0.0.2"))
    population = Population.choose(config)
    assert population == Population.choose(config)
    assert len(population.online) == 100 and len(population.subscribers) == 50
    assert sorted(population.online + population.offline) == list(range(200))
    shares = population.shares(3)
    assert sorted(i for online, _ in shares for i in online) == list(population.online)
    slots = {connection_slot(config, k) for k in range(4)}
    assert len(slots) == 4  # every target with every source address

    a, b = UserPlan(config, 5), UserPlan(config, 5)
    moves_a = [a.spawn()] + [a.next_position() for _ in range(200)]
    moves_b = [b.spawn()] + [b.next_position() for _ in range(200)]
    assert moves_a == moves_b
    min_x, min_y, max_x, max_y = config.area
    recent: list[int] = []
    for key in moves_a:
        if key is None:
            continue
        realm, x, y = unpack_position(key)
        assert realm < len(config.realms)
        assert min_x <= x <= max_x and min_y <= y <= max_y
        # A position never repeats within the remembered window.
        assert key not in recent[-15:]
        recent.append(key)


def test_problems_name_the_option():
    assert SimConfig().problems() == []
    bad = SimConfig(online_fraction=0, area=(0, 0, 2000, 10), realms=("a", "a"))
    text = " ".join(bad.problems())
    assert "--online-fraction" in text and "--area" in text and "--realm" in text


def test_convergence_counts_differences_and_strangers():
    adjacency = [[1, 2], [0], [0], []]
    addresses = [f"0x{i:040x}" for i in range(4)]
    a_at = position_key(0, 1, 1)
    finals = [{
        "indices": array("q", [0, 1, 2, 3]),
        "keys": array("q", [a_at, ONLINE, OFFLINE, position_key(0, 2, 2)]),
        # 0 sees 1 online (right) but also 2 (offline: wrong) and 3 (not a friend);
        # 1 sees 0 at the right position.
        "receivers": array("q", [0, 1]),
        "counts": array("q", [3, 1]),
        "friends": array("q", [1, 2, 3, 0]),
        "seen": array("q", [ONLINE, a_at, a_at, a_at]),
    }]
    result = check_convergence(adjacency, finals, addresses, ["main"])
    assert result.receivers == 2 and result.friendships == 3
    assert result.undelivered == 1
    assert result.not_friends == 1
    assert result.examples[0]["friend"] == addresses[2]
    assert result.examples[0]["expected"] == "offline"


# --------------------------------------------------------- source address


async def test_client_binds_its_source_address():
    with Daemon() as daemon:
        async with PresenceClient.connect(daemon.url, Identity.generate(),
                                          local_address="127.0.0.2") as client:
            assert client.ws._stream.socket.getsockname()[0] == "127.0.0.2"
            response = await client.heartbeat("main", 1, 2)
            assert response.position.x == 1
    with pytest.raises(HandshakeError):
        async with PresenceClient.connect(daemon.url, Identity.generate(),
                                          local_address="127.0.0.2", connect_timeout=2):
            pass
    await trio.sleep(0)


# ---------------------------------------------------------- real runs


def test_simulate_run_with_churn():
    with Daemon(*FAST_DAEMON) as daemon:
        result = run_simulate("--target", daemon.url, admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        check_clean_run(summary, online=120, processes=1)
        assert summary["seeded"]["added"] == summary["friendships"]
        # The daemon holds exactly the graph `seed friendships --random` makes.
        graph = SocialGraph.generate(240, 8, 7)
        friends = graph.adjacency()
        with admin_client(daemon.admin_url) as http:
            for index in (0, 1, 17):
                body = http.get(f"/v1/users/{user_address(7, index)}/friends").json()
                assert body["friends"] == sorted(user_address(7, f) for f in friends[index])


def test_simulate_two_processes_and_source_addresses():
    with Daemon(*FAST_DAEMON) as daemon:
        result = run_simulate("--target", daemon.url, "--processes", "2",
                              "--source-addresses", "127.0.0.1,127.0.0.2",
                              admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        check_clean_run(summary, online=120, processes=2)
        assert all(w["users"] == 60 for w in summary["workers"])


def test_simulate_against_a_stopped_daemon_fails_in_one_line():
    admin = f"http://127.0.0.1:{free_port()}"
    target = f"ws://127.0.0.1:{free_port()}/"
    for extra in ([], ["--no-seed"]):
        result = run_simulate("--target", target, *extra, admin_url=admin, timeout=30)
        assert result.returncode == 1
        # --json: the error is also the one JSON document on stdout.
        assert json.loads(result.stdout)["code"] == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        expected = "cannot connect to ws://" if extra else "cannot reach the admin endpoint"
        assert expected in lines[0]


def test_simulate_refuses_a_pace_the_daemon_would_refuse():
    with Daemon() as daemon:  # defaults: 1 heartbeat per second, TTL 120 s
        # Heartbeats every second: the daemon would rate-limit them.
        result = run_simulate("--target", daemon.url, admin_url=daemon.admin_url)
        assert result.returncode == 2
        assert "--heartbeat-rate" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        # Heartbeats every 120 s: users would expire between them.
        result = run_simulate("--target", daemon.url, "--speed", "0.25",
                              admin_url=daemon.admin_url)
        assert result.returncode == 2
        assert "--ttl" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_two_daemons_sharing_redis():
    missing = redis_store_available()
    if missing is not None:
        pytest.skip(f"Redis-backed run skipped: {missing}")
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis, \
            Daemon("--redis-url", redis.url, *FAST_DAEMON) as one, \
            Daemon("--redis-url", redis.url, *FAST_DAEMON) as two:
        # Seeded once, through the first daemon; users spread over both.
        result = run_simulate("--target", one.url, "--target", two.url,
                              admin_url=one.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        check_clean_run(summary, online=120, processes=1)
        assert summary["targets"] == [one.url, two.url]
