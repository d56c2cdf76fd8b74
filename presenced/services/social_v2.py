"""`SocialService` (decentraland.social_service.v2): what today's Unity and Godot explorers call.

Schema: proto/decentraland/social_service/v2/social_service_v2.proto (vendored from npm
@dcl/protocol). The module lists all 33 procedures of that service in definition order, so a
client that resolves names finds every one; presenced serves the presence and friendship
part and answers the rest at once with a refusal the client can read.

Served:
- SubscribeToFriendConnectivityUpdates: ONLINE for each friend online now, then ONLINE/OFFLINE
  transitions only (the engine's transition subscription), one friend per message.
- GetFriends, GetMutualFriends (pagination as the current social service answers it),
  GetFriendshipStatus (ACCEPTED, NONE, BLOCKED, BLOCKED_BY), SubscribeToFriendshipUpdates
  (accept/delete when a friendship begins/ends).
- Blocks (from every source of blocks, docs/friends.md): GetBlockedUsers, GetBlockingStatus,
  GetFriendshipStatus's BLOCKED / BLOCKED_BY and SubscribeToBlockUpdates (the blocked user
  hears who blocked or unblocked them). A block in either direction also hides each user from
  the other in every stream and list (the stores filter the friendship).
  SubscribeToCommunityMemberConnectivityUpdates stays open, silent (Unity re-opens a stream
  that ends, every 5 s).

Refused: friend requests, block writes, settings, communities and voice chat: in the
response's `internal_server_error` case ("presenced does not serve X") where the response has
an error case, else a RemoteError. Streams among them get a RemoteError.

Names and pictures come from the profile source (`Services.profiles`) when configured; the
stream path never waits for it (a missing profile is an address-only FriendProfile).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from decentraland.social_service.v2 import social_service_v2_pb2 as pb
from presenced.engine import FriendshipFeed
from presenced.model import Presence, normalize_address
from presenced.profiles import Profile
from presenced.services.base import (
    AsyncUnary,
    Module,
    ProcedureError,
    ServerStream,
    Session,
    StreamSource,
    Unary,
)
from presenced.services.streams import MailboxStream, OpenStream

__all__ = ["MAX_MESSAGE_BYTES", "MODULE", "MODULE_NAME", "PAGE_LIMIT", "encode_connectivity"]

MODULE_NAME = "SocialService"

# Friends per page: the default and the cap (Unity prewarms its cache with one request of
# 1,000, and clients compute the next offset from the size they asked for: a lower cap would
# make them skip rows). Offsets beyond OFFSET_MAX are read as OFFSET_MAX, as the social
# service does.
PAGE_LIMIT = 1_000
OFFSET_MAX = 100_000
# Unity's receive buffer: no message we send may reach it.
MAX_MESSAGE_BYTES = 100_000
# How long a friends list may wait for names and pictures that are not cached.
PROFILE_WAIT_S = 1.0
# Friendship events per stream message (one: FriendshipUpdate carries one user).
_ONE = 1

_ONLINE = pb.ONLINE
_OFFLINE = pb.OFFLINE


# ------------------------------------------------------------------ codecs


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def friend_profile(address: str, profile: Profile | None) -> bytes:
    """An encoded `FriendProfile` (hand-built: it is on every stream item)."""
    body = _field(0x0A, address.encode())
    if profile is not None:
        if profile.name:
            body += _field(0x12, profile.name.encode())
        if profile.has_claimed_name:
            body += b"\x18\x01"
        if profile.picture_url:
            body += _field(0x22, profile.picture_url.encode())
    return body


def encode_connectivity(presence: Presence, profile: Profile | None) -> bytes:
    """An encoded `FriendConnectivityUpdate`. ONLINE is proto3's default: left out."""
    item = _field(0x0A, friend_profile(presence.address, profile))
    if not presence.online:
        item += b"\x10" + _varint(_OFFLINE)
    return item


def _lookup(session: Session) -> Callable[[str], Profile | None]:
    profiles = session.services.profiles
    if profiles is None:
        return lambda address: None
    return profiles.lookup


def _address(user: pb.User) -> str:
    """The lower-case address of a `User` in a request (any case accepted)."""
    try:
        return normalize_address(user.address)
    except ValueError:
        raise ProcedureError(f"invalid address {user.address[:64]!r}") from None


# ------------------------------------------------- connectivity (presence)


