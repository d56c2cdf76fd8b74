"""The canary's latency under each attack of issue 14, against a run without attack.

    .venv/bin/python bench/hostile.py [--seconds 8] [--pairs 25] [--attacks gof,ports,...]

One `presenced serve` (production defaults) in a process of its own; for each scenario, the
attack runs in a second process (this script with --attacker) while this process runs the
canary: PAIRS pairs of users, each a subscriber and a friend. Every second the friend and the
subscriber send a heartbeat (the production rate) and, every few seconds, the subscriber logs in
again on a fresh connection. It prints, per scenario, the canary's heartbeat round trip, the
notify latency (friend's heartbeat sent -> the subscriber holds the update), the fresh login
time, the server's CPU and RSS, and what the attacker got. Loopback only; every loop stops by
itself after --seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import (  # noqa: E402
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
)

from bench.machine import describe  # noqa: E402
from bench.suite.procs import Server, cpu_seconds, rss_bytes  # noqa: E402
from presenced.auth.identity import Identity, login_frame  # noqa: E402
from presenced.client import ConnectionEnded, PresenceClient, RemoteError  # noqa: E402
from presenced.rpc import wire_pb2  # noqa: E402
from presenced.rpc.frames import (  # noqa: E402
    encode_create_port,
    encode_destroy_port,
    encode_request,
    encode_request_module,
    encode_stream_ack,
)
from presenced.v1 import presence_pb2 as pb  # noqa: E402

ATTACKS = ["gof", "ports", "heartbeat-flood", "message-flood", "slow-consumer", "frames",
           "bad-logins", "pre-auth", "admin-import"]
GOF_FRIENDS = 2000
GOF_ID = 2  # PresenceService's GetOnlineFriends on a fresh port
_rng = random.Random(14)


def identity() -> Identity:
    return Identity.generate(random.Random(_rng.getrandbits(64)))


def heartbeat_payload(x: int, y: int) -> bytes:
    return pb.PositionPayload(position=pb.Position(realm="main", x=x, y=y)).SerializeToString()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ------------------------------------------------------------------- the canary


@dataclass
class CanaryResult:
    heartbeat_ms: list[float] = field(default_factory=list)
    notify_ms: list[float] = field(default_factory=list)
    login_ms: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)


async def run_canary(url: str, pairs: list[tuple[Identity, Identity]], seconds: float
                     ) -> CanaryResult:
    result = CanaryResult()
    deadline = trio.current_time() + seconds

    async def pair(me: Identity, friend: Identity, offset: float) -> None:
        sent: dict[int, float] = {}
        try:
            async with PresenceClient.connect(url, me) as client, \
                    PresenceClient.connect(url, friend) as friend_client, \
                    client.subscribe() as updates:
                async def receive() -> None:
                    while True:
                        batch = await updates.next_batch()
                        if batch is None:
                            return
                        now = time.perf_counter()
                        for user in batch:
                            t0 = sent.pop(user.position.y, None)
                            if user.address == friend.address and t0 is not None:
                                result.notify_ms.append((now - t0) * 1000)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    await trio.sleep(offset)
                    n = 0
                    while trio.current_time() < deadline:
                        n += 1
                        tick = trio.current_time()
                        t0 = time.perf_counter()
                        sent[n] = t0
                        r = await friend_client.heartbeat("main", 0, n)
                        result.heartbeat_ms.append((time.perf_counter() - t0) * 1000)
                        if r.WhichOneof("response") != "position":
                            result.failures[f"friend {r.WhichOneof('response')}"] += 1
                        t0 = time.perf_counter()
                        r = await client.heartbeat("main", n % 100, 0)
                        result.heartbeat_ms.append((time.perf_counter() - t0) * 1000)
                        if r.WhichOneof("response") != "position":
                            result.failures[f"heartbeat {r.WhichOneof('response')}"] += 1
                        if n % 3 == 0:
                            t0 = time.perf_counter()
                            async with PresenceClient.connect(url, me) as again:
                                await again.heartbeat("main", 0, 0)
                            result.login_ms.append((time.perf_counter() - t0) * 1000)
                        await trio.sleep_until(tick + 1.0)
                    await trio.sleep(0.5)  # the last update's delivery
                    nursery.cancel_scope.cancel()
        except (ConnectionEnded, RemoteError, OSError, trio.TooSlowError) as e:
            result.failures[type(e).__name__] += 1

    async with trio.open_nursery() as nursery:
        for i, (me, friend) in enumerate(pairs):
            nursery.start_soon(pair, me, friend, i / len(pairs))
    return result


# ----------------------------------------------------------------- the attackers


class Raw:
    """A WebSocket client on a bare socket (sends anything, reads when told)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes] = []
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, port: int, handshake: bool = True, rcvbuf: int | None = None) -> Raw:
        sock = trio.socket.socket()
        if rcvbuf:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        raw = cls(trio.SocketStream(sock))
        if handshake:
            await raw.stream.send_all(raw.ws.send(Request(host="127.0.0.1", target="/")))
            while True:
                data = await raw.stream.receive_some(65536)
                if not data:
                    raise OSError("closed during the handshake")
                raw.ws.receive_data(data)
                if any(isinstance(e, AcceptConnection) for e in raw.ws.events()):
                    break
        return raw

    async def send(self, *messages: bytes) -> None:
        await self.stream.send_all(b"".join(self.ws.send(BytesMessage(data=m))
                                            for m in messages))

    async def read(self, count: int) -> list[bytes]:
        while len(self.messages) < count and self.close_code is None:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.ws.receive_data(data)
            for e in self.ws.events():
                if isinstance(e, BytesMessage):
                    self.messages.append(bytes(e.data))
                elif isinstance(e, CloseConnection):
                    self.close_code = e.code
                elif isinstance(e, Ping):
                    await self.stream.send_all(self.ws.send(e.response()))
        taken, self.messages = self.messages[:count], self.messages[count:]
        return taken

    async def login_and_port(self, who: Identity) -> int:
        await self.send(login_frame(who, who.login_timestamp_ms()).encode())
        await self.read(1)
        await self.send(encode_create_port(1, "attacker"))
        (created,) = await self.read(1)
        port = wire_pb2.CreatePortResponse.FromString(created).port_id
        await self.send(encode_request_module(2, port, "PresenceService"))
        await self.read(1)
        return port

    async def closed(self) -> int | None:
        try:
            while self.close_code is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.ws.receive_data(data)
                for e in self.ws.events():
                    if isinstance(e, CloseConnection):
                        self.close_code = e.code
        except trio.BrokenResourceError:
            pass
        return self.close_code

    async def aclose(self) -> None:
        await self.stream.aclose()


