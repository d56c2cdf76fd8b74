"""The presence engine: pure presence logic with an injected clock."""

from presenced.engine.engine import (
    Abusive,
    Accepted,
    BadRequest,
    EngineConfig,
    EngineStats,
    HeartbeatOutcome,
    PresenceEngine,
    TooManyRequests,
)
from presenced.engine.mailbox import FriendshipFeed, Mailbox, TransitionMailbox

__all__ = [
    "Abusive",
    "Accepted",
    "BadRequest",
    "EngineConfig",
    "EngineStats",
    "FriendshipFeed",
    "HeartbeatOutcome",
    "Mailbox",
    "PresenceEngine",
    "TooManyRequests",
    "TransitionMailbox",
]
