"""Why presenced closes a WebSocket: one table of close codes, reasons and metric labels.

Every place that ends a connection names a member of `Close`; the code sent to the client, the
reason text it reads and the label under which the disconnect is counted all come from here
(after wsproto's `CloseReason`). Several members share a code: the client only needs the code
(1008 "policy", 1011 "server side"), while the operator needs to tell the causes apart.

It sits at the bottom of the layers, beside `presenced.model`, so the protocol core, the
WebSocket layer and the server can all name the same closes.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Close", "close_reason"]

# A close frame's payload is at most 125 bytes: 2 for the code, 123 for the reason (RFC 6455).
MAX_REASON_BYTES = 123


class Close(Enum):
    """A cause of a closed connection: `code` on the wire, `reason` text, metric `label`."""

    code: int
    reason: str
    label: str

    def __new__(cls, code: int, reason: str, label: str) -> Close:
        member = object.__new__(cls)
        member._value_ = (code, reason, label)
        member.code = code
        member.reason = reason
        member.label = label
        return member

    # The client closed, or vanished (never sent by us; the metric label of such ends).
    CLIENT = (1000, "", "client")
    SHUTDOWN = (1001, "server shutting down", "shutdown")
    PROTOCOL_ERROR = (1002, "protocol error", "protocol-error")
    # A client too slow to read what it asked for.
    SLOW_CONSUMER = (1008, "slow consumer: send queue full", "slow-consumer")
    STUCK_STREAM = (1008, "slow consumer: stream not acknowledged", "slow-consumer")
    # A client sending far more than any real client does.
    FLOOD = (1008, "too many messages", "flood")
    HEARTBEAT_FLOOD = (1008, "too many heartbeats", "heartbeat-flood")
    # Inbound messages larger than the limit.
    MESSAGE_TOO_BIG = (1009, "message too big", "oversized")
    INTERNAL_ERROR = (1011, "internal error", "error")
    PING_TIMEOUT = (1011, "keepalive timeout", "ping-timeout")
    EXPIRED = (1011, "presence expired: no sign of life", "expired")
    # The server is full, or the store cannot be reached: the client should retry.
    FULL = (1013, "Unable to acquire connection", "full")
    STORE_UNAVAILABLE = (1013, "store unavailable, try again", "store")
    # Same codes and texts as Decentraland's social service.
    UNAUTHORIZED = (3003, "Unauthorized", "auth")
    AUTH_TIMEOUT = (3004, "Authorization timeout", "auth")

    def text(self, detail: str | None = None) -> str:
        """The reason sent to the client, with `detail` appended, cut to fit a close frame."""
        text = f"{self.reason}: {detail}" if detail else self.reason
        return close_reason(text)


def close_reason(text: str) -> str:
    """`text` cut to the 123 bytes of UTF-8 a close frame's reason may hold."""
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
