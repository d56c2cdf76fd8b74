"""`SocialService` (decentraland.social_service.v2): what today's Unity and Godot explorers call.

Schema: proto/decentraland/social_service/v2/social_service_v2.proto (vendored from npm
@dcl/protocol). The module lists all 33 procedures of that service in definition order, so a
client that resolves names finds every one; presenced serves the presence and friendship
part and answers the rest at once with a refusal the client can read.

Served:
- SubscribeToFriendConnectivityUpdates: ONLINE for each friend online now, then ONLINE/OFFLINE
  transitions only (the engine's transition subscription), one friend per message.
- GetFriends, GetMutualFriends (pagination as the current social service answers it),
  GetFriendshipStatus (ACCEPTED or NONE), SubscribeToFriendshipUpdates (accept/delete when a
  friendship begins/ends).
- Blocks: presenced knows none yet, so GetBlockedUsers and GetBlockingStatus answer empty
  and SubscribeToBlockUpdates stays open; SubscribeToCommunityMemberConnectivityUpdates
  stays open too (Unity re-opens a stream that ends, every 5 s).

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
from presenced.services.streams import MailboxStream

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


def _block_relation(session: Session, other: str) -> int | None:
    """BLOCKED or BLOCKED_BY between the caller and `other`, or None.

    Blocks plug in here: presenced stores none yet, so there is never one.
    """
    return None


def get_friendship_status(session: Session, payload: bytes) -> bytes:
    request = pb.GetFriendshipStatusPayload.FromString(payload)
    response = pb.GetFriendshipStatusResponse()
    try:
        other = normalize_address(request.user.address)
    except ValueError:
        response.invalid_request.message = f"invalid address {request.user.address[:64]!r}"
        return response.SerializeToString()
    status = _block_relation(session, other)
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


def get_blocked_users(session: Session, payload: bytes) -> bytes:
    request = pb.GetBlockedUsersPayload.FromString(payload)
    pagination = request.pagination if request.HasField("pagination") else None
    _, _, page = _page(pagination)
    # Blocks plug in here (the caller's blocked users, paginated like friends).
    return pb.GetBlockedUsersResponse(
        pagination_data=pb.PaginatedResponse(total=0, page=page)
    ).SerializeToString()


def get_blocking_status(session: Session, payload: bytes) -> bytes:
    empty_pb2.Empty.FromString(payload)
    # Blocks plug in here (blocked_users, blocked_by_users).
    return b""


class OpenStream:
    """A stream that stays open and sends nothing, until cancelled or replaced.

    Like the subscriptions, one per (connection, procedure): a client that subscribes again
    (Godot once did every 30 s) ends its older stream normally instead of piling them up.
    """

    __slots__ = ("finished", "_key", "_wake")

    # (session, procedure) -> the live stream; an entry leaves when its stream ends.
    live: dict[tuple[Session, str], OpenStream] = {}

    def __init__(self, session: Session, procedure: str) -> None:
        self.finished = False
        self._key = (session, procedure)
        self._wake: Callable[[], None] | None = None
        older = self.live.get(self._key)
        if older is not None:
            older._replace()
        self.live[self._key] = self

    def _replace(self) -> None:
        self.finished = True
        if self._wake is not None:
            self._wake()

    def next_item(self) -> bytes | None:
        return None

    def has_pending(self) -> bool:
        return False

    def bind(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def cancel(self) -> int:
        self._wake = None
        if self.live.get(self._key) is self:
            del self.live[self._key]
        return 0


def subscribe_block_updates(session: Session, payload: bytes) -> StreamSource:
    empty_pb2.Empty.FromString(payload)
    # Blocks plug in here: a feed of BlockUpdate; until then the stream stays open, silent.
    return OpenStream(session, "SubscribeToBlockUpdates")


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
        Unary("GetFriendshipStatus", get_friendship_status),
        ServerStream("SubscribeToFriendConnectivityUpdates", subscribe_connectivity),
        refuse("BlockUser", pb.BlockUserResponse),
        refuse("UnblockUser", pb.UnblockUserResponse),
        Unary("GetBlockedUsers", get_blocked_users),
        Unary("GetBlockingStatus", get_blocking_status),
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
