"""The operator commands (who-online, friends, seed) against a real `presenced serve`.

Most commands run in-process through Typer's CliRunner (fast); the daemon is
always a real process. Exit codes, Ctrl-C and the absence of tracebacks are
also checked with the command as a real process.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest

from presenced.socialgraph import SocialGraph, user_address
from tests.conftest import ADMIN_TOKEN
from tests.support.admin import (
    admin_client,
    new_address,
    run_cli,
    run_cli_process,
)
from tests.support.daemon import free_port


@pytest.fixture
def url(store_daemon) -> str:
    return store_daemon.admin_url


@pytest.fixture
def http(url):
    with admin_client(url) as client:
        yield client


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def online(http, *users: tuple[str, str, int, int]) -> None:
    body = [{"address": a, "realm": r, "x": x, "y": y} for a, r, x, y in users]
    assert http.post("/v1/presence", json=body).status_code == 200


# -------------------------------------------------------------- who-online


def test_who_online_table(url, http):
    me, b, c, d = (new_address() for _ in range(4))
    for friend in (b, c, d):
        http.put(f"/v1/friendships/{me}/{friend}")
    online(http, (me, "main", 1, 2), (c, "dg", -7, 30), (b, "main", 10, -3))
    result = run_cli(["who-online", me.upper().replace("0X", "0x")], url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{me} is online in main at 1,2 (last seen ")
    assert "s ago" in lines[0]
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split()[1] for row in rows] == sorted([b, c])
    row_c = next(row for row in rows if c in row).split("│")
    assert [cell.strip() for cell in row_c[2:5]] == ["dg", "-7", "30"]
    assert row_c[5].strip().endswith("s ago")
    assert lines[-1] == "2 of 3 friends online"


def test_who_online_offline_user_without_friends(url):
    me = new_address()
    result = run_cli(["who-online", me], url)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"{me} is offline", "0 of 0 friends online"]


def test_who_online_json(url, http):
    me, friend = new_address(), new_address()
    http.put(f"/v1/friendships/{me}/{friend}")
    online(http, (friend, "main", 4, 4))
    result = run_cli(["who-online", me, "--json"], url)
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["user"] == {"address": me, "online": False}
    assert body["friends_count"] == 1 and body["online_count"] == 1
    (p,) = body["online_friends"]
    assert (p["address"], p["realm"], p["x"], p["y"]) == (friend, "main", 4, 4)
    assert 0 <= body["now_ms"] - p["last_seen_ms"] < 10_000


def test_bad_address_is_one_line_and_exit_2(url):
    result = run_cli(["who-online", "0x123"], url)
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        "presenced: not an address: '0x123' (expected 0x followed by 40 hex digits)")
    for args in (["friends", "add", new_address(), "bob"], ["friends", "list", "nope"],
                 ["friends", "remove", "x", new_address()]):
        result = run_cli(args, url)
        assert result.exit_code == 2
        assert "not an address" in one_line(result.stderr)


# ----------------------------------------------------------------- friends


def test_friends_add_list_remove(url):
    a, b, c = new_address(), new_address(), new_address()
    result = run_cli(["friends", "add", a, b], url)
    assert result.exit_code == 0 and result.stdout.startswith("added friendship")
    result = run_cli(["friends", "add", b, a], url)
    assert result.exit_code == 0 and "already friends" in result.stdout
    result = run_cli(["friends", "add", a, c, "--json"], url)
    assert json.loads(result.stdout) == {"a": min(a, c), "b": max(a, c), "added": True}

    result = run_cli(["friends", "list", a], url)
    assert result.exit_code == 0
    rows = [line.strip("│ ") for line in result.stdout.splitlines() if line.startswith("│")]
    assert rows == sorted([b, c])
    assert result.stdout.splitlines()[-1] == f"{a} has 2 friends"
    listed = json.loads(run_cli(["friends", "list", a, "--json"], url).stdout)
    assert listed == {"address": a, "friends": sorted([b, c]), "count": 2}

    result = run_cli(["friends", "remove", c, a], url)
    assert result.exit_code == 0 and result.stdout.startswith("removed friendship")
    result = run_cli(["friends", "remove", c, a], url)
    assert result.exit_code == 0 and "were not friends" in result.stdout
    assert json.loads(run_cli(["friends", "remove", a, b, "--json"], url).stdout)["removed"]
    assert run_cli(["friends", "list", a], url).stdout.strip() == f"{a} has 0 friends"


def test_friends_with_oneself_is_a_usage_error(url):
    a = new_address()
    result = run_cli(["friends", "add", a, a], url)
    assert result.exit_code == 2
    assert one_line(result.stderr) == "presenced: a user cannot be their own friend"


# ------------------------------------------------------- seed friendships


def test_seed_friendships_file(url, http, tmp_path):
    a, b, c, d = (new_address() for _ in range(4))
    path = tmp_path / "friends.csv"
    path.write_text("\n".join([
        "# operators' list",
        f"{a},{b}",
        json.dumps([a, c]),
        json.dumps({"a": d, "b": a}),
        f"{b},{a}",
        "",
    ]))
    http.put(f"/v1/friendships/{c}/{a}")
    result = run_cli(["seed", "friendships", str(path)], url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"imported 3 friendships from {path}: 2 added, 1 already existed "
        "(1 duplicate line ignored)")
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == sorted([b, c, d])


def test_seed_friendships_in_chunks_json(url, http, tmp_path):
    hub = new_address()
    friends = [new_address() for _ in range(10)]
    path = tmp_path / "friends.jsonl"
    path.write_text("".join(json.dumps({"a": hub, "b": f}) + "\n" for f in friends))
    result = run_cli(["seed", "friendships", str(path), "--chunk-lines", "3", "--json"], url)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body == {"file": str(path), "lines": 10, "friendships": 10, "duplicates": 0,
                    "added": 10, "existing": 0, "requests": 4}
    assert http.get(f"/v1/users/{hub}/friends").json()["count"] == 10


def test_seed_friendships_from_stdin(url, http):
    a, b = new_address(), new_address()
    result = run_cli(["seed", "friendships", "-"], url, input=f"{a},{b}\n")
    assert result.exit_code == 0, result.output
    assert "from <stdin>: 1 added" in result.stdout
    assert http.get(f"/v1/users/{a}/friends").json()["friends"] == [b]


def test_seed_friendships_malformed_lines_import_nothing(url, http, tmp_path):
    a, b = new_address(), new_address()
    lines = [f"{a},{b}"] * 3 + ["oops", f"{a};{b}", f"{a},{a}"]
    lines += [f"{new_address()},{new_address()}"] * 10 + ["[1, 2]"]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    result = run_cli(["seed", "friendships", str(path), "--chunk-lines", "2"], url)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"presenced: {path}:4: expected two comma-separated addresses",
        f"presenced: {path}:5: expected two comma-separated addresses",
        f"presenced: {path}:6: a user cannot be their own friend",
        f"presenced: {path}:17: addresses must be strings",
        f"presenced: {path}: 4 malformed lines; nothing was imported",
    ]
    assert http.get(f"/v1/users/{a}/friends").json()["count"] == 0


def test_seed_friendships_many_malformed_lines_are_summarised(url, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("bad\n" * 30)
    result = run_cli(["seed", "friendships", str(path)], url)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 22
    assert lines[19] == f"presenced: {path}:20: expected two comma-separated addresses"
    assert lines[20] == f"presenced: {path}: ... and 10 more malformed lines"
    assert lines[21] == f"presenced: {path}: 30 malformed lines; nothing was imported"


def test_seed_friendships_usage_errors(url, tmp_path):
    missing = tmp_path / "missing.csv"
    result = run_cli(["seed", "friendships", str(missing)], url)
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"presenced: cannot read {missing}")
    for args in (["seed", "friendships"],
                 ["seed", "friendships", str(missing), "--random"],
                 ["seed", "friendships", str(missing), "--output", "x.csv"]):
        result = run_cli(args, url)
        assert result.exit_code == 2, args
        one_line(result.stderr)
    result = run_cli(["seed", "friendships", "--random", "--users", "10",
                      "--avg-friends", "6"], url)
    assert result.exit_code == 2
    assert "needs more than 10 users" in one_line(result.stderr)


def test_seed_random_graph_matches_the_generator(url, http):
    seed = 8675309
    result = run_cli(["seed", "friendships", "--random", "--users", "300", "--avg-friends",
                      "8", "--seed", str(seed), "--json"], url)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    graph = SocialGraph.generate(300, 8, seed)
    assert body["friendships"] == len(graph.edges) == 1200
    assert body["avg_friends"] == 8.0
    assert body["added"] + body["existing"] == 1200
    assert body["max_friends"] == max(graph.degrees())
    adjacency = graph.adjacency()
    busiest = max(range(300), key=lambda i: len(adjacency[i]))
    listed = http.get(f"/v1/users/{user_address(seed, busiest)}/friends").json()
    assert listed["friends"] == sorted(user_address(seed, j) for j in adjacency[busiest])
    # Seeding the same graph again adds nothing.
    again = run_cli(["seed", "friendships", "--random", "--users", "300", "--avg-friends",
                     "8", "--seed", str(seed), "--json"], url)
    assert json.loads(again.stdout)["existing"] == 1200


def test_seed_random_graph_to_a_file_is_reproducible(tmp_path):
    outputs = []
    for name in ("one.csv", "two.csv"):
        path = tmp_path / name
        result = run_cli(["seed", "friendships", "--random", "--users", "150",
                          "--avg-friends", "5", "--seed", "42", "--output", str(path),
                          "--admin-url", "http://127.0.0.1:9"])  # never contacted
        assert result.exit_code == 0, result.output
        assert "wrote 375 friendships among 150 users (seed 42)" in result.stderr
        outputs.append(path.read_text())
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert lines[0].startswith("# presenced social graph: seed=42 users=150")
    graph = SocialGraph.generate(150, 5, 42)
    assert lines[1:] == [f"{a},{b}" for a, b in graph.friendships()]
    stdout = run_cli(["seed", "friendships", "--random", "--users", "150", "--avg-friends",
                      "5", "--seed", "42", "-o", "-"])
    assert stdout.stdout == outputs[0]


# ---------------------------------------------------------- seed presence


def test_seed_presence_given_users(url, http):
    me, b, c = new_address(), new_address(), new_address()
    http.put(f"/v1/friendships/{me}/{b}")
    http.put(f"/v1/friendships/{me}/{c}")
    result = run_cli(["seed", "presence", f"{b},main,3,4", f"{c},a realm, with commas,-1,-2"],
                     url)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("marked 2 users online")
    friends = http.get(f"/v1/users/{me}/online-friends").json()["online_friends"]
    assert sorted((p["address"], p["realm"], p["x"], p["y"]) for p in friends) == sorted(
        [(b, "main", 3, 4), (c, "a realm, with commas", -1, -2)])


def test_seed_presence_random_uses_the_graph_users(url, http):
    seed = 777
    result = run_cli(["seed", "presence", "--random", "20", "--users", "50", "--seed",
                      str(seed), "--realm", "main", "--realm", "dg", "--area", "0,0,9,9",
                      "--json"], url)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["injected"] == 20
    population = {user_address(seed, i) for i in range(50)}
    assert {u["address"] for u in body["users"]} <= population
    for user in body["users"]:
        assert user["realm"] in ("main", "dg") and 0 <= user["x"] <= 9 and 0 <= user["y"] <= 9
        state = http.get(f"/v1/users/{user['address']}/presence").json()
        assert (state["online"], state["x"], state["y"]) == (True, user["x"], user["y"])
    # Same seed, same choice.
    again = run_cli(["seed", "presence", "--random", "20", "--users", "50", "--seed",
                     str(seed), "--realm", "main", "--realm", "dg", "--area", "0,0,9,9",
                     "--json"], url)
    assert json.loads(again.stdout)["users"] == body["users"]


def test_seed_presence_rejected_position_is_reported(url, http):
    a, b = new_address(), new_address()
    result = run_cli(["seed", "presence", f"{a},main,1,1", f"{b},main,5000,1"], url)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"presenced: user 2 ({b}): x outside [-1000, 1000]"
    assert lines[-1].startswith("presenced: 1 invalid user; nobody was marked online (400)")
    assert http.get(f"/v1/users/{a}/presence").json()["online"] is False


@pytest.mark.parametrize("args", [
    ["seed", "presence"],
    ["seed", "presence", "0xnope,main,1,1"],
    ["seed", "presence", f"{'0x' + '1' * 40},main,1"],
    ["seed", "presence", f"{'0x' + '1' * 40},main,one,1"],
    ["seed", "presence", "--random", "5", "--users", "3"],
    ["seed", "presence", "--random", "5", "--area", "1,2,3"],
    ["seed", "presence", "--random", "5", f"{'0x' + '1' * 40},main,1,1"],
])
def test_seed_presence_usage_errors(url, args):
    result = run_cli(args, url)
    assert result.exit_code == 2, result.output
    one_line(result.stderr)


# ----------------------------------------------------------- token, errors


def test_commands_with_the_token(token_daemon):
    a, b = new_address(), new_address()
    url = token_daemon.admin_url
    result = run_cli(["friends", "add", a, b], url, token=ADMIN_TOKEN)
    assert result.exit_code == 0, result.output
    result = run_cli(["who-online", a, "--json", "--token", ADMIN_TOKEN], url)
    assert json.loads(result.stdout)["friends_count"] == 1


@pytest.mark.parametrize("token", [None, "wrong"])
@pytest.mark.parametrize("args", [
    ["who-online", "0x" + "a" * 40],
    ["friends", "list", "0x" + "a" * 40],
    ["friends", "add", "0x" + "a" * 40, "0x" + "b" * 40],
    ["seed", "presence", f"{'0x' + 'a' * 40},main,1,1"],
    ["seed", "friendships", "-"],
])
def test_wrong_token_is_one_line(token_daemon, token, args):
    result = run_cli(args, token_daemon.admin_url, token=token,
                     input=f"{'0x' + 'a' * 40},{'0x' + 'b' * 40}\n")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(
        "presenced: the admin endpoint refused the token (401 Unauthorized)")


@pytest.mark.parametrize("args", [
    ["who-online", "0x" + "a" * 40],
    ["friends", "remove", "0x" + "a" * 40, "0x" + "b" * 40],
    ["seed", "presence", "--random", "3"],
])
def test_no_daemon_running(args):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(args, url)
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"presenced: cannot reach the admin endpoint at {url} (Connection refused); "
        "is `presenced serve` running? (see --admin-url)")


def test_invalid_admin_url():
    result = run_cli(["who-online", "0x" + "a" * 40, "--admin-url", "ftp://x"])
    assert result.exit_code == 2
    assert "invalid --admin-url" in one_line(result.stderr)


# --------------------------------------------------- as a real process


def test_real_process_exit_codes(store_daemon):
    a = new_address()
    ok = run_cli_process(["who-online", a, "--json"], store_daemon.admin_url)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["user"]["online"] is False
    bad = run_cli_process(["who-online", "nope"], store_daemon.admin_url)
    assert bad.returncode == 2 and "not an address" in one_line(bad.stderr)
    down = run_cli_process(["friends", "list", a], f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in one_line(down.stderr)


def test_ctrl_c_exits_130_without_traceback():
    # A server that accepts the connection and never answers: the command is
    # stuck in its request when Ctrl-C arrives.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(20)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "presenced", "who-online", "0x" + "a" * 40,
             "--admin-url", f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_base_env(),
        )
        try:
            conn, _ = server.accept()
            with conn:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert out == ""


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}


def test_help_of_every_command():
    for args in (["--help"], ["who-online", "--help"], ["friends", "--help"],
                 ["friends", "add", "--help"], ["friends", "remove", "--help"],
                 ["friends", "list", "--help"], ["seed", "--help"],
                 ["seed", "friendships", "--help"], ["seed", "presence", "--help"]):
        result = run_cli(args)
        assert result.exit_code == 0, args
        assert "Usage" in result.stdout
