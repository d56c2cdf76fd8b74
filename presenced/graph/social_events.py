"""The social service's Redis messages: parsing what it announces, formatting what we publish.

Channels and formats (JSON strings), as `social-service-ea` publishes them:

- `friendship.updates`: `{"id", "from", "to", "action", "timestamp", "metadata"?}`.
  `accept` makes `from` and `to` friends; `delete` and `block` end the
  friendship; `request`, `cancel` and `reject` concern requests and change
  no friendship. `id` names the action, not the friendship: events apply by
  address pair. Unblocking publishes `delete` (the block had deactivated the
  friendship).
- `block.updates`: `{"blockerAddress", "blockedAddress", "isBlocked"}`.
- `friend.status.updates`: `{"address", "status"}`, status 0 = ONLINE,
  1 = OFFLINE (what presenced publishes with --publish-social-status).

An event is a *desired state* for one pair, never a delta: applying it
twice, or after the reconciliation already did, changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from presenced.model import normalize_address

FRIENDSHIP_CHANNEL = "friendship.updates"
BLOCK_CHANNEL = "block.updates"
STATUS_CHANNEL = "friend.status.updates"
CHANNELS = (FRIENDSHIP_CHANNEL, BLOCK_CHANNEL)

# A real message is ~250 bytes; anything far larger is not one of them and
# is refused before JSON parsing allocates for it.
MAX_MESSAGE_BYTES = 8192

# The social service's ConnectivityStatus values.
STATUS_ONLINE = 0
STATUS_OFFLINE = 1

# Actions of friendship.updates -> the friendship they leave (None: unchanged).
FRIENDSHIP_ACTIONS: dict[str, bool | None] = {
    "accept": True,
    "delete": False,
    "block": False,
    "request": None,
    "cancel": None,
    "reject": None,
}


class EventError(ValueError):
    """A message that is not what the social service publishes."""


@dataclass(frozen=True, slots=True)
class FriendshipWanted:
    """The pair (`a < b`) should be friends (`active`) or not."""

    a: str
    b: str
    active: bool


@dataclass(frozen=True, slots=True)
class BlockWanted:
    """`blocker` should block `blocked` (`active`) or not."""

    blocker: str
    blocked: str
    active: bool


Wanted = FriendshipWanted | BlockWanted


def parse_event(channel: str, data: bytes | str) -> Wanted | None:
    """The desired state a message announces; None if it changes no friendship.

    Raises EventError for anything malformed (the caller counts and logs it).
    """
    if channel == FRIENDSHIP_CHANNEL:
        return parse_friendship_update(data)
    if channel == BLOCK_CHANNEL:
        return parse_block_update(data)
    raise EventError(f"unexpected channel {channel!r}")


def parse_friendship_update(data: bytes | str) -> FriendshipWanted | None:
    body = _object(data)
    action = body.get("action")
    if not isinstance(action, str) or action not in FRIENDSHIP_ACTIONS:
        raise EventError(f"unknown action {action!r}")
    a = _address(body, "from")
    b = _address(body, "to")
    if a == b:
        raise EventError("a friendship needs two different addresses")
    active = FRIENDSHIP_ACTIONS[action]
    if active is None:
        return None
    return FriendshipWanted(a, b, active) if a < b else FriendshipWanted(b, a, active)


def parse_block_update(data: bytes | str) -> BlockWanted:
    body = _object(data)
    blocker = _address(body, "blockerAddress")
    blocked = _address(body, "blockedAddress")
    if blocker == blocked:
        raise EventError("a user cannot block themselves")
    is_blocked = body.get("isBlocked")
    if not isinstance(is_blocked, bool):
        raise EventError("isBlocked must be true or false")
    return BlockWanted(blocker, blocked, is_blocked)


def status_message(address: str, online: bool) -> str:
    """A friend.status.updates message; `status` is a JSON number, as the service sends."""
    return json.dumps({"address": address,
                       "status": STATUS_ONLINE if online else STATUS_OFFLINE},
                      separators=(",", ":"))


def _object(data: bytes | str) -> dict[str, object]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise EventError(f"message of {len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EventError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise EventError("not a JSON object")
    return body


def _address(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise EventError(f"{key} must be an address")
    try:
        return normalize_address(value)
    except ValueError:
        raise EventError(f"{key} is not an address: {value[:60]!r}") from None
