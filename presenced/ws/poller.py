"""Many sockets' reads from one trio task: a level-triggered epoll set, served in batches.

A trio task per connection waiting in `wait_readable` costs, for every
inbound message, two `epoll_ctl` calls (trio registers a one-shot interest
and re-arms it on each wait) and a task switch. Here each socket is
registered once, level-triggered, in an epoll set of our own; trio watches
that set's descriptor like any other, and ONE task, woken when any socket
is ready, takes up to `batch` ready sockets from it and calls each one's
handler synchronously. Then it waits again, which is a checkpoint: other
tasks run between batches, so a flood on some sockets cannot starve the
rest of the program. A socket with more data than its handler read stays
ready (level-triggered) and is served again in the next batch.

Handlers run in the poller's task: they must not block, and must not
raise (a transport contains its own errors; an exception reaching here is a
bug, logged, and its socket is dropped from the set so that a socket that
stays ready cannot spin). A handler may add or remove sockets, its own
included. A socket removed during a batch is not called again in it; a
descriptor number closed and reused during a batch may get one spurious
call, which must be harmless (a `recv` that raises BlockingIOError).

Cancellation and shutdown (trio's rules): `run` only ever waits in
`wait_readable` on the epoll descriptor, so a cancel lands there, between
batches, never in the middle of a handler. When `run` ends, by
cancellation or otherwise, the epoll set is closed; registered sockets are
not touched (their owners close them), but no handler is called any more
and `add` refuses new ones. Sockets must be removed before they are closed:
the kernel forgets a closed descriptor only when every copy of it is.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio

__all__ = ["Poller", "current_poller"]

log = logging.getLogger("presenced.ws")

Handler = Callable[[], None]


class Poller:
    """One epoll set of sockets and the task that serves it (`run`)."""

    __slots__ = ("batch", "_epoll", "_handlers", "_closed")

    def __init__(self, batch: int = 1024) -> None:
        self.batch = batch
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._handlers)

    def add(self, fd: int, on_readable: Handler) -> None:
        """Call `on_readable()` whenever `fd` has something to read (or has ended)."""
        if self._closed:
            raise trio.ClosedResourceError("the poller has stopped")
        self._handlers[fd] = on_readable
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        """Stop watching `fd` (a no-op if it is not watched)."""
        if self._handlers.pop(fd, None) is not None and not self._closed:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed by its owner: the kernel dropped it

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve the set until cancelled (see the module docstring)."""
        epoll = self._epoll
        handlers = self._handlers
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, self.batch):
                    handler = handlers.get(fd)
                    if handler is None:
                        continue  # removed earlier in this batch
                    try:
                        handler()
                    except Exception:
                        log.exception("a socket's read handler failed; dropping the socket")
                        self.remove(fd)
        finally:
            self._closed = True
            self._handlers.clear()
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()


_CURRENT: trio.lowlevel.RunVar[Poller] = trio.lowlevel.RunVar("presenced_ws_poller")


def current_poller() -> Poller:
    """This trio run's shared poller, started on first use as a system task.

    For clients (the simulator): a system task lives as long as the run and
    is cancelled when the main task ends. A server runs its own `Poller` in
    its own nursery instead, so that shutdown is explicit.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        poller = Poller()
        _CURRENT.set(poller)
        trio.lowlevel.spawn_system_task(poller.run, name="presenced.ws.poller")
        return poller
