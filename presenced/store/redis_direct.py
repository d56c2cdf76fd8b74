"""One connection to Redis driven from the trio thread, for the flusher's pipeline alone.

Every other Redis call of the store runs redis-py in a worker thread. For the flush, which
runs up to 100 times a second, the hop to that thread and back costs more CPU than the
flush's own work (`bench/thread_handoff.py`: 300 µs of a 800 µs flush on this machine). This
connection sends the same pipeline from the trio thread: commands packed by hiredis, bytes
through a trio socket, replies parsed by `hiredis.Reader` (both hiredis's public API, as
redis-py itself uses them).

Only plain TCP URLs (`redis://host:port/db`, with or without a password) are served this
way; `for_pool` returns None for TLS and Unix sockets, and the store keeps its thread path.
Failures are raised as redis-py's exceptions (`ConnectionError`, `TimeoutError`,
`ResponseError`), so the store's health handling sees one kind of error whatever the path;
after any failure or cancellation the connection is dropped and the next call opens a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
import trio

__all__ = ["DirectConnection"]

_RECEIVE_BYTES = 65536


class DirectConnection:
    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, client_name: str | None = None,
                 timeout_s: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.db = db
        self._username = username
        self._password = password
        self._client_name = client_name
        self.timeout_s = timeout_s
        self._stream: trio.SocketStream | None = None
        self._reader = hiredis.Reader()

    @classmethod
    def for_pool(cls, pool: redis.ConnectionPool, timeout_s: float) -> DirectConnection | None:
        """A direct connection with the pool's settings, or None if the pool's transport is
        not plain TCP (TLS, a Unix socket: those stay on redis-py)."""
        if pool.connection_class is not redis.connection.Connection:
            return None
        kwargs = pool.connection_kwargs
        return cls(str(kwargs.get("host") or "localhost"), int(kwargs.get("port") or 6379),
                   db=int(kwargs.get("db") or 0), username=kwargs.get("username"),
                   password=kwargs.get("password"), client_name=kwargs.get("client_name"),
                   timeout_s=timeout_s)

    async def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` at once and return their replies in order. A command refused by
        Redis is a `redis.ResponseError` in the list (as redis-py's `raise_on_error=False`);
        a broken or slow connection raises."""
        try:
            with trio.fail_after(self.timeout_s):
                if self._stream is None:
                    await self._connect()
                replies = await self._exchange(commands)
        except trio.TooSlowError:
            self.close()
            raise redis.TimeoutError(f"Redis did not answer within {self.timeout_s:g} s") \
                from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.close()
            raise redis.ConnectionError(f"Redis connection lost: {e}") from e
        except BaseException:
            # Cancelled (or a bug) halfway through an exchange: its replies would be read
            # as the next call's.
            self.close()
            raise
        return [_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    def close(self) -> None:
        stream, self._stream = self._stream, None
        self._reader = hiredis.Reader()
        if stream is not None:
            # The socket's close, without the async part of a graceful close: nothing is
            # owed to Redis.
            stream.socket.close()

    async def _connect(self) -> None:
        self._stream = await trio.open_tcp_stream(self.host, self.port)
        setup: list[tuple[Any, ...]] = []
        if self._password is not None:
            setup.append(("AUTH", self._username, self._password) if self._username
                         else ("AUTH", self._password))
        if self._client_name:
            setup.append(("CLIENT", "SETNAME", self._client_name))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            for reply in await self._exchange(setup):
                if isinstance(reply, hiredis.ReplyError):
                    self.close()
                    raise _error(reply)

    async def _exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        stream = self._stream
        assert stream is not None
        await stream.send_all(b"".join(map(hiredis.pack_command, commands)))
        reader = self._reader
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    raise trio.BrokenResourceError("Redis closed the connection")
                reader.feed(data)
                continue
            replies.append(reply)
        return replies


def _error(reply: hiredis.ReplyError) -> redis.RedisError:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(text)
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return redis.AuthenticationError(text)
    return redis.ResponseError(text)