async def attacker(name: str, url: str, port: int, admin_url: str, seconds: float,
                   gof_users: list[dict]) -> Counter:
    outcomes: Counter = Counter()
    deadline = trio.current_time() + seconds

    def ended(e: BaseException) -> None:
        if isinstance(e, ConnectionEnded):
            outcomes[f"closed {e.code}"] += 1
        elif isinstance(e, RemoteError):
            outcomes[f"RemoteError: {e}"] += 1
        else:
            outcomes[type(e).__name__] += 1

    async def loops(count: int, body) -> None:
        async def one(i: int) -> None:
            while trio.current_time() < deadline:
                try:
                    await body(i)
                except (ConnectionEnded, RemoteError, OSError, trio.BrokenResourceError,
                        trio.ClosedResourceError, httpx.HTTPError) as e:
                    ended(e)
                    await trio.sleep(0.01)

        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, i)

    if name == "gof":
        attackers = [identity() for _ in range(10)]
        async with httpx.AsyncClient(base_url=admin_url, trust_env=False, timeout=60) as http:
            body = "".join(f"{a.address},{u['address']}\n" for a in attackers for u in gof_users)
            await http.post("/v1/friendships/import", content=body,
                            headers={"Content-Type": "text/csv"})

        async def gof(i: int) -> None:
            async with PresenceClient.connect(url, attackers[i]) as client:
                while trio.current_time() < deadline:
                    streams = [await client.open_stream(client.procedures["GetOnlineFriends"],
                                                        lambda raw: raw) for _ in range(31)]
                    for stream in streams:
                        try:
                            while await stream.next_batch() is not None:
                                pass
                            outcomes["full answer"] += 1
                        except RemoteError as e:
                            outcomes[f"RemoteError: {e}"] += 1
        await loops(10, gof)
    elif name == "ports":
        async def ports(i: int) -> None:
            async with PresenceClient.connect(url, identity(), port_name="p" * 128) as client:
                for _ in range(9):
                    await client._request(client._rpc.create_port("q" * 128))
        await loops(20, ports)
    elif name == "heartbeat-flood":
        async def flood(i: int) -> None:
            async with PresenceClient.connect(url, identity()) as client:
                payload = heartbeat_payload(1, 1)
                while True:
                    for _ in range(100):
                        client._rpc.call(client.port_id, client.procedures["PositionHeartbeat"],
                                         payload)
                    await client._flush()
                    await trio.sleep(0)
        await loops(50, flood)
    elif name == "message-flood":
        async def flood(i: int) -> None:
            raw = await Raw.connect(port)
            try:
                await raw.login_and_port(identity())
                started = trio.current_time()
                while True:
                    await raw.send(*[encode_destroy_port(n, 999) for n in range(200)])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # How long the server went on reading after refusing the flood.
                outcomes["server ended the socket"] += 1
                ended_after.append(trio.current_time() - started)
            finally:
                await raw.aclose()
        ended_after: list[float] = []
        await loops(10, flood)
        if ended_after:
            outcomes[f"socket ended after {sum(ended_after) / len(ended_after):.1f} s"] = 1
    elif name == "slow-consumer":
        attackers = [identity() for _ in range(5)]
        async with httpx.AsyncClient(base_url=admin_url, trust_env=False, timeout=60) as http:
            body = "".join(f"{a.address},{u['address']}\n" for a in attackers for u in gof_users)
            await http.post("/v1/friendships/import", content=body,
                            headers={"Content-Type": "text/csv"})

        async def slow(i: int) -> None:
            raw = await Raw.connect(port, rcvbuf=4096)
            try:
                port_id = await raw.login_and_port(attackers[i])
                for number in range(10, 10_000):
                    await raw.stream.send_all(b"".join(raw.ws.send(BytesMessage(data=m)) for m in [
                        encode_request(number, port_id, GOF_ID),
                        *[encode_stream_ack(number, port_id, s) for s in range(21)]]))
                    await trio.sleep(0.01)
            finally:
                await raw.aclose()
        await loops(5, slow)
    elif name == "frames":
        async def frames(i: int) -> None:
            raw = await Raw.connect(port)
            try:
                await raw.login_and_port(identity())
                if i % 2:
                    await raw.send(b"\x00" * (16 * 1024 + 1))
                else:
                    for k in range(40):
                        await raw.stream.send_all(raw.ws.send(
                            BytesMessage(data=b"\x00" * 1024, message_finished=k == 39)))
                outcomes[f"closed {await raw.closed()}"] += 1
            finally:
                await raw.aclose()
        await loops(10, frames)
    elif name == "bad-logins":
        victim, other = identity(), identity()

        async def forged(i: int) -> None:
            now = int(time.time() * 1000)
            headers = json.loads(login_frame(victim, now))
            headers["x-identity-auth-chain-2"] = json.loads(login_frame(other, now))[
                "x-identity-auth-chain-2"]
            raw = await Raw.connect(port)
            try:
                await raw.send(json.dumps(headers).encode())
                outcomes[f"closed {await raw.closed()}"] += 1
            finally:
                await raw.aclose()
        await loops(20, forged)
    elif name == "pre-auth":
        async def hold(i: int) -> None:
            raw = await Raw.connect(port, handshake=i % 2 == 0)
            try:
                outcomes[f"closed {await raw.closed()}"] += 1
            finally:
                await raw.aclose()
        await loops(2000, hold)
    elif name == "admin-import":
        lines = "".join(f"0x{_rng.getrandbits(160):040x},0x{_rng.getrandbits(160):040x}\n"
                        for _ in range(190_000))  # ~16 MB
        body = lines.encode()

        async def imports(i: int) -> None:
            async with httpx.AsyncClient(base_url=admin_url, trust_env=False,
                                         timeout=120) as http:
                r = await http.post("/v1/friendships/import", content=body,
                                    headers={"Content-Type": "text/csv"})
                outcomes[f"import {r.status_code}"] += 1
        await loops(1, imports)
    else:
        raise SystemExit(f"unknown attack {name}")
    return outcomes


