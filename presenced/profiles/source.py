"""The profile source: names and pictures from a Catalyst lambdas server, cached.

`lookup` answers at once from the cache (the fan-out path calls it and must never wait); the
background task `run` sends the batches the cache (`presenced.profiles.cache`) says are due,
at most `max_in_flight` at a time, with httpx. `lookup_many` is for unary answers that may
afford to wait a little (a friends list): it waits at most `wait_s` for the misses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import aclosing

import httpx
import trio

from presenced.profiles.cache import CacheConfig, Profile, ProfileCache
from presenced.profiles.catalyst import ProfileFormatError, parse_profiles, request_body

__all__ = ["ProfileSource", "ProfileSourceStats"]

log = logging.getLogger("presenced.profiles")

# An answer for one batch is a few hundred bytes per profile; anything much larger is not a
# profile list, and is not read to the end.
MAX_RESPONSE_BYTES_PER_ID = 16_384


def _wall_ms() -> int:
    return int(time.time() * 1000)


class _ResponseTooLarge(Exception):
    pass


class ProfileSourceStats:
    __slots__ = ("requests", "answered", "failures")

    def __init__(self) -> None:
        self.requests = 0
        self.answered = 0
        self.failures = 0


class ProfileSource:
    def __init__(
        self,
        base_url: str,
        config: CacheConfig | None = None,
        *,
        timeout_s: float = 5.0,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.url = base_url.rstrip("/") + "/profiles"
        self.cache = ProfileCache(config)
        self.stats = ProfileSourceStats()
        self._timeout_s = timeout_s
        self._now_ms = clock_ms
        self._wake = trio.Event()
        # Set (and replaced) each time a request ends, for `lookup_many`.
        self._settled = trio.Event()

    # ---------------------------------------------------------------- lookups

    def lookup(self, address: str) -> Profile | None:
        """The cached profile of `address`, or None; never waits (a miss is fetched later)."""
        cache = self.cache
        waiting = cache.waiting
        profile = cache.get(address, self._now_ms())
        if cache.waiting != waiting:
            self._wake.set()
        return profile

    async def lookup_many(self, addresses: Iterable[str], wait_s: float) -> dict[str, Profile]:
        """The profiles of `addresses`, waiting at most `wait_s` for those not cached."""
        wanted = list(addresses)
        found: dict[str, Profile] = {}
        missing: list[str] = []
        for address in wanted:
            profile = self.lookup(address)
            if profile is not None:
                found[address] = profile
            if not self.cache.known(address, self._now_ms()):
                missing.append(address)
        with trio.move_on_after(wait_s):
            while missing:
                missing = [a for a in missing if self.cache.pending(a)]
                if missing:
                    await self._settled.wait()
        for address in wanted:
            if address not in found:
                profile = self.cache.peek(address)
                if profile is not None:
                    found[address] = profile
        return found

    # ------------------------------------------------------------------- I/O

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch what the cache asks for, until cancelled."""
        cache = self.cache
        timeout = httpx.Timeout(self._timeout_s)
        async with (
            httpx.AsyncClient(timeout=timeout, trust_env=False) as client,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            while True:
                now = self._now_ms()
                batch = cache.next_batch(now)
                if batch is not None:
                    nursery.start_soon(self._fetch, client, batch)
                    continue
                due = cache.due_ms()
                self._wake = trio.Event()
                if due is None or cache.batches_in_flight >= cache.config.max_in_flight:
                    await self._wake.wait()
                else:
                    with trio.move_on_after(max(0, due - now) / 1000):
                        await self._wake.wait()

    async def _fetch(self, client: httpx.AsyncClient, batch: list[str]) -> None:
        self.stats.requests += 1
        try:
            body = await self._post(client, batch)
            profiles = parse_profiles(body, batch)
        except (httpx.HTTPError, ProfileFormatError, _ResponseTooLarge) as e:
            self.stats.failures += 1
            log.warning("profile request for %d users failed: %s", len(batch), e or type(e))
            self.cache.failed(batch, self._now_ms())
        else:
            self.stats.answered += 1
            self.cache.answered(batch, profiles, self._now_ms())
        finally:
            self._wake.set()
            self._settled.set()
            self._settled = trio.Event()

    async def _post(self, client: httpx.AsyncClient, batch: list[str]) -> bytes:
        limit = MAX_RESPONSE_BYTES_PER_ID * len(batch)
        async with client.stream(
            "POST", self.url, content=request_body(batch),
            headers={"content-type": "application/json"},
        ) as response:
            if response.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"HTTP {response.status_code}", request=response.request, response=response
                )
            # Refused before reading when announced (the usual case): a body abandoned half
            # read leaves httpx's inner generators to the garbage collector.
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise _ResponseTooLarge(f"answer of {length} bytes, more than {limit}")
            chunks: list[bytes] = []
            size = 0
            async with aclosing(response.aiter_bytes()) as body:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        raise _ResponseTooLarge(f"answer larger than {limit} bytes")
                    chunks.append(chunk)
        return b"".join(chunks)
