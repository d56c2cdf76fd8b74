"""Interop: the real npm `@dcl/rpc` 1.1.2 client drives a running `presenced serve`.

`tests/interop/client.mjs` logs in with an AuthChain made by `@dcl/crypto`, then uses
`@dcl/rpc`'s own WebSocket transport, client and `loadService` codegen (messages encoded by
protobufjs from `proto/presenced/v1/presence.proto`). It prints one JSON line per step; this
test reads them while a Python friend (`presenced.client`) reacts.

Needs Node 18+ (skipped without `node`) and the npm packages:

    npm ci --prefix tests/interop
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.v1 import presence_pb2 as pb
from tests.support.daemon import Daemon

NODE = shutil.which("node")
INTEROP = Path(__file__).parent / "interop"
CLIENT = INTEROP / "client.mjs"
INSTALL = "npm ci --prefix tests/interop"

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the @dcl/rpc interop test needs Node 18+"
)

# One (node user, python friend) pair per test, so the tests share a daemon but no state.
PAIRS = {name: (Identity.generate(), Identity.generate()) for name in ("binary", "text")}
PROCEDURES = ["PositionHeartbeat", "GetOnlineFriends", "SubscribeFriendshipPresenceUpdates"]


@pytest.fixture(scope="module")
def daemon():
    if not (INTEROP / "node_modules" / "@dcl" / "rpc" / "package.json").is_file():
        pytest.fail(f"tests/interop/node_modules is missing: run `{INSTALL}`", pytrace=False)
    with tempfile.TemporaryDirectory() as tmp:
        friends = Path(tmp) / "friends.csv"
        friends.write_text(
            "".join(f"{node.address},{friend.address}\n" for node, friend in PAIRS.values())
        )
        with Daemon("--friends", str(friends), "--offline-grace", "0.2") as d:
            yield d


class NodeClient:
    """The running `client.mjs`: its stdout, one JSON event per line."""

    def __init__(self, proc: trio.Process, stderr: Path, daemon: Daemon) -> None:
        self.proc = proc
        self.stderr = stderr
        self.daemon = daemon
        self.events: list[dict] = []
        self._buffer = b""

    def _failure(self, what: str) -> AssertionError:
        return AssertionError(
            f"{what}\nevents so far: {json.dumps(self.events, indent=1)}\n"
            f"node stderr:\n{self.stderr.read_text(errors='replace')}\n"
            f"daemon log:\n{self.daemon.log()}"
        )

    async def event(self) -> dict:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise self._failure("the node client exited before the next event")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event = json.loads(line)
        self.events.append(event)
        if event["event"] == "error":
            raise self._failure(f"the node client failed: {event['message']}")
        return event

    async def expect(self, name: str) -> dict:
        event = await self.event()
        if event["event"] != name:
            raise self._failure(f"expected {name!r}, got {event!r}")
        return event

    async def expect_update(self, predicate: Callable[[dict], bool]) -> dict:
        """Skip subscription items until one of them holds a user matching `predicate`."""
        while True:
            event = await self.expect("update")
            for user in event["updates"]:
                if predicate(user):
                    return user

    async def finish(self) -> int:
        await self.expect("done")
        return await self.proc.wait()


@asynccontextmanager
async def node_client(daemon: Daemon, *args: str) -> AsyncIterator[NodeClient]:
    with tempfile.NamedTemporaryFile(prefix="interop-node-", suffix=".log") as stderr:
        proc = await trio.lowlevel.open_process(
            [NODE, str(CLIENT), "--url", daemon.url, "--timeout", "10000", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=INTEROP,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        try:
            yield NodeClient(proc, Path(stderr.name), daemon)
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                assert proc.stdout is not None
                await proc.stdout.aclose()


def at(address: str, realm: str, x: int, y: int) -> Callable[[dict], bool]:
    """Matches a user printed by the node client: ONLINE at this position."""
    return lambda u: (
        u["address"] == address
        and u["status"] == "ONLINE"
        and u["position"] == {"realm": realm, "x": x, "y": y}
        and u["last_seen_ms"] > 0
    )


async def next_matching(updates, predicate: Callable[[pb.UserPresence], bool]):
    async for batch in updates:
        for user in batch:
            if predicate(user):
                return user
    raise AssertionError("the subscription ended")


@pytest.mark.parametrize("auth_frame", ["binary", "text"])
async def test_dcl_rpc_client_heartbeat_online_friends_and_live_update(daemon, auth_frame):
    node, friend = PAIRS[auth_frame]
    with trio.fail_after(20):
        async with (
            PresenceClient.connect(daemon.url, friend) as py,
            py.subscribe() as py_updates,
        ):
            assert (await py.heartbeat("interop-a", 5, 6)).position.realm == "interop-a"
            async with node_client(
                daemon,
                "--owner-key", node.owner_key.hex(),
                "--auth-frame", auth_frame,
                "--heartbeat", "main,-7,3",
                "--wait-for", f"{friend.address},interop-b,-8,9",
            ) as js:
                # @dcl/crypto derives the same checksummed address as our Python identity.
                assert (await js.expect("identity"))["address"] == node.owner_address
                assert (await js.expect("login_sent"))["frame"] == auth_frame
                assert (await js.expect("module"))["procedures"] == PROCEDURES

                heartbeat = await js.expect("heartbeat")
                assert heartbeat["response"] == {
                    "response": "position", "position": {"realm": "main", "x": -7, "y": 3},
                }
                # ...and the Python friend hears about it on its own subscription.
                await next_matching(
                    py_updates,
                    lambda u: u.address == node.address
                    and u.status == pb.ONLINE
                    and (u.position.realm, u.position.x, u.position.y) == ("main", -7, 3),
                )

                (online,) = (await js.expect("online_friends"))["users"]
                assert at(friend.address, "interop-a", 5, 6)(online)

                # The subscription starts with the friends already online...
                await js.expect_update(at(friend.address, "interop-a", 5, 6))
                # ...then carries live changes: the Python friend moves now.
                moved = await py.heartbeat("interop-b", -8, 9)
                assert moved.WhichOneof("response") == "position"
                await js.expect_update(at(friend.address, "interop-b", -8, 9))

                # The client cancelled the stream; the connection still works afterwards.
                assert (await js.expect("subscription_closed"))["matched"] is True
                after = await js.expect("heartbeat_after_cancel")
                assert after["response"]["response"] == "position"
                assert (await js.expect("closed"))["code"] == 1000
                assert await js.finish() == 0

            # DESTROY_PORT + close 1000: the node user goes offline for its friend.
            await next_matching(
                py_updates, lambda u: u.address == node.address and u.status == pb.OFFLINE
            )


async def test_dcl_rpc_client_sees_errors_and_streams_ended_right_after_their_offer(daemon):
    with trio.fail_after(20):
        async with node_client(daemon, "--scenario", "errors", "--rounds", "20") as js:
            await js.expect("identity")
            await js.expect("login_sent")
            unknown = (await js.expect("unknown_module"))["error"]
            assert unknown.startswith("RemoteError: Module NoSuchModule is not available for port")
            invalid = await js.expect("invalid_unary_payload")
            assert invalid["error"] == "RemoteError: invalid payload for PositionHeartbeat"
            bad = (await js.expect("bad_request"))["response"]
            assert bad["response"] == "bad_request" and bad["bad_request"]["message"]
            # Each stream below is ended by the server before the client acked its offer. The
            # TS client drops frames for a stream that arrive in the same event-loop turn as
            # the offer, so the server must hold them until the ack ("hung" otherwise).
            streams = await js.expect("invalid_stream_payload")
            assert streams["errors"] == ["RemoteError: invalid payload for GetOnlineFriends"]
            takeover = await js.expect("takeover")
            assert takeover["first"] == ["ended after 0 items"]
            assert (await js.expect("heartbeat"))["response"]["response"] == "position"
            assert (await js.expect("closed"))["code"] == 1000
            assert await js.finish() == 0


async def test_dcl_rpc_client_with_a_bad_signature_is_closed_with_3003(daemon):
    with trio.fail_after(20):
        # No --owner-key: the owner is a fresh @dcl/crypto createUnsafeIdentity().
        async with node_client(daemon, "--scenario", "bad-signature") as js:
            await js.expect("identity")
            await js.expect("login_sent")
            closed = await js.expect("closed")
            assert closed["code"] == 3003
            assert closed["reason"].startswith("Unauthorized")
            # The CREATE_PORT @dcl/rpc sent right behind the login fails instead of hanging.
            assert closed["createPort"] == {"ok": False, "error": "RPC Transport closed"}
            assert await js.finish() == 0