# ------------------------------------------------------------------------ main


def run_attacker_process(args: argparse.Namespace) -> None:
    users = json.loads(Path(args.gof_users).read_text()) if args.gof_users else []

    async def main() -> None:
        print("ready", flush=True)
        outcomes = await attacker(args.attacker, args.url, args.port, args.admin_url,
                                  args.seconds, users)
        print(json.dumps(dict(outcomes.most_common(6))), flush=True)

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--attacker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--admin-url", help=argparse.SUPPRESS)
    parser.add_argument("--gof-users", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        run_attacker_process(args)
        return
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    print(describe())
    print(f"canary: {args.pairs} pairs (subscriber + friend), 1 heartbeat/s each, a fresh "
          f"login every 3 s per pair; {args.seconds:g} s per scenario")
    rows = []
    with Server() as server:
        admin = server.admin_url()
        pairs = [(identity(), identity()) for _ in range(args.pairs)]
        gof_users = [{"address": f"0x{_rng.getrandbits(160):040x}", "realm": "main",
                      "x": 1, "y": 1} for _ in range(GOF_FRIENDS)]
        users_file = Path(tempfile.gettempdir()) / f"presenced-hostile-{os.getpid()}.json"
        users_file.write_text(json.dumps(gof_users))
        with httpx.Client(base_url=admin, trust_env=False, timeout=60) as http:
            body = "".join(f"{a.address},{b.address}\n" for a, b in pairs)
            http.post("/v1/friendships/import", content=body, headers={"Content-Type": "text/csv"})
        for scenario in ["none", *attacks]:
            with httpx.Client(base_url=admin, trust_env=False, timeout=60) as http:
                # Online again (injected users expire after the TTL like anyone).
                http.post("/v1/presence", json=gof_users)
            attack = None
            if scenario != "none":
                attack = subprocess.Popen(
                    [sys.executable, __file__, "--attacker", scenario, "--url", server.url,
                     "--port", str(server.port), "--admin-url", admin,
                     "--seconds", str(args.seconds + 2), "--gof-users", str(users_file)],
                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
                assert attack.stdout is not None
                attack.stdout.readline()  # ready
                time.sleep(1.0)  # the attack ramps up before the canary starts
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            result = trio.run(run_canary, server.url, pairs, args.seconds)
            cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
            rss = rss_bytes(server.pid) / 1e6
            outcome = ""
            if attack is not None:
                out, _ = attack.communicate(timeout=120)
                outcome = out.strip().splitlines()[-1] if out.strip() else "?"
            rows.append((scenario, result, cpu, rss, outcome))
            print(f"  {scenario}: done (load average {os.getloadavg()[0]:.2f})", flush=True)
        users_file.unlink()
    print()
    print("| attack | heartbeat RTT p50 / p99 ms | notify p50 / p99 ms | fresh login p50 / p99 ms "
          "| canary failures | server CPU | server RSS MB | attacker got |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, r, cpu, rss, outcome in rows:
        fails = ", ".join(f"{k} x{v}" for k, v in r.failures.items()) or "none"
        print(f"| {scenario} | {percentile(r.heartbeat_ms, .5):.1f} / "
              f"{percentile(r.heartbeat_ms, .99):.1f} | {percentile(r.notify_ms, .5):.1f} / "
              f"{percentile(r.notify_ms, .99):.1f} | {percentile(r.login_ms, .5):.1f} / "
              f"{percentile(r.login_ms, .99):.1f} | {fails} | {cpu * 100:.0f} % | {rss:.0f} | "
              f"{outcome} |")
    print(f"\nsamples per scenario: about {len(rows[0][1].heartbeat_ms)} heartbeats, "
          f"{len(rows[0][1].notify_ms)} notifies, {len(rows[0][1].login_ms)} logins; "
          f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