def subscribe_connectivity(session: Session, payload: bytes) -> StreamSource:
    empty_pb2.Empty.FromString(payload)
    engine = session.engine
    session_id = session.session_id
    lookup = _lookup(session)
    record = session.record_delivery

    def encode(batch: Sequence[Presence]) -> bytes:
        presence = batch[0]
        return encode_connectivity(presence, lookup(presence.address))

    # Ends this connection's previous connectivity subscription, if any (it closes normally).
    mailbox = engine.subscribe_transitions(session_id)
    return MailboxStream(
        mailbox, encode, _ONE, on_taken=record,
        on_cancel=lambda box: engine.unsubscribe(session_id, box),
    )


# ---------------------------------------------------------------- friends


def _page(pagination: pb.Pagination | None) -> tuple[int, int, int]:
    """(limit, offset, page) as the social service reads a `Pagination`."""
    limit = pagination.limit if pagination is not None else 0
    offset = pagination.offset if pagination is not None else 0
    if limit <= 0:
        limit = PAGE_LIMIT
    limit = min(limit, PAGE_LIMIT)
    offset = min(max(offset, 0), OFFSET_MAX)
    return limit, offset, math.ceil(offset / limit) + 1


async def _friends_page(
    session: Session, friends: Iterable[str], pagination: pb.Pagination | None
) -> bytes:
    ordered = sorted(friends)
    limit, offset, page = _page(pagination)
    rows = ordered[offset : offset + limit]
    profiles: dict[str, Profile] = {}
    source = session.services.profiles
    if source is not None and rows:
        profiles = await source.lookup_many(rows, PROFILE_WAIT_S)
    tail = _field(0x12, pb.PaginatedResponse(total=len(ordered), page=page).SerializeToString())
    # Every row is sent (clients page by the size they asked for); names and pictures only
    # while the answer stays under Unity's receive buffer: past it, rows are address-only.
    budget = MAX_MESSAGE_BYTES - 1_024 - len(tail) - sum(len(a) + 4 for a in rows)
    parts: list[bytes] = []
    for address in rows:
        bare = friend_profile(address, None)
        full = friend_profile(address, profiles.get(address))
        extra = len(full) - len(bare)
        if extra <= budget:
            budget -= extra
            parts.append(_field(0x0A, full))
        else:
            parts.append(_field(0x0A, bare))
    return b"".join(parts) + tail


async def get_friends(session: Session, payload: bytes) -> bytes:
    request = pb.GetFriendsPayload.FromString(payload)
    pagination = request.pagination if request.HasField("pagination") else None
    friends = session.engine.friends_of_session(session.session_id)
    return await _friends_page(session, friends, pagination)


async def get_mutual_friends(session: Session, payload: bytes) -> bytes:
    request = pb.GetMutualFriendsPayload.FromString(payload)
    other = _address(request.user)
    pagination = request.pagination if request.HasField("pagination") else None
    mine = session.engine.friends_of_session(session.session_id)
    mutual = mine & await session.friends_of(other) if other != session.address else frozenset()
    return await _friends_page(session, mutual, pagination)


async def _block_relation(session: Session, other: str) -> int | None:
    """BLOCKED (the caller blocks `other`), BLOCKED_BY (`other` blocks the caller), or None."""
    blocking, blocked_by = await session.block_status(other)
    if blocking:
        return pb.BLOCKED
    if blocked_by:
        return pb.BLOCKED_BY
    return None


async def get_friendship_status(session: Session, payload: bytes) -> bytes:
    request = pb.GetFriendshipStatusPayload.FromString(payload)
    response = pb.GetFriendshipStatusResponse()
    try:
        other = normalize_address(request.user.address)
    except ValueError:
        response.invalid_request.message = f"invalid address {request.user.address[:64]!r}"
        return response.SerializeToString()
    status = await _block_relation(session, other) if other != session.address else None
    if status is None:
        friends = session.engine.friends_of_session(session.session_id)
        status = pb.ACCEPTED if other in friends else pb.NONE
    # The success case is named `accepted` whatever the status (NONE included).
    response.accepted.status = status
    return response.SerializeToString()


# ------------------------------------------------------- friendship stream


def _friendship_update(friend: str, began: bool) -> bytes:
    update = pb.FriendshipUpdate()
    (update.accept if began else update.delete).user.address = friend
    return update.SerializeToString()


