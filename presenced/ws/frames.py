"""The common cases of WebSocket frames, read and written without wsproto (no I/O).

Nearly every frame presenced exchanges is one small, complete binary message:
a heartbeat request or a stream ACK from a client, a response or a stream
item from the server. wsproto reads each through a generic frame parser, a
message decoder and event objects: about a fifth of the server's CPU per
delivered update when it read them all. `InboundFrames` takes those frames
out of the byte stream itself and leaves everything else to wsproto:

- a complete, final (FIN) binary frame without RSV bits, masked as the
  peer's role requires (a client masks, a server does not), no longer than
  `max_message_bytes` and not inside a fragmented message, is (unmasked
  and) returned as a message;
- any other frame (text, control frames such as ping, pong and close,
  fragments, frames masked the wrong way or with RSV bits, oversized frames)
  and everything after it in the same chunk is passed through, byte for
  byte, for wsproto to read, so that it produces exactly the events and
  errors it would have produced alone.

The splitter knows when wsproto is between messages without looking inside
it: it tracks exactly what it passed through (the rest of a frame wsproto has
begun, and whether wsproto is inside a fragmented message), and it only reads
a frame itself at such a boundary. A splitter in front of a wsproto
connection from its first byte (`synced()` at once, as `codec.Codec` does)
is therefore always in sync. One started later (presenced/server's
ws_receiver, which takes over from trio-websocket mid-stream) passes
everything through until its owner has seen wsproto empty and calls
`synced()`.

Messages returned by one `feed` come before its pass-through bytes in the
stream, so handling the messages first and then giving the bytes to wsproto
keeps the order. wsproto only ever receives whole frames (or the rest of a
frame it has begun, for frames too large to hold back), so its buffer is at
a frame boundary whenever the splitter reads a frame itself.
"""

from __future__ import annotations

_FIN = 0x80
_RSV = 0x70
_OPCODE = 0x0F
_MASKED = 0x80
_OP_CONTINUATION = 0x0
_OP_BINARY = 0x2
_OP_CONTROL = 0x8  # opcodes from 0x8 up are control frames
_FIN_BINARY = _FIN | _OP_BINARY

_SHORT_BINARY_HEADS = [bytes((_FIN_BINARY, n)) for n in range(126)]
# A client's frames: FIN, the opcode, the mask bit and the short length.
_SHORT_MASKED_HEADS = {op: [bytes((_FIN | op, _MASKED | n)) for n in range(126)]
                       for op in range(16)}

# Per 4-byte word count k: the masking key repeated k times, as one int.
_REPEAT = [sum(1 << (32 * i) for i in range(k)) for k in range(32)]
_SMALL = 4 * (len(_REPEAT) - 1)


