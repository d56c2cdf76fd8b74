"""Interop: today's explorers' module, `SocialService` v2, driven by the real npm clients.

`tests/interop/v2client.mjs` uses `@dcl/rpc` 1.1.2 with `@dcl/protocol`'s own generated
`SocialServiceDefinition` (ts-proto), logs in with `@dcl/crypto`, and connects in Unity's
frame order (text login and CREATE_PORT in one write, before SERVER_READY) or Godot's (binary
login, then wait for SERVER_READY). A Python friend comes online and goes offline meanwhile.
Profiles come from a loopback server speaking the Catalyst lambdas format.

Needs Node 18+ (skipped without `node`) and `npm ci --prefix tests/interop`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from decentraland.social_service.v2 import social_service_v2_pb2 as v2
from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from tests.support.daemon import Daemon
from tests.support.profile_server import ProfileServer
from tests.test_interop import INSTALL, INTEROP, NODE, NodeClient

CLIENT = INTEROP / "v2client.mjs"

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the @dcl/rpc interop test needs Node 18+"
)

ORDERS = ("unity", "godot")
# Per frame order: the node user, its Python friend, and two friends who never connect.
USERS = {order: (Identity.generate(), Identity.generate()) for order in ORDERS}
OTHERS = {order: ["0x" + f"{i + 16 * n:040x}" for i in (1, 2)] for n, order in enumerate(ORDERS)}
PROCEDURES = [m.name for m in v2.DESCRIPTOR.services_by_name["SocialService"].methods]


@pytest.fixture(scope="module")
def daemon():
    if not (INTEROP / "node_modules" / "@dcl" / "protocol" / "package.json").is_file():
        pytest.fail(f"tests/interop/node_modules is missing: run `{INSTALL}`", pytrace=False)
    names = {}
    lines = []
    for order, (node, friend) in USERS.items():
        names[friend.address] = f"friend-{order}"
        for other in OTHERS[order]:
            names[other] = f"other-{other[-1]}"
        lines += [(node.address, friend.address)] + [(node.address, o) for o in OTHERS[order]]
    with ProfileServer(names) as catalyst, tempfile.TemporaryDirectory() as tmp:
        friends = Path(tmp) / "friends.csv"
        friends.write_text("".join(f"{a},{b}\n" for a, b in lines))
        with Daemon("--friends", str(friends), "--offline-grace", "0.2",
                    "--profiles-url", catalyst.base_url) as d:
            yield d


@asynccontextmanager
async def v2_client(daemon: Daemon, *args: str) -> AsyncIterator[NodeClient]:
    with tempfile.NamedTemporaryFile(prefix="interop-v2-", suffix=".log") as stderr:
        proc = await trio.lowlevel.open_process(
            [NODE, str(CLIENT), "--url", daemon.url, "--timeout", "15000", *args],
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


@pytest.mark.parametrize("order", ORDERS)
async def test_explorer_sees_a_friend_online_then_offline(daemon, order):
    node, friend = USERS[order]
    everyone = sorted([friend.address, *OTHERS[order]])
    with trio.fail_after(30):
        async with v2_client(daemon, "--order", order, "--owner-key", node.owner_key.hex(),
                             "--friend", friend.address) as js:
            assert (await js.expect("identity"))["address"] == node.address
            if order == "unity":
                burst = await js.expect("burst_sent")
                assert burst["frames"] == ["login(text)", "CREATE_PORT"]
                assert burst["beforeServerReady"] is True
            else:
                await js.expect("server_ready")
            assert (await js.expect("module"))["procedures"] == PROCEDURES

            friends = await js.expect("friends")
            assert friends["first"]["addresses"] == everyone[:1]
            assert (friends["first"]["total"], friends["first"]["page"]) == (3, 1)
            assert friends["rest"]["addresses"] == everyone[1:]
            assert friends["rest"]["page"] == 2  # ceil(1 / 1000) + 1, as the social service
            assert friends["whole"]["addresses"] == everyone
            # Names from the Catalyst (the friends list may wait a moment for them).
            assert f"friend-{order}" in friends["whole"]["names"]

            status = await js.expect("friendship_status")
            assert status == {"event": "friendship_status", "case": "accepted",
                              "status": "ACCEPTED"}
            refused = await js.expect("refused_unary")
            assert refused["case"] == "internalServerError"
            assert refused["message"] == "presenced does not serve GetSocialSettings"
            stream = await js.expect("refused_stream")
            assert stream["error"] == (
                "RemoteError: presenced does not serve SubscribeToPrivateVoiceChatUpdates")
            assert (await js.expect("duplicate"))["older"] == "ended after 0 items"
            await js.expect("subscribed")

            async with PresenceClient.connect(daemon.url, friend) as py:
                if order == "godot":
                    # A PositionHeartbeat user is ONLINE for a v2 subscriber too.
                    await py.heartbeat("main", 1, 2)
                online = await js.expect("update")
                # ONLINE is proto3's default, left out on the wire: the client reads it as ONLINE.
                assert (online["address"], online["status"]) == (friend.address, "ONLINE")
                assert online["name"] == f"friend-{order}"
            offline = await js.expect("update")
            assert (offline["address"], offline["status"]) == (friend.address, "OFFLINE")

            # The client cancelled the stream; the connection still works afterwards.
            assert (await js.expect("after_cancel"))["addresses"] == everyone[:1]
            assert (await js.expect("closed"))["code"] == 1000
            assert await js.finish() == 0