class FriendshipStream:
    """A `StreamSource` over an engine `FriendshipFeed`: accept/delete, one per message."""

    __slots__ = ("feed", "_on_cancel")

    def __init__(self, feed: FriendshipFeed, on_cancel: Callable[[FriendshipFeed], None]) -> None:
        self.feed = feed
        self._on_cancel = on_cancel

    @property
    def finished(self) -> bool:
        return self.feed.closed

    def next_item(self) -> bytes | None:
        feed = self.feed
        if feed.closed or not feed.pending:
            return None
        ((friend, began),) = feed.take(_ONE)
        return _friendship_update(friend, began)

    def has_pending(self) -> bool:
        return bool(self.feed.pending) and not self.feed.closed

    def bind(self, wake: Callable[[], None]) -> None:
        self.feed.on_ready = wake

    def cancel(self) -> int:
        feed = self.feed
        feed.on_ready = None
        if not feed.closed:
            self._on_cancel(feed)
        return 0


def subscribe_friendships(session: Session, payload: bytes) -> StreamSource:
    empty_pb2.Empty.FromString(payload)
    engine = session.engine
    session_id = session.session_id
    feed = engine.subscribe_friendships(session_id)
    return FriendshipStream(feed, lambda f: engine.unsubscribe_friendships(session_id, f))


# ------------------------------------------------------------------ blocks


async def get_blocked_users(session: Session, payload: bytes) -> bytes:
    """Whom the caller blocks, in a stable order, paginated like friends."""
    request = pb.GetBlockedUsersPayload.FromString(payload)
    pagination = request.pagination if request.HasField("pagination") else None
    blocking, _ = await session.blocks()
    ordered = sorted(blocking)
    limit, offset, page = _page(pagination)
    rows = ordered[offset : offset + limit]
    profiles: dict[str, Profile] = {}
    source = session.services.profiles
    if source is not None and rows:
        profiles = await source.lookup_many(rows, PROFILE_WAIT_S)
    response = pb.GetBlockedUsersResponse(
        pagination_data=pb.PaginatedResponse(total=len(ordered), page=page))
    # Names are cut to a bounded length by the profile source: 1,000 rows stay far below
    # Unity's receive buffer.
    for address in rows:
        row = response.profiles.add(address=address)
        profile = profiles.get(address)
        if profile is not None:
            row.name = profile.name
            row.has_claimed_name = profile.has_claimed_name
            row.profile_picture_url = profile.picture_url
    return response.SerializeToString()


async def get_blocking_status(session: Session, payload: bytes) -> bytes:
    empty_pb2.Empty.FromString(payload)
    blocking, blocked_by = await session.blocks()
    return pb.GetBlockingStatusResponse(
        blocked_users=sorted(blocking), blocked_by_users=sorted(blocked_by)
    ).SerializeToString()


class BlockStream(OpenStream):
    """`SubscribeToBlockUpdates`: who blocks or unblocks the caller, one `BlockUpdate` a message.

    As in the social service, the blocked user hears of it (`address` is the blocker); the
    blocker's own client made the change. Pending updates coalesce per blocker (the latest
    wins) and are bounded; past the bound the oldest is dropped.
    """

    __slots__ = ("pending", "_stop")

    MAX_PENDING = 1_000

    def __init__(self, session: Session) -> None:
        super().__init__(session, "SubscribeToBlockUpdates")
        self.pending: dict[str, bool] = {}
        self._stop = session.watch_blocks(self._on_change)

    def _on_change(self, blocker: str, is_blocked: bool) -> None:
        pending = self.pending
        pending.pop(blocker, None)
        pending[blocker] = is_blocked
        if len(pending) > self.MAX_PENDING:
            del pending[next(iter(pending))]
        if len(pending) == 1 and self._wake is not None:
            self._wake()

    def next_item(self) -> bytes | None:
        if self.finished or not self.pending:
            return None
        blocker = next(iter(self.pending))
        is_blocked = self.pending.pop(blocker)
        return pb.BlockUpdate(address=blocker, is_blocked=is_blocked).SerializeToString()

    def has_pending(self) -> bool:
        return bool(self.pending) and not self.finished

    def _replace(self) -> None:
        self._stop()
        super()._replace()

    def cancel(self) -> int:
        self._stop()
        return super().cancel()


def subscribe_block_updates(session: Session, payload: bytes) -> StreamSource:
    empty_pb2.Empty.FromString(payload)
    # Replaces this connection's previous block stream, if any (it ends normally).
    return BlockStream(session)


