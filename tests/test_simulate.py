"""`presenced simulate`: its parts, and short real runs against `presenced serve`.

The runs use compressed time (--speed) against daemons started with a
higher heartbeat rate and a short offline grace, so a few seconds cover
several heartbeats, moves and churned sessions per user.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import replace
from ipaddress import ip_address

import pytest
import trio
from google.protobuf.message import DecodeError
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
from presenced.simulate.report import check_convergence, storm_summary
from presenced.simulate.v2 import decode_connectivity_update
from presenced.socialgraph import SocialGraph, user_address
from presenced.v1 import presence_pb2 as pb
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


def matcher_with_one_send() -> tuple[SendLog, Matcher, int]:
    """A matcher measuring from t=100, and a position change sent at t=101."""
    log = SendLog(retention_s=60)
    matcher = Matcher(log)
    matcher.measure_from = 100.0
    key = (1 << SENDER_SHIFT) | position_key(0, 1, 1)
    log.record(key, 101.0)
    return log, matcher, key


def test_matcher_counts_live_updates_only():
    log, matcher, key = matcher_with_one_send()
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


def test_matcher_restart_drops_the_samples_so_far():
    log, matcher, key = matcher_with_one_send()
    assert matcher.match(key, 101.5, since=50.0, cross=1)
    assert matcher.histograms[0].count == 1 and matcher.cross.count == 1
    matcher.restart(110.0)
    assert matcher.histograms[0].count == 0 and matcher.cross.count == 0
    # Caused before the restart: still an update (counted), not a sample.
    assert matcher.match(key, 111.0, since=50.0)
    assert matcher.histograms[0].count == 0 and matcher.matched[0] == 2
    log.record(key, 112.0)
    assert matcher.match(key, 112.25, since=50.0)
    assert matcher.histograms[0].count == 1
    assert abs(matcher.histograms[0].max - 250.0) < 1e-6


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


def test_churn_fraction_keeps_subscribers_steady_and_churn_the_same():
    config = SimConfig(users=200, seed=3, online_fraction=0.5, subscribe_fraction=1.0,
                       churn_fraction=0.5)
    population = Population.choose(config)
    assert population.churners is not None and len(population.churners) == 50
    # Churners never subscribe; every steady user does (subscribe fraction 1).
    assert not population.churners & population.subscribers
    assert len(population.subscribers) == 50
    assert all(population.churns(i) == (i in population.churners) for i in population.online)
    # The run without subscribers churns exactly the same users (what the v2 benchmark's
    # quiet run subtracts).
    quiet = Population.choose(replace(config, subscribe_fraction=0.0))
    assert quiet.churners == population.churners and not quiet.subscribers
    # By default everyone churns.
    assert Population.choose(replace(config, churn_fraction=None)).churns(population.online[0])
    assert "--churn-fraction" in " ".join(replace(config, churn_fraction=1.5).problems())


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
            assert client.ws.local.address == ip_address("127.0.0.2")
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


@pytest.mark.parametrize("option, value", [("--churn-fraction", "2"),
                                           ("--subscribe-fraction", "-1"),
                                           ("--online-fraction", "1.5")])
def test_a_fraction_out_of_range_is_one_line_and_exit_2_before_any_daemon(option, value):
    # Nothing listens on port 9 of the admin URL: the value is refused before it is asked.
    result = run_simulate(option, value, admin_url="http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1


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
        # About half of the moves cross from one daemon to the other.
        cross = summary["notify_cross_target_latency_ms"]
        assert 0 < cross["count"] < summary["notify_latency_ms"]["count"]


# ------------------------------------------------ idle users, the storm, v2


def test_v2_connectivity_items_are_read_by_hand():
    address = "0x" + "ab" * 20
    profile = b"\x0a" + bytes([len(address)]) + address.encode() + b"\x12\x03bob"
    item = b"\x0a" + bytes([len(profile)]) + profile
    # ONLINE is the proto3 default: absent on the wire.
    (online,) = decode_connectivity_update(item)
    assert (online.address, online.status) == (address, pb.ONLINE)
    (offline,) = decode_connectivity_update(item + b"\x10\x01")
    assert offline.status == pb.OFFLINE
    # AWAY (2) is still online; unknown fields are skipped.
    (away,) = decode_connectivity_update(item + b"\x10\x02" + b"\x1d\x00\x00\x80\x3f")
    assert away.status == pb.ONLINE
    with pytest.raises(DecodeError):
        decode_connectivity_update(item[:-3])


def test_storm_summary_counts_offline_seen_for_users_back_within_grace():
    finals = [
        {"storm_dropped": array("q", [3]), "storm_back_users": array("q", [1, 2, 3]),
         "storm_back_s": array("d", [0.4, 0.9, 7.0]), "storm_offline": array("q", [3, 2])},
        {"storm_dropped": array("q", [1]), "storm_back_users": array("q", []),
         "storm_back_s": array("d", []), "storm_offline": array("q", [])},
    ]
    storm = storm_summary(finals, grace_s=5.0)
    assert storm["dropped"] == 4 and storm["back"] == 3 and storm["not_back"] == 1
    # Somebody never came back: there is no "all back" time.
    assert storm["all_back_s"] is None
    assert storm["back_within_grace"] == 2
    # User 3 came back after the grace (its OFFLINE was right); user 2 did not.
    assert storm["offline_seen"] == 2
    assert storm["offline_seen_back_within_grace"] == 1


def test_simulate_storm_brings_everyone_back_without_offline():
    with Daemon(*FAST_DAEMON[:4], "--offline-grace", "3") as daemon:
        result = run_simulate("--target", daemon.url, "--churn", "0", "--duration", "3",
                              "--storm-at", "1", "--storm-spread", "0.5",
                              admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        assert summary["errors"] == 0, summary["error_breakdown"]
        assert summary["undelivered"] == 0
        storm = summary["storm"]
        assert storm["dropped"] == 120 and storm["back"] == 120
        assert storm["all_back_s"] is not None and storm["all_back_s"] < 3
        assert storm["offline_seen_back_within_grace"] == 0
        assert storm["offline_grace_s"] == 3


def test_simulate_idle_users_send_no_heartbeat():
    with Daemon(*FAST_DAEMON) as daemon:
        result = run_simulate("--target", daemon.url, "--no-heartbeats",
                              "--subscribe-fraction", "0", "--churn", "0",
                              admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        assert summary["ok"] and summary["heartbeats"] == 0
        assert summary["connections_at_stop"] == 120


def test_simulate_steady_subscribers_watch_churners():
    with Daemon(*FAST_DAEMON) as daemon:
        result = run_simulate("--target", daemon.url, "--churn-fraction", "0.5",
                              admin_url=daemon.admin_url)
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        assert summary["ok"] and summary["errors"] == 0 and summary["undelivered"] == 0
        assert summary["subscribers"] == 60 and summary["churn_disconnects"] > 0
        assert summary["live_updates"]["offline"] > 0


def test_sigusr2_restarts_latency_and_sigusr1_ends_the_load_phase_early():
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    with Daemon(*FAST_DAEMON) as daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
        env["PRESENCED_ADMIN_URL"] = daemon.admin_url
        args = [*RUN, "--target", daemon.url, "--churn", "0"]
        args[args.index("--duration") + 1] = "600"
        proc = subprocess.Popen([sys.executable, "-m", "presenced", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Every online user logged in: the load phase has begun (or is about to;
            # the signal is remembered either way).
            deadline = time.monotonic() + 60
            logins = 'presenced_logins_total{reason="",result="ok"}'
            while time.monotonic() < deadline:
                text = httpx.get(f"{daemon.admin_url}/metrics").text
                done = [line for line in text.splitlines() if line.startswith(logins)]
                if done and float(done[0].split()[-1]) >= 120:
                    break
                time.sleep(0.1)
            # A latency restart, then the end: the workers' samples sent before
            # they confirmed the restart are dropped, and the run ends cleanly.
            proc.send_signal(signal.SIGUSR2)
            proc.send_signal(signal.SIGUSR1)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["ok"] and summary["duration_s"] < 60