def unmask(key: int, payload: bytes) -> bytes:
    """`payload` XOR the 4-byte masking key `key` (big-endian int), repeated.

    Masking and unmasking are the same operation.
    """
    n = len(payload)
    if not n:
        return b""
    if n <= _SMALL:
        k = (n + 3) >> 2
        mask = (key * _REPEAT[k]) >> ((k * 4 - n) * 8)
    else:
        mask = int.from_bytes((key.to_bytes(4, "big") * ((n + 3) >> 2))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class InboundFrames:
    """Splits one connection's inbound bytes into messages and bytes for wsproto.

    `masked`: the peer masks its frames (it is a client; we are the server).
    """

    __slots__ = ("max_message_bytes", "in_sync", "_mask_bit", "_held", "_through",
                 "_fragmented")

    def __init__(self, max_message_bytes: int, *, masked: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self.in_sync = False
        self._mask_bit = _MASKED if masked else 0
        # The start of a frame not yet complete (or whose header is not): kept
        # back until it is, which is safe because whatever went to wsproto
        # before it ended at a frame boundary.
        self._held = b""
        # Bytes still to pass through of a frame wsproto has begun.
        self._through = 0
        # wsproto is inside a fragmented message (until a final continuation).
        self._fragmented = False

    @property
    def between_messages(self) -> bool:
        """wsproto holds no part of a frame and is not inside a fragmented message.

        True from the start and whenever the splitter may read a frame itself.
        """
        return not self._through and not self._fragmented

    def release(self) -> bytes:
        """Stop reading frames; returns the bytes held back, which wsproto must have first."""
        self.in_sync = False
        held, self._held = self._held, b""
        return held

    def synced(self) -> None:
        """wsproto has consumed everything so far and is between messages."""
        self.in_sync = True

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """(messages read here, bytes for wsproto after them)."""
        if not self.in_sync:
            return [], data
        end = len(data)
        if not self._held and not self._through and not self._fragmented and end > 1:
            # The common case: the chunk is exactly one short binary frame.
            b1 = data[1]
            n = b1 & 0x7F
            if data[0] == _FIN_BINARY and b1 & _MASKED == self._mask_bit and n < 126:
                if self._mask_bit:
                    if end == n + 6 and n <= self.max_message_bytes:
                        return [unmask(int.from_bytes(data[2:6], "big"), data[6:])], b""
                elif end == n + 2 and n <= self.max_message_bytes:
                    return [data[2:]], b""
        messages: list[bytes] = []
        out: list[bytes] = []
        if self._held:
            data = self._held + data
            end = len(data)
            self._held = b""
        mask_bit = self._mask_bit
        pos = 0
        while pos < end:
            if self._through:
                take = min(self._through, end - pos)
                out.append(data[pos : pos + take])
                self._through -= take
                pos += take
                continue
            if end - pos < 2:
                self._held = data[pos:]
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            n = b1 & 0x7F
            head = 2
            # RFC 6455 5.2: a length takes the fewest bytes that hold it; wsproto refuses a
            # frame whose length does not (1002), so such frames are left to it.
            minimal = True
            if n == 126:
                if end - pos < 4:
                    self._held = data[pos:]
                    break
                n = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
                minimal = n >= 126
            elif n == 127:
                if end - pos < 10:
                    self._held = data[pos:]
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
                minimal = 65536 <= n < 1 << 63
            masked = b1 & _MASKED
            if masked:
                head += 4
            size = head + n
            opcode = b0 & _OPCODE
            fast = (
                not out
                and not self._fragmented
                and b0 & (_FIN | _RSV | _OPCODE) == _FIN_BINARY
                and masked == mask_bit
                and minimal
                and n <= self.max_message_bytes
            )
            if fast:
                if end - pos < size:
                    self._held = data[pos:]
                    break
                if masked:
                    key = int.from_bytes(data[pos + head - 4 : pos + head], "big")
                    messages.append(unmask(key, data[pos + head : pos + size]))
                else:
                    messages.append(data[pos + head : pos + size])
                pos += size
                continue
            # wsproto's frame: track fragmentation as it will see it.
            if opcode < _OP_CONTROL:
                if b0 & _FIN:
                    if opcode == _OP_CONTINUATION:
                        self._fragmented = False
                elif opcode != _OP_CONTINUATION:
                    self._fragmented = True
            take = min(size, end - pos)
            out.append(data[pos : pos + take])
            self._through = size - take
            pos += take
        return messages, b"".join(out)


def binary_frame(payload: bytes) -> bytes:
    """A server's binary message as one frame: final, unmasked, no RSV bits.

    What wsproto writes for it when no extension was negotiated; wsproto
    keeps no state for complete outbound messages, so frames from here and
    from wsproto may be mixed on one connection.
    """
    n = len(payload)
    if n < 126:
        return _SHORT_BINARY_HEADS[n] + payload
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big") + payload
    return b"\x82\x7f" + n.to_bytes(8, "big") + payload


def masked_frame(opcode: int, payload: bytes, key: int) -> bytes:
    """A client's frame (final, no RSV bits), masked with the 4-byte `key`."""
    n = len(payload)
    if n < 126:
        head = _SHORT_MASKED_HEADS[opcode][n]
    elif n < 65536:
        head = bytes((_FIN | opcode, _MASKED | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((_FIN | opcode, _MASKED | 127)) + n.to_bytes(8, "big")
    return head + key.to_bytes(4, "big") + unmask(key, payload)
