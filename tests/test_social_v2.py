"""The SocialService v2 module end to end: an in-process server over real WebSockets on
loopback, driven by our Python client through the module's procedure table.

The real npm clients (Node @dcl/rpc, Unity's and Godot's frame orders) are in
tests/test_interop_v2.py; the engine's rules (transitions only, coalescing, one subscription
of each kind per connection) in tests/test_engine.py.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio

from decentraland.social_service.v2 import social_service_v2_pb2 as v2
from presenced.auth.identity import Identity
from presenced.client import PresenceClient, RemoteError
from presenced.engine import EngineConfig
from presenced.model import Presence
from presenced.profiles import Profile
from presenced.server.app import serve
from presenced.server.config import ServerConfig
from presenced.services import social_v2
from presenced.store.memory import MemoryStore
from presenced.store.redis_store import RedisStore
from presenced.v1 import presence_pb2 as v1
from tests.support.profile_server import ProfileServer
from tests.support.waits import wait_until

USERS = [Identity.generate(random.Random(200 + i)) for i in range(4)]
ALICE, BOB, CAROL, DAVE = USERS
PROCEDURES = [m.name for m in v2.DESCRIPTOR.services_by_name["SocialService"].methods]


def fake(i: int) -> str:
    return "0x" + f"{i:040x}"


class Running:
    def __init__(self, hub) -> None:
        self.hub = hub
        self.url = f"ws://127.0.0.1:{hub.listen_port}/"

    @asynccontextmanager
    async def v2(self, identity: Identity):
        async with PresenceClient.connect(self.url, identity) as client:
            yield V2Client(client, await client.load_module("SocialService"))

    def session(self, identity: Identity):
        return next(c.session for c in self.hub.connections.values()
                    if c.session is not None and c.session.address == identity.address)


class V2Client:
    """Our Python client speaking SocialService by name."""

    def __init__(self, client: PresenceClient, ids: dict[str, int]) -> None:
        self.client = client
        self.ids = ids

    async def call(self, name: str, request=None, response_type=None):
        payload = request.SerializeToString() if request is not None else b""
        raw = await self.client.call(self.ids[name], payload)
        return response_type.FromString(raw) if response_type is not None else raw

    async def stream(self, name: str, item_type):
        return await self.client.open_stream(self.ids[name], item_type.FromString)

    async def get_friends(self, limit=None, offset=None):
        request = v2.GetFriendsPayload()
        if limit is not None or offset is not None:
            request.pagination.limit = limit or 0
            request.pagination.offset = offset or 0
        return await self.call("GetFriends", request, v2.PaginatedFriendsProfilesResponse)


@asynccontextmanager
async def running(nursery, friendships=((ALICE, BOB), (ALICE, CAROL)), raw_pairs=(),
                  **overrides):
    engine = overrides.pop("engine", EngineConfig(offline_grace_ms=50))
    config = replace(ServerConfig(port=0, admin_port=0, engine=engine), **overrides)
    store = None
    if config.redis_url is None:
        store = MemoryStore()
        await store.load_friendships([(a.address, b.address) for a, b in friendships]
                               + list(raw_pairs))
    shutdown = trio.Event()
    hub = await nursery.start(
        lambda task_status: serve(config, shutdown, store=store, task_status=task_status)
    )
    try:
        yield Running(hub)
    finally:
        shutdown.set()


def status_of(update: v2.FriendConnectivityUpdate) -> tuple[str, int]:
    return update.friend.address, update.status


# ------------------------------------------------------------------ the module


async def test_every_procedure_is_listed_in_definition_order_with_ids_per_port(nursery):
    async with running(nursery) as server, PresenceClient.connect(server.url, ALICE) as client:
        ids = await client.load_module("SocialService")
        assert list(ids) == PROCEDURES and len(ids) == 33
        # PresenceService (3 procedures) was loaded first on this port: ids go on from there.
        assert list(ids.values()) == list(range(4, 37))


# ---------------------------------------------------------------- connectivity


async def test_connectivity_snapshot_then_transitions_only(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        async with server.v2(CAROL) as carol:
            await carol.client.heartbeat("main", 1, 1)
            updates = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                         v2.FriendConnectivityUpdate)
            assert status_of(await updates.next_batch()) == (CAROL.address, v2.ONLINE)
            async with server.v2(BOB) as bob:  # v2 only: never a heartbeat
                assert status_of(await updates.next_batch()) == (BOB.address, v2.ONLINE)
                await carol.client.heartbeat("elsewhere", 5, 5)  # a move: no v2 message
                await bob.client.close()
            assert status_of(await updates.next_batch()) == (BOB.address, v2.OFFLINE)
        assert status_of(await updates.next_batch()) == (CAROL.address, v2.OFFLINE)


def test_online_is_left_out_on_the_wire_and_offline_is_field_2():
    online = social_v2.encode_connectivity(Presence(fake(1), True, None, 0), None)
    offline = social_v2.encode_connectivity(Presence(fake(1), False, None, 0), None)
    assert online == b"\x0a\x2c\x0a\x2a" + fake(1).encode()
    assert offline == online + b"\x10\x01"
    assert v2.FriendConnectivityUpdate.FromString(online).status == v2.ONLINE


def test_a_stream_item_with_the_largest_profile_stays_small():
    profile = Profile(fake(1), "é" * 64, True, "https://x/" + "a" * 2000)
    from presenced.profiles.catalyst import MAX_NAME_CHARS, MAX_URL_CHARS

    bounded = Profile(profile.address, profile.name[:MAX_NAME_CHARS], True,
                      profile.picture_url[:MAX_URL_CHARS])
    item = social_v2.encode_connectivity(Presence(fake(1), False, None, 0), bounded)
    parsed = v2.FriendConnectivityUpdate.FromString(item)
    assert parsed.friend.name == "é" * 64 and parsed.friend.has_claimed_name
    assert len(item) < 2_000 < social_v2.MAX_MESSAGE_BYTES


async def test_mixed_modules_see_each_other_and_the_offline(nursery):
    async with running(nursery) as server:
        async with server.v2(ALICE) as alice:
            v2_updates = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                            v2.FriendConnectivityUpdate)
            async with PresenceClient.connect(server.url, BOB) as bob, bob.subscribe() as adr246:
                await bob.heartbeat("main", 3, 4)
                # The heartbeat user is ONLINE for the v2 subscriber...
                assert status_of(await v2_updates.next_batch()) == (BOB.address, v2.ONLINE)
                # ...and the v2-only user is online, without a position, for ADR-246.
                (alice_seen,) = await adr246.next_batch()
                assert alice_seen.address == ALICE.address
                assert alice_seen.status == v1.ONLINE and not alice_seen.HasField("position")
                await alice.client.close()
                (gone,) = await adr246.next_batch()
                assert (gone.address, gone.status) == (ALICE.address, v1.OFFLINE)
        async with server.v2(ALICE) as alice:
            v2_updates = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                            v2.FriendConnectivityUpdate)
            async with PresenceClient.connect(server.url, BOB) as bob:
                await bob.heartbeat("main", 3, 4)
                assert status_of(await v2_updates.next_batch()) == (BOB.address, v2.ONLINE)
            assert status_of(await v2_updates.next_batch()) == (BOB.address, v2.OFFLINE)


async def test_a_duplicate_subscription_closes_the_older_stream_normally(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        first = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                   v2.FriendConnectivityUpdate)
        adr246 = await alice.client.open_stream(alice.client.procedures[
            "SubscribeFriendshipPresenceUpdates"], v1.SubscribeFriendshipPresenceUpdatesResponse
            .FromString)
        second = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                    v2.FriendConnectivityUpdate)
        assert await first.next_batch() is None  # ended normally, no error
        async with server.v2(BOB):
            assert status_of(await second.next_batch()) == (BOB.address, v2.ONLINE)
            # The ADR-246 subscription on the same connection lives on.
            assert [u.address for u in (await adr246.next_batch()).updates] == [BOB.address]
        # Same rule for the friendship stream; the connection stays usable.
        old = await alice.stream("SubscribeToFriendshipUpdates", v2.FriendshipUpdate)
        await alice.stream("SubscribeToFriendshipUpdates", v2.FriendshipUpdate)
        assert await old.next_batch() is None
        for name in ("SubscribeToBlockUpdates", "SubscribeToCommunityMemberConnectivityUpdates"):
            old = await alice.stream(name, v2.BlockUpdate)
            await alice.stream(name, v2.BlockUpdate)
            assert await old.next_batch() is None
        assert (await alice.get_friends()).pagination_data.total == 2
        assert len(server.session(ALICE).streams) == 5
        await alice.client.close()
        # Every entry leaves with its stream when the connection ends.
        await wait_until(lambda: not social_v2.OpenStream.live)


async def test_streams_the_client_expects_to_stay_open_do(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        names = ["SubscribeToBlockUpdates", "SubscribeToCommunityMemberConnectivityUpdates",
                 "SubscribeToFriendshipUpdates", "SubscribeToFriendConnectivityUpdates"]
        for name in names:
            await alice.stream(name, v2.BlockUpdate)
        await alice.get_friends()  # a round trip: every stream request was handled
        procedures = sorted(s.procedure for s in server.session(ALICE).streams.values())
        assert procedures == sorted(names)


# --------------------------------------------------------------------- friends


async def test_get_friends_pagination_as_the_social_service_answers(nursery):
    others = [fake(i) for i in range(1, 26)]
    pairs = [(ALICE.address, o) for o in others]
    async with running(nursery, raw_pairs=pairs) as server, server.v2(ALICE) as alice:
        everyone = sorted([*others, BOB.address, CAROL.address])
        whole = await alice.get_friends()
        assert [f.address for f in whole.friends] == everyone
        assert (whole.pagination_data.total, whole.pagination_data.page) == (27, 1)
        page = await alice.get_friends(limit=10, offset=20)
        assert [f.address for f in page.friends] == everyone[20:]
        assert (page.pagination_data.total, page.pagination_data.page) == (27, 3)
        page = await alice.get_friends(limit=10, offset=5)
        assert page.pagination_data.page == 2  # ceil(5 / 10) + 1
        for limit, offset in ((0, 0), (-5, -7), (5000, 0)):
            page = await alice.get_friends(limit=limit, offset=offset)
            assert len(page.friends) == 27 and page.pagination_data.page == 1
        page = await alice.get_friends(limit=10, offset=10**9)
        assert page.friends == [] and page.pagination_data.total == 27


async def test_get_friends_caps_the_page_at_1000(nursery):
    pairs = [(ALICE.address, fake(i)) for i in range(1, 1101)]
    async with running(nursery, friendships=(), raw_pairs=pairs) as server:
        async with server.v2(ALICE) as alice:
            page = await alice.get_friends(limit=5000)
            assert len(page.friends) == 1000 and page.pagination_data.total == 1100
            page = await alice.get_friends(limit=1000, offset=1000)
            assert len(page.friends) == 100 and page.pagination_data.page == 2


async def test_friends_carry_profiles_and_the_largest_answer_stays_under_unitys_buffer(
        nursery):
    others = [fake(i) for i in range(1, 1001)]
    long_name = "n" * 60
    with ProfileServer({a: long_name for a in others}) as catalyst:
        async with running(nursery, friendships=(),
                           raw_pairs=[(ALICE.address, o) for o in others],
                           profiles_url=catalyst.base_url) as server:
            async with server.v2(ALICE) as alice:
                small = await alice.get_friends(limit=3)
                assert [f.name for f in small.friends] == [long_name] * 3
                assert small.friends[0].profile_picture_url.endswith("/face.png")
                raw = await alice.call("GetFriends", v2.GetFriendsPayload())
                assert len(raw) < social_v2.MAX_MESSAGE_BYTES
                page = v2.PaginatedFriendsProfilesResponse.FromString(raw)
                assert [f.address for f in page.friends] == others  # every row
                named = sum(1 for f in page.friends if f.name)
                assert 3 <= named < 1000  # names while they fit, addresses after


async def test_get_mutual_friends_and_any_case_addresses(nursery):
    friendships = ((ALICE, BOB), (ALICE, CAROL), (DAVE, BOB), (DAVE, CAROL), (BOB, CAROL))
    async with running(nursery, friendships=friendships) as server, server.v2(ALICE) as alice:
        request = v2.GetMutualFriendsPayload()
        request.user.address = DAVE.address.upper().replace("0X", "0x")
        mutual = await alice.call("GetMutualFriends", request,
                                  v2.PaginatedFriendsProfilesResponse)
        assert [f.address for f in mutual.friends] == sorted([BOB.address, CAROL.address])
        assert mutual.pagination_data.total == 2
        request.user.address = "not-an-address"
        with pytest.raises(RemoteError, match="invalid address"):
            await alice.call("GetMutualFriends", request)
        assert (await alice.get_friends()).pagination_data.total == 2  # still usable


async def test_get_friendship_status(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        async def status(address: str) -> v2.GetFriendshipStatusResponse:
            request = v2.GetFriendshipStatusPayload()
            request.user.address = address
            return await alice.call("GetFriendshipStatus", request,
                                    v2.GetFriendshipStatusResponse)

        friend = await status(BOB.address.upper().replace("0X", "0x"))
        assert friend.WhichOneof("response") == "accepted"
        assert friend.accepted.status == v2.ACCEPTED
        stranger = await status(DAVE.address)
        assert stranger.WhichOneof("response") == "accepted"
        assert stranger.accepted.status == v2.NONE
        bad = await status("0x123")
        assert bad.WhichOneof("response") == "invalid_request"


async def test_friendship_updates_tell_accept_and_delete(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        updates = await alice.stream("SubscribeToFriendshipUpdates", v2.FriendshipUpdate)
        await alice.get_friends()
        await server.hub.add_friendships([(ALICE.address, DAVE.address)])
        update = await updates.next_batch()
        assert update.WhichOneof("update") == "accept"
        assert update.accept.user.address == DAVE.address
        await server.hub.remove_friendships([(BOB.address, ALICE.address)])
        update = await updates.next_batch()
        assert update.WhichOneof("update") == "delete"
        assert update.delete.user.address == BOB.address


# -------------------------------------------------------------------- refusals


async def test_blocks_answer_empty_without_blocks(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        blocked = await alice.call("GetBlockedUsers", v2.GetBlockedUsersPayload(),
                                   v2.GetBlockedUsersResponse)
        assert list(blocked.profiles) == [] and blocked.pagination_data.page == 1
        status = await alice.call("GetBlockingStatus", None, v2.GetBlockingStatusResponse)
        assert list(status.blocked_users) == [] == list(status.blocked_by_users)


async def friendship_status(client: V2Client, address: str) -> int:
    request = v2.GetFriendshipStatusPayload()
    request.user.address = address
    response = await client.call("GetFriendshipStatus", request, v2.GetFriendshipStatusResponse)
    assert response.WhichOneof("response") == "accepted"
    return response.accepted.status


async def test_blocks_in_every_procedure_and_the_blocked_user_hears_of_them(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice, server.v2(BOB) as bob:
        bob_blocks = await bob.stream("SubscribeToBlockUpdates", v2.BlockUpdate)
        alice_blocks = await alice.stream("SubscribeToBlockUpdates", v2.BlockUpdate)
        await bob.get_friends()  # the streams' offers are acknowledged by now
        assert await server.hub.add_blocks([(ALICE.address, BOB.address)])
        # The blocked user hears who blocked them; the blocker's own client made the change.
        with trio.fail_after(5):
            update = await bob_blocks.next_batch()
        assert (update.address, update.is_blocked) == (ALICE.address, True)
        assert await friendship_status(alice, BOB.address) == v2.BLOCKED
        assert await friendship_status(bob, ALICE.address) == v2.BLOCKED_BY
        blocked = await alice.call("GetBlockedUsers", v2.GetBlockedUsersPayload(),
                                   v2.GetBlockedUsersResponse)
        assert [p.address for p in blocked.profiles] == [BOB.address]
        assert (blocked.pagination_data.total, blocked.pagination_data.page) == (1, 1)
        status = await alice.call("GetBlockingStatus", None, v2.GetBlockingStatusResponse)
        assert (list(status.blocked_users), list(status.blocked_by_users)) == ([BOB.address], [])
        status = await bob.call("GetBlockingStatus", None, v2.GetBlockingStatusResponse)
        assert (list(status.blocked_users), list(status.blocked_by_users)) == ([], [ALICE.address])
        # A blocked friend is no friend in the lists either.
        assert [f.address for f in (await alice.get_friends()).friends] == [CAROL.address]

        assert await server.hub.remove_blocks([(ALICE.address, BOB.address)])
        with trio.fail_after(5):
            update = await bob_blocks.next_batch()
        assert (update.address, update.is_blocked) == (ALICE.address, False)
        assert await friendship_status(alice, BOB.address) == v2.ACCEPTED
        # The blocker's own stream carried nothing.
        with trio.move_on_after(0.2) as quiet:
            await alice_blocks.next_batch()
        assert quiet.cancelled_caught


async def test_a_new_block_stream_replaces_the_older_one(nursery):
    async with running(nursery) as server, server.v2(BOB) as bob:
        older = await bob.stream("SubscribeToBlockUpdates", v2.BlockUpdate)
        newer = await bob.stream("SubscribeToBlockUpdates", v2.BlockUpdate)
        with trio.fail_after(5):
            assert await older.next_batch() is None  # ended normally
        await server.hub.add_blocks([(CAROL.address, BOB.address)])
        with trio.fail_after(5):
            update = await newer.next_batch()
        assert (update.address, update.is_blocked) == (CAROL.address, True)
        session = server.session(BOB)
        assert sum(1 for a in session.streams.values()
                   if a.procedure == "SubscribeToBlockUpdates") == 1


@pytest.mark.parametrize("name, response_type", [
    ("GetPendingFriendshipRequests", v2.PaginatedFriendshipRequestsResponse),
    ("UpsertFriendship", v2.UpsertFriendshipResponse),
    ("BlockUser", v2.BlockUserResponse),
    ("GetSocialSettings", v2.GetSocialSettingsResponse),
    ("StartPrivateVoiceChat", v2.StartPrivateVoiceChatResponse),
    ("MuteSpeakerFromCommunityVoiceChat", v2.MuteSpeakerFromCommunityVoiceChatResponse),
])
async def test_what_is_not_served_is_refused_in_the_responses_error_case(
        nursery, name, response_type):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        answer = await alice.call(name, None, response_type)
        assert answer.WhichOneof("response") == "internal_server_error"
        assert answer.internal_server_error.message == f"presenced does not serve {name}"


async def test_refused_streams_get_a_remote_error_and_the_connection_stays(nursery):
    async with running(nursery) as server, server.v2(ALICE) as alice:
        for name in ("SubscribeToPrivateVoiceChatUpdates",
                     "SubscribeToCommunityVoiceChatUpdates"):
            stream = await alice.stream(name, v2.BlockUpdate)
            with pytest.raises(RemoteError, match=f"presenced does not serve {name}"):
                await stream.next_batch()
        with pytest.raises(RemoteError, match="invalid payload for GetFriends"):
            await alice.client.call(alice.ids["GetFriends"], b"\xff\xff")
        assert (await alice.get_friends()).pagination_data.total == 2


def test_the_table_is_the_schema():
    module = social_v2.MODULE
    assert [p.name for p in module.procedures] == PROCEDURES
    streams = {m.name for m in v2.DESCRIPTOR.services_by_name["SocialService"].methods
               if m.server_streaming}
    assert {p.name for p in module.spec.procedures if p.server_streaming} == streams


# ------------------------------------------------------------ two instances


async def test_two_instances_through_redis(nursery, redis_server):
    store = RedisStore(redis_server.url, ServerConfig().redis_store_config())
    async with trio.open_nursery() as n:
        await n.start(store.run, lambda events: None)
        await store.add_friendships([(ALICE.address, BOB.address),
                                     (ALICE.address, CAROL.address)])
        n.cancel_scope.cancel()
    await store.aclose(leave=False)
    options = {"redis_url": redis_server.url, "redis_flush_interval_s": 0.01}
    async with running(nursery, **options) as one, running(nursery, **options) as two:
        async with one.v2(ALICE) as alice:
            updates = await alice.stream("SubscribeToFriendConnectivityUpdates",
                                         v2.FriendConnectivityUpdate)
            async with two.v2(BOB):  # v2 only, on the other instance
                assert status_of(await updates.next_batch()) == (BOB.address, v2.ONLINE)
                async with PresenceClient.connect(two.url, CAROL) as carol:
                    await carol.heartbeat("main", 1, 1)
                    assert status_of(await updates.next_batch()) == (CAROL.address, v2.ONLINE)
                    await carol.heartbeat("plaza", 2, 2)  # a move: nothing for v2
                assert status_of(await updates.next_batch()) == (CAROL.address, v2.OFFLINE)
            assert status_of(await updates.next_batch()) == (BOB.address, v2.OFFLINE)
            assert (await alice.get_friends()).pagination_data.total == 2


async def test_profile_and_friendship_metrics(nursery):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from presenced.server.admin import create_app

    with ProfileServer({BOB.address: "bob"}) as catalyst:
        async with running(nursery, profiles_url=catalyst.base_url) as server:
            async with server.v2(ALICE) as alice:
                await alice.get_friends()
            transport = httpx.ASGITransport(app=create_app(server.hub))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                text = (await http.get("/metrics")).text
    samples = {(s.name, s.labels.get("result")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("presenced_profile_requests_total", "ok")] == 1
    assert samples[("presenced_profile_lookups_total", "miss")] == 2
    assert samples[("presenced_profile_cache_entries", None)] == 2
    assert samples[("presenced_friendship_events_dropped_total", None)] == 0
