"""`PresenceService`: the presence RPCs of ADR-246, as one table of procedures.

    PositionHeartbeat(PositionPayload) -> PositionResponse
    GetOnlineFriends(Payload) -> stream UsersResponse
    SubscribeFriendshipPresenceUpdates(Payload) -> stream SubscribeFriendshipPresenceUpdatesResponse

Schema: proto/presenced/v1/presence.proto. Clients (presenced.client, the load generator) take
the module and procedure names from here.

Stream items are built by joining per-user encodings cached on each `Presence` snapshot, so an
update that reaches many friends is serialized once, not once per recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from presenced.closes import Close
from presenced.engine import (
    Abusive,
    Accepted,
    BadRequest,
    HeartbeatOutcome,
    PresenceEngine,
    TooManyRequests,
)
from presenced.model import Position, Presence
from presenced.services.base import (
    CloseConnection,
    Module,
    ServerStream,
    Session,
    StreamSource,
    Unary,
)
from presenced.services.streams import BatchStream, MailboxStream
from presenced.v1 import presence_pb2 as pb

__all__ = [
    "BATCH_SIZE",
    "GET_ONLINE_FRIENDS",
    "MODULE",
    "MODULE_NAME",
    "POSITION_HEARTBEAT",
    "SUBSCRIBE",
    "decode_position_payload",
    "encode_heartbeat_outcome",
    "encode_presences",
]

MODULE_NAME = "PresenceService"
POSITION_HEARTBEAT = "PositionHeartbeat"
GET_ONLINE_FRIENDS = "GetOnlineFriends"
SUBSCRIBE = "SubscribeFriendshipPresenceUpdates"

# Users per stream item: keeps every message far below client receive
# buffers (Unity's is 100,000 bytes; one entry is at most ~200 bytes).
BATCH_SIZE = 100


# ------------------------------------------------------------------ codecs


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def presence_entry(presence: Presence) -> bytes:
    """`presence` as field 1 (`repeated UserPresence`) of a response, cached."""
    wire = presence.wire
    if wire is None:
        msg = pb.UserPresence(address=presence.address, last_seen_ms=presence.last_seen_ms)
        if presence.online:
            msg.status = pb.ONLINE
            pos = presence.position
            if pos is not None:
                msg.position.realm = pos.realm
                msg.position.x = pos.x
                msg.position.y = pos.y
        body = msg.SerializeToString()
        wire = presence.wire = b"\x0a" + _varint(len(body)) + body
    return wire


def encode_presences(batch: Iterable[Presence]) -> bytes:
    """An encoded `UsersResponse` or `SubscribeFriendshipPresenceUpdatesResponse`.

    Both messages are a single `repeated UserPresence` field number 1, so
    one encoding serves both.
    """
    return b"".join([presence_entry(p) for p in batch])


def decode_position_payload(payload: bytes) -> Position | None:
    """The position of a PositionHeartbeat request; raises DecodeError."""
    msg = pb.PositionPayload.FromString(payload)
    if not msg.HasField("position"):
        return None
    p = msg.position
    return Position(p.realm, p.x, p.y)


def encode_heartbeat_outcome(outcome: HeartbeatOutcome) -> bytes:
    response = pb.PositionResponse()
    if isinstance(outcome, Accepted):
        p = outcome.position
        response.position.realm = p.realm
        response.position.x = p.x
        response.position.y = p.y
    elif isinstance(outcome, TooManyRequests):
        response.too_many_requests.message = outcome.message
        response.too_many_requests.retry_after_ms = outcome.retry_after_ms
    elif isinstance(outcome, BadRequest):
        response.bad_request.message = outcome.message
    return response.SerializeToString()


_NO_POSITION = encode_heartbeat_outcome(BadRequest("position is required"))


# ---------------------------------------------------------------- handlers


def position_heartbeat(session: Session, payload: bytes) -> bytes:
    position = decode_position_payload(payload)
    if position is None:
        return _NO_POSITION
    outcome = session.engine.heartbeat(session.session_id, position, session.now_ms())
    if isinstance(outcome, Abusive):
        raise CloseConnection(Close.HEARTBEAT_FLOOD, outcome.message)
    return encode_heartbeat_outcome(outcome)


def _online_batches(engine: PresenceEngine, addresses: list[str]) -> Iterator[bytes]:
    # Snapshots are taken and encoded one message at a time, as the client acknowledges:
    # a request of a few bytes never makes the server build its whole answer at once. A friend
    # who went offline meanwhile is left out of the later messages.
    for start in range(0, len(addresses), BATCH_SIZE):
        batch = engine.presences(addresses[start : start + BATCH_SIZE])
        if batch:
            yield encode_presences(batch)


def get_online_friends(session: Session, payload: bytes) -> StreamSource:
    pb.Payload.FromString(payload)  # must parse, though it carries nothing we need
    engine = session.engine
    online = engine.online_friend_addresses(session.session_id)
    return BatchStream(_online_batches(engine, online))


def subscribe(session: Session, payload: bytes) -> StreamSource:
    pb.Payload.FromString(payload)
    engine = session.engine
    session_id = session.session_id
    # Ends this connection's previous subscription, if any (its mailbox closes).
    mailbox = engine.subscribe(session_id)
    return MailboxStream(
        mailbox,
        encode_presences,
        BATCH_SIZE,
        on_taken=session.record_delivery,
        on_cancel=lambda box: engine.unsubscribe(session_id, box),
    )


MODULE = Module(
    MODULE_NAME,
    (
        Unary(POSITION_HEARTBEAT, position_heartbeat),
        # One answer in progress at a time: a client has no use for two, and each holds a
        # list of online friends until the client has taken it.
        ServerStream(GET_ONLINE_FRIENDS, get_online_friends, max_live=1),
        ServerStream(SUBSCRIBE, subscribe),
    ),
)
