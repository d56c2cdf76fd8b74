"""Ready-made stream sources (see `StreamSource` in presenced.services.base).

- `BatchStream`: a fixed answer delivered item by item (GetOnlineFriends). The items come from
  an iterator that is advanced only when the client may take the next one, so a large answer is
  encoded one message at a time, as the client acknowledges, never all at once.
- `MailboxStream`: a subscription. The engine puts presence changes into a `Mailbox`, coalesced
  per friend; the stream takes a batch and encodes it when the client may receive.
- `OpenStream`: a stream the client expects to stay open although we never send on it; the
  newest one per connection and procedure wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from presenced.engine import Mailbox
from presenced.model import Presence
from presenced.services.base import Session

__all__ = ["BatchStream", "MailboxStream", "OpenStream"]


class BatchStream:
    """Items from `items`, one per acknowledgement; finished after the last."""

    __slots__ = ("_items", "_next", "finished")

    def __init__(self, items: Iterable[bytes]) -> None:
        self._items: Iterator[bytes] = iter(items)
        # One item ahead, so that `has_pending` is exact.
        self._next: bytes | None = next(self._items, None)
        self.finished = False

    def next_item(self) -> bytes | None:
        item = self._next
        if item is None:
            self.finished = True
            return None
        self._next = next(self._items, None)
        return item

    def has_pending(self) -> bool:
        return self._next is not None

    def bind(self, wake: Callable[[], None]) -> None:
        # Everything is known up front: the server pumps on acknowledgements only.
        pass

    def cancel(self) -> int:
        # Snapshots of who is online, not updates: nothing counts as dropped.
        self._items = iter(())
        self._next = None
        return 0


class MailboxStream:
    """A subscription: coalesced presence changes from an engine `Mailbox`.

    `encode` turns a batch of at most `batch_size` presences into one stream item; `on_taken`
    sees each batch as it leaves (for the delivery metrics). The stream finishes when the
    mailbox closes (the subscription was replaced), dropping what was still pending.
    """

    __slots__ = ("mailbox", "_encode", "_on_taken", "_batch_size", "_on_cancel")

    def __init__(
        self,
        mailbox: Mailbox,
        encode: Callable[[Sequence[Presence]], bytes],
        batch_size: int,
        on_taken: Callable[[Sequence[Presence]], None],
        on_cancel: Callable[[Mailbox], None],
    ) -> None:
        self.mailbox = mailbox
        self._encode = encode
        self._batch_size = batch_size
        self._on_taken = on_taken
        self._on_cancel = on_cancel

    @property
    def finished(self) -> bool:
        return self.mailbox.closed

    def next_item(self) -> bytes | None:
        mailbox = self.mailbox
        if not mailbox.pending or mailbox.closed:
            return None
        batch = mailbox.take(self._batch_size)
        self._on_taken(batch)
        return self._encode(batch)

    def has_pending(self) -> bool:
        return bool(self.mailbox.pending) and not self.mailbox.closed

    def bind(self, wake: Callable[[], None]) -> None:
        self.mailbox.on_ready = wake

    def cancel(self) -> int:
        mailbox = self.mailbox
        mailbox.on_ready = None
        if mailbox.closed:
            # Replaced by a newer subscription, whose snapshot covers what was pending.
            return 0
        dropped = len(mailbox.pending)
        self._on_cancel(mailbox)
        return dropped


class OpenStream:
    """A stream the client expects to stay open: sends nothing until cancelled or replaced.

    Like the subscriptions, one per (connection, procedure): a client that subscribes again
    (Godot once did every 30 s) ends its older stream normally instead of piling them up.
    Subclasses send something now and then (`social_v2.BlockStream`).
    """

    __slots__ = ("finished", "_key", "_wake")

    # (session, procedure) -> the live stream; an entry leaves when its stream ends.
    live: dict[tuple[Session, str], OpenStream] = {}

    def __init__(self, session: Session, procedure: str) -> None:
        self.finished = False
        self._key = (session, procedure)
        self._wake: Callable[[], None] | None = None
        older = self.live.get(self._key)
        if older is not None:
            older._replace()
        self.live[self._key] = self

    def _replace(self) -> None:
        self.finished = True
        if self._wake is not None:
            self._wake()

    def next_item(self) -> bytes | None:
        return None

    def has_pending(self) -> bool:
        return False

    def bind(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def cancel(self) -> int:
        self._wake = None
        if self.live.get(self._key) is self:
            del self.live[self._key]
        return 0
