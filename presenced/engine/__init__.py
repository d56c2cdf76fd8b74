"""The presence engine: pure presence logic with an injected clock."""

from presenced.engine.engine import (
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