def subscribe_community_members(session: Session, payload: bytes) -> StreamSource:
    """Communities are not served; the client keeps this stream open, so it stays open."""
    empty_pb2.Empty.FromString(payload)
    return OpenStream(session, "SubscribeToCommunityMemberConnectivityUpdates")


# ------------------------------------------------------------------ refusals


def _not_served(name: str) -> str:
    return f"presenced does not serve {name}"


def refuse(name: str, response_type: type[Message]) -> Unary:
    """A procedure answered at once with its response's `internal_server_error` case."""
    response: Any = response_type()  # every refused response has this error case
    response.internal_server_error.message = _not_served(name)
    answer = response.SerializeToString()
    return Unary(name, lambda session, payload: answer)


def refuse_stream(name: str) -> ServerStream:
    """A stream refused with a RemoteError (stream items have no error case)."""

    def handler(session: Session, payload: bytes) -> StreamSource:
        raise ProcedureError(_not_served(name))

    return ServerStream(name, handler)


# ------------------------------------------------------------------- table

MODULE = Module(
    MODULE_NAME,
    (
        AsyncUnary("GetFriends", get_friends),
        AsyncUnary("GetMutualFriends", get_mutual_friends),
        refuse("GetPendingFriendshipRequests", pb.PaginatedFriendshipRequestsResponse),
        refuse("GetSentFriendshipRequests", pb.PaginatedFriendshipRequestsResponse),
        refuse("UpsertFriendship", pb.UpsertFriendshipResponse),
        ServerStream("SubscribeToFriendshipUpdates", subscribe_friendships),
        AsyncUnary("GetFriendshipStatus", get_friendship_status),
        ServerStream("SubscribeToFriendConnectivityUpdates", subscribe_connectivity),
        refuse("BlockUser", pb.BlockUserResponse),
        refuse("UnblockUser", pb.UnblockUserResponse),
        AsyncUnary("GetBlockedUsers", get_blocked_users),
        AsyncUnary("GetBlockingStatus", get_blocking_status),
        ServerStream("SubscribeToBlockUpdates", subscribe_block_updates),
        refuse("GetSocialSettings", pb.GetSocialSettingsResponse),
        refuse("UpsertSocialSettings", pb.UpsertSocialSettingsResponse),
        refuse("GetPrivateMessagesSettings", pb.GetPrivateMessagesSettingsResponse),
        ServerStream("SubscribeToCommunityMemberConnectivityUpdates",
                     subscribe_community_members),
        refuse("StartPrivateVoiceChat", pb.StartPrivateVoiceChatResponse),
        refuse("AcceptPrivateVoiceChat", pb.AcceptPrivateVoiceChatResponse),
        refuse("RejectPrivateVoiceChat", pb.RejectPrivateVoiceChatResponse),
        refuse("EndPrivateVoiceChat", pb.EndPrivateVoiceChatResponse),
        refuse("GetIncomingPrivateVoiceChatRequest",
               pb.GetIncomingPrivateVoiceChatRequestResponse),
        refuse_stream("SubscribeToPrivateVoiceChatUpdates"),
        refuse("StartCommunityVoiceChat", pb.StartCommunityVoiceChatResponse),
        refuse("JoinCommunityVoiceChat", pb.JoinCommunityVoiceChatResponse),
        refuse("RequestToSpeakInCommunityVoiceChat",
               pb.RequestToSpeakInCommunityVoiceChatResponse),
        refuse("PromoteSpeakerInCommunityVoiceChat",
               pb.PromoteSpeakerInCommunityVoiceChatResponse),
        refuse("DemoteSpeakerInCommunityVoiceChat", pb.DemoteSpeakerInCommunityVoiceChatResponse),
        refuse("KickPlayerFromCommunityVoiceChat", pb.KickPlayerFromCommunityVoiceChatResponse),
        refuse("RejectSpeakRequestInCommunityVoiceChat",
               pb.RejectSpeakRequestInCommunityVoiceChatResponse),
        refuse("EndCommunityVoiceChat", pb.EndCommunityVoiceChatResponse),
        refuse_stream("SubscribeToCommunityVoiceChatUpdates"),
        refuse("MuteSpeakerFromCommunityVoiceChat", pb.MuteSpeakerFromCommunityVoiceChatResponse),
    ),
)
