"""The `PresenceService` module: its wire declaration and message encoding.

Stream items are built by joining per-user encodings cached on each
`Presence` snapshot, so an update that reaches many friends is serialized
once, not once per recipient.
"""

from __future__ import annotations

from collections.abc import Iterable

from presenced.engine import Accepted, BadRequest, HeartbeatOutcome, TooManyRequests
from presenced.model import Position, Presence
from presenced.rpc.modules import ModuleSpec, ProcedureSpec
from presenced.v1 import presence_pb2 as pb

MODULE_NAME = "PresenceService"
POSITION_HEARTBEAT = "PositionHeartbeat"
GET_ONLINE_FRIENDS = "GetOnlineFriends"
SUBSCRIBE = "SubscribeFriendshipPresenceUpdates"

PRESENCE_MODULE = ModuleSpec(
    MODULE_NAME,
    (
        ProcedureSpec(POSITION_HEARTBEAT, server_streaming=False),
        ProcedureSpec(GET_ONLINE_FRIENDS, server_streaming=True),
        ProcedureSpec(SUBSCRIBE, server_streaming=True),
    ),
)

# Users per stream item: keeps every message far below client receive
# buffers (Unity's is 100,000 bytes; one entry is at most ~200 bytes).
BATCH_SIZE = 100


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


def decode_payload(payload: bytes) -> None:
    """Check that a `Payload` request parses; raises DecodeError."""
    pb.Payload.FromString(payload)


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


def encode_bad_request(message: str) -> bytes:
    response = pb.PositionResponse()
    response.bad_request.message = message
    return response.SerializeToString()
