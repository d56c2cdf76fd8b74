"""How many connections wait in a listening socket's accept queue (Linux `TCP_INFO`).

When the accept loop pauses at an admission cap, or cannot keep up with a burst, clients
queue in the kernel; past the queue's limit their handshakes are dropped and they retry after
TCP's SYN back-off (1, 3, 7 s). Only the kernel knows that queue: for a listening socket,
`struct tcp_info`'s `tcpi_unacked` is the queue's length and `tcpi_sacked` its limit.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["accept_queue"]

# struct tcp_info: eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
_FIELDS = struct.Struct("=8x4xIIIII")
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def accept_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting to be accepted, the queue's limit), or None where unknown."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:
        return None
    if len(raw) < _FIELDS.size:
        return None
    _ato, _snd_mss, _rcv_mss, unacked, sacked = _FIELDS.unpack_from(raw)
    return unacked, sacked
