"""The social service's Redis messages: parsing and formatting (pure)."""

from __future__ import annotations

import json

import pytest

from presenced.graph.social_events import (
    BLOCK_CHANNEL,
    FRIENDSHIP_CHANNEL,
    MAX_MESSAGE_BYTES,
    BlockWanted,
    EventError,
    FriendshipWanted,
    parse_event,
    status_message,
)

A = "0x" + "a" * 40
B = "0x" + "b" * 40


def friendship(action: str, sender: str = B, to: str = A, **extra: object) -> str:
    return json.dumps({"id": "3f9c…", "from": sender, "to": to, "action": action,
                       "timestamp": 1764331000000, **extra})


@pytest.mark.parametrize(("action", "active"), [("accept", True), ("delete", False),
                                                ("block", False)])
def test_friendship_actions_give_the_pair_s_desired_state(action: str, active: bool):
    # Normalised: the pair comes out ordered and lower-case, whoever sent it.
    assert parse_event(FRIENDSHIP_CHANNEL, friendship(action, B.upper().replace("0X", "0x"))) \
        == FriendshipWanted(A, B, active)
    assert parse_event(FRIENDSHIP_CHANNEL, friendship(action, A, B).encode()) \
        == FriendshipWanted(A, B, active)


@pytest.mark.parametrize("action", ["request", "cancel", "reject"])
def test_request_actions_change_no_friendship(action: str):
    assert parse_event(FRIENDSHIP_CHANNEL, friendship(action, metadata={"message": "hi"})) is None


def test_block_updates():
    body = {"blockerAddress": A, "blockedAddress": B, "isBlocked": True}
    assert parse_event(BLOCK_CHANNEL, json.dumps(body)) == BlockWanted(A, B, True)
    body["isBlocked"] = False
    assert parse_event(BLOCK_CHANNEL, json.dumps(body)) == BlockWanted(A, B, False)


@pytest.mark.parametrize(("channel", "data", "message"), [
    (FRIENDSHIP_CHANNEL, "not json", "not JSON"),
    (FRIENDSHIP_CHANNEL, b"\xff\xfe", "not JSON"),
    (FRIENDSHIP_CHANNEL, "[1, 2]", "not a JSON object"),
    (FRIENDSHIP_CHANNEL, friendship("befriend"), "unknown action"),
    (FRIENDSHIP_CHANNEL, friendship("accept", "bob"), "from is not an address"),
    (FRIENDSHIP_CHANNEL, friendship("accept", A, None), "to must be an address"),
    (FRIENDSHIP_CHANNEL, friendship("accept", A, A), "two different addresses"),
    (FRIENDSHIP_CHANNEL, "x" * (MAX_MESSAGE_BYTES + 1), "bytes"),
    (BLOCK_CHANNEL, json.dumps({"blockerAddress": A, "blockedAddress": B}), "isBlocked"),
    (BLOCK_CHANNEL, json.dumps({"blockerAddress": A, "blockedAddress": B,
                                "isBlocked": "yes"}), "isBlocked"),
    (BLOCK_CHANNEL, json.dumps({"blockerAddress": A, "blockedAddress": A,
                                "isBlocked": True}), "themselves"),
    ("other.channel", "{}", "unexpected channel"),
])
def test_malformed_messages_are_refused_with_a_reason(channel, data, message):
    with pytest.raises(EventError, match=message):
        parse_event(channel, data)


def test_status_message_is_the_social_service_s_format():
    assert json.loads(status_message(A, True)) == {"address": A, "status": 0}
    assert json.loads(status_message(A, False)) == {"address": A, "status": 1}
    assert status_message(A, False) == '{"address":"' + A + '","status":1}'
