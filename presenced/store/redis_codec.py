"""The bytes the Redis store keeps and publishes (see docs/redis.md, "Encoding").

Two formats, both tight and both produced partly by Lua (which can only
concatenate strings and `struct.pack`), so they are plain binary rather than
protobuf:

- a *presence blob*, the value of a user in the state hash and the payload of
  a `P` entry: `<q last_seen_ms><B flags><i x><i y>` then the realm as UTF-8
  (flags bit 0: has a position). 17 bytes plus the realm.
- a *change message*, one per flush (or claim, or friendship batch):
  a text header `P1|<origin>|<epoch>|<seq>\\n`, then entries, each
  `<kind byte><H len>address<H len>payload`.

Entry kinds: `P` presence (payload: blob), `L` leave, `G` leave after which
nobody vouches (offline cluster-wide), `E` expired by a sweep, `F`/`f`
effective friendship added/removed (address < payload, the other address:
stored with no block either way), `K`/`k` block added/removed (address: the
blocker, payload: the blocked), `Z` fence (address: the fence token; only
read by the instance that published it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from sys import intern

from presenced.model import Position, Presence
from presenced.store.base import (
    BlockChanged,
    Expired,
    FriendshipChanged,
    RemoteLeave,
    RemotePresence,
    StoreEvent,
)

_BLOB = struct.Struct("<qBii")
_LEN = struct.Struct("<H")
_HAS_POSITION = 1

MAGIC = b"P1"


def encode_presence(presence: Presence) -> bytes:
    pos = presence.position
    if pos is None:
        return _BLOB.pack(presence.last_seen_ms, 0, 0, 0)
    return _BLOB.pack(presence.last_seen_ms, _HAS_POSITION, pos.x, pos.y) + pos.realm.encode()


def decode_presence(address: str, blob: bytes) -> Presence:
    last_seen_ms, flags, x, y = _BLOB.unpack_from(blob)
    if flags & _HAS_POSITION:
        position: Position | None = Position(blob[_BLOB.size:].decode(), x, y)
    else:
        position = None
    return Presence(address, True, position, last_seen_ms)


def entry(kind: bytes, address: str, payload: bytes = b"") -> bytes:
    """One entry, as the Lua scripts build them (used for fences and tests)."""
    a = address.encode()
    return kind + _LEN.pack(len(a)) + a + _LEN.pack(len(payload)) + payload


def header(origin: str, epoch: str, seq: int) -> bytes:
    return b"%s|%s|%s|%d\n" % (MAGIC, origin.encode(), epoch.encode(), seq)


@dataclass(slots=True)
class Message:
    """One decoded change message from another instance (or our own fence)."""

    origin: str
    epoch: str
    # 0 for unsequenced control messages (fences).
    seq: int
    events: list[StoreEvent] = field(default_factory=list)
    fence: str | None = None


class MessageError(ValueError):
    """A message on the change channel that is not ours to read."""


def decode_message(data: bytes, me: str) -> Message | None:
    """Decode a change message; None for our own changes (never echoed).

    Our own fences are returned: the auditor waits for them.
    """
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise MessageError("no header")
    parts = head.split(b"|")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise MessageError(f"unknown header {head[:40]!r}")
    origin = parts[1].decode()
    seq = int(parts[3])
    if origin == me and seq != 0:
        return None
    msg = Message(origin, parts[2].decode(), seq)
    events = msg.events
    unpack_len = _LEN.unpack_from
    i = 0
    end = len(body)
    while i < end:
        kind = body[i]
        (n,) = unpack_len(body, i + 1)
        address = intern(body[i + 3 : i + 3 + n].decode())
        i += 3 + n
        (m,) = unpack_len(body, i)
        payload = body[i + 2 : i + 2 + m]
        i += 2 + m
        if kind == 0x50:  # P
            events.append(RemotePresence(decode_presence(address, payload), origin))
        elif kind == 0x4C:  # L
            events.append(RemoteLeave(address, origin))
        elif kind == 0x47:  # G
            events.append(RemoteLeave(address, origin))
            events.append(Expired(address))
        elif kind == 0x45:  # E
            events.append(Expired(address))
        elif kind == 0x46:  # F
            events.append(FriendshipChanged(address, payload.decode(), True))
        elif kind == 0x66:  # f
            events.append(FriendshipChanged(address, payload.decode(), False))
        elif kind == 0x4B:  # K
            events.append(BlockChanged(address, intern(payload.decode()), True))
        elif kind == 0x6B:  # k
            events.append(BlockChanged(address, intern(payload.decode()), False))
        elif kind == 0x5A:  # Z
            msg.fence = address
        else:
            raise MessageError(f"unknown entry kind {kind:#x}")
    if i != end:
        raise MessageError("truncated entry")
    if origin == me and msg.fence is None:
        return None
    return msg
