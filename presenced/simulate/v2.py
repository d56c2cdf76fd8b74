"""The SocialService v2 connectivity stream, as the simulator's v2 subscribers read it.

Today's explorers load the module `SocialService` (package
`decentraland.social_service.v2`) and open `SubscribeToFriendConnectivityUpdates`:
one `FriendConnectivityUpdate {1: FriendProfile friend {1: address, ...};
2: ConnectivityStatus status}` per stream item, where ONLINE is 0 (the
proto3 default, so absent on the wire), OFFLINE 1 and AWAY 2. Only the two
fields the simulator needs are read here, by hand, so the generator does not
depend on the vendored schema; unknown fields are skipped as protobuf says.
Each item becomes a `UserPresence` without a position, the shape the
worker's receipt matching already takes (v2 has no position).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from presenced.v1 import presence_pb2 as pb

SOCIAL_SERVICE = "SocialService"
SUBSCRIBE_CONNECTIVITY = "SubscribeToFriendConnectivityUpdates"
_OFFLINE = 1


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(data: bytes):  # noqa: ANN202 - a generator of (field, value)
    """(field number, int or bytes) for each field of a message; skips fixed ones."""
    i = 0
    n = len(data)
    while i < n:
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            yield field, value
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > n:
                raise DecodeError("truncated field")
            yield field, data[i:i + length]
            i += length
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise DecodeError(f"unsupported wire type {wire}")
    if i != n:
        raise DecodeError("truncated message")


def decode_connectivity_update(payload: bytes) -> list[pb.UserPresence]:
    """One stream item of SubscribeToFriendConnectivityUpdates; raises DecodeError."""
    address = ""
    status = 0
    for field, value in _fields(payload):
        if field == 1 and isinstance(value, bytes):
            for inner, text in _fields(value):
                if inner == 1 and isinstance(text, bytes):
                    address = text.decode()
        elif field == 2 and isinstance(value, int):
            status = value
    # AWAY is still online: only OFFLINE takes a friend away.
    online = pb.OFFLINE if status == _OFFLINE else pb.ONLINE
    return [pb.UserPresence(address=address, status=online)]
