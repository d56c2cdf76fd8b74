"""The profile source: the cache's decisions with a fake clock, then the HTTP client against a
real HTTP server on loopback speaking the Catalyst lambdas format."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from presenced.profiles import CacheConfig, Profile, ProfileCache, ProfileSource
from presenced.profiles.catalyst import (
    MAX_NAME_CHARS,
    ProfileFormatError,
    parse_profiles,
    request_body,
)
from tests.support.profile_server import ProfileServer, catalyst_profile
from tests.support.waits import wait_until


def addr(i: int) -> str:
    return "0x" + f"{i:040x}"


A, B, C = addr(1), addr(2), addr(3)
T0 = 1_700_000_000_000


# ------------------------------------------------------------------- the cache


def test_misses_leave_as_one_batch_after_the_linger():
    cache = ProfileCache(CacheConfig(linger_ms=20, batch_size=10))
    assert cache.get(A, T0) is None
    assert cache.get(B, T0 + 5) is None
    assert cache.get(A, T0 + 6) is None  # already waiting: not queued twice
    assert cache.due_ms() == T0 + 20
    assert cache.next_batch(T0 + 19) is None
    assert cache.next_batch(T0 + 20) == [A, B]
    assert cache.waiting == 0
    assert cache.get(A, T0 + 21) is None  # in flight: not queued again
    assert cache.waiting == 0


def test_a_full_batch_leaves_at_once_and_the_rest_waits():
    cache = ProfileCache(CacheConfig(linger_ms=1000, batch_size=2))
    for i in range(5):
        cache.get(addr(i), T0)
    assert cache.next_batch(T0) == [addr(0), addr(1)]
    assert cache.next_batch(T0) == [addr(2), addr(3)]
    assert cache.next_batch(T0) is None  # one left: it lingers
    assert cache.next_batch(T0 + 1000) == [addr(4)]


def test_batches_in_flight_are_bounded():
    cache = ProfileCache(CacheConfig(batch_size=1, max_in_flight=2, linger_ms=0))
    for i in range(4):
        cache.get(addr(i), T0)
    assert cache.next_batch(T0) == [addr(0)]
    assert cache.next_batch(T0) == [addr(1)]
    assert cache.next_batch(T0) is None
    cache.answered([addr(0)], {}, T0)
    assert cache.next_batch(T0) == [addr(2)]


def test_answers_are_cached_for_the_ttl_then_served_stale_while_refetched():
    cache = ProfileCache(CacheConfig(ttl_ms=1000, linger_ms=0))
    cache.get(A, T0)
    cache.get(B, T0)
    batch = cache.next_batch(T0)
    profile = Profile(A, "alice", True, "https://x/a.png")
    cache.answered(batch, {A: profile}, T0)
    assert cache.get(A, T0 + 999) == profile
    assert cache.get(B, T0 + 999) is None  # known to have no profile: not asked again
    assert cache.known(B, T0 + 999) and cache.waiting == 0
    assert cache.get(A, T0 + 1000) == profile  # stale, still served
    assert cache.next_batch(T0 + 1000) == [A]
    assert (cache.hits, cache.misses) == (3, 2)


def test_cached_entries_are_bounded_least_recently_used_first():
    cache = ProfileCache(CacheConfig(max_entries=2, linger_ms=0))
    for a in (A, B):
        cache.get(a, T0)
    cache.answered(cache.next_batch(T0), {A: Profile(A, "a"), B: Profile(B, "b")}, T0)
    cache.get(A, T0)  # A is now the most recent
    cache.get(C, T0)
    cache.answered(cache.next_batch(T0), {C: Profile(C, "c")}, T0)
    assert len(cache) == 2
    assert cache.peek(A) == Profile(A, "a") and cache.peek(B) is None


def test_waiting_addresses_are_bounded():
    cache = ProfileCache(CacheConfig(max_waiting=3))
    for i in range(5):
        cache.get(addr(i), T0)
    assert cache.waiting == 3 and cache.not_queued == 2


def test_a_failed_batch_is_held_back_then_asked_again():
    cache = ProfileCache(CacheConfig(retry_ms=5000, linger_ms=0))
    cache.get(A, T0)
    batch = cache.next_batch(T0)
    cache.failed(batch, T0)
    assert cache.batches_in_flight == 0
    assert cache.get(A, T0 + 4999) is None and cache.waiting == 0
    assert not cache.pending(A)
    cache.get(A, T0 + 5000)
    assert cache.next_batch(T0 + 5000) == [A]


# --------------------------------------------------------------- the format


def test_parse_profiles_reads_the_catalyst_format_and_skips_the_rest():
    body = json.dumps([
        catalyst_profile(A.upper().replace("0X", "0x"), "alice"),
        {"avatars": [{"userId": B, "name": "b" * 500, "hasClaimedName": "yes",
                      "avatar": {"snapshots": None}}]},
        {"avatars": []},
        "nonsense",
        {"avatars": [{"name": "no address"}]},
        catalyst_profile(C, "not asked for"),
    ]).encode()
    found = parse_profiles(body, [A, B])
    assert found[A] == Profile(A, "alice", True, f"https://profile-images.example/{A}/face.png")
    assert found[B] == Profile(B, "b" * MAX_NAME_CHARS, False, "")
    assert set(found) == {A, B}
    assert json.loads(request_body([A, B])) == {"ids": [A, B]}


@pytest.mark.parametrize("body", [b"<html>", b'{"avatars": []}', b"\xff\xfe"])
def test_parse_profiles_refuses_what_is_not_a_list(body):
    with pytest.raises(ProfileFormatError):
        parse_profiles(body, [A])


# ----------------------------------------------------- against a real server


@pytest.fixture
def catalyst():
    with ProfileServer({A: "alice", B: "bob#1234"}) as server:
        yield server


async def start(nursery, catalyst, **config) -> ProfileSource:
    source = ProfileSource(catalyst.base_url, CacheConfig(**{"linger_ms": 5, **config}))
    await nursery.start(source.run)
    return source


async def until(predicate) -> None:
    # The server runs in a thread: wait for what it reports, with a deadline, never a guess.
    await wait_until(predicate, timeout=10)


async def test_a_burst_of_misses_is_one_request_and_then_served_from_the_cache(
        nursery, catalyst):
    source = await start(nursery, catalyst)
    assert [source.lookup(a) for a in (A, B, C)] == [None, None, None]
    await until(lambda: source.cache.known(C, source._now_ms()))
    assert catalyst.requests == [[A, B, C]]
    alice = source.lookup(A)
    assert alice is not None and alice.name == "alice" and alice.has_claimed_name
    assert alice.picture_url.endswith("/face.png")
    assert source.lookup(B).name == "bob#1234" and not source.lookup(B).has_claimed_name
    assert source.lookup(C) is None
    await wait_all_tasks_blocked()
    assert len(catalyst.requests) == 1


async def test_lookup_many_waits_for_the_misses(nursery, catalyst):
    source = await start(nursery, catalyst)
    with trio.fail_after(10):
        found = await source.lookup_many([A, B, C], wait_s=10)
    assert set(found) == {A, B} and found[A].name == "alice"


async def test_lookup_many_gives_up_after_its_wait(nursery, catalyst):
    catalyst.gate.clear()
    source = await start(nursery, catalyst)
    with trio.fail_after(10):
        assert await source.lookup_many([A], wait_s=0.05) == {}
    catalyst.gate.set()


@pytest.mark.parametrize("failure", ["status", "garbage", "huge"])
async def test_a_failing_server_is_survived_and_not_hammered(nursery, catalyst, failure):
    if failure == "status":
        catalyst.status = 503
    elif failure == "garbage":
        catalyst.raw_body = b"<html>overloaded</html>"
    else:
        catalyst.raw_body = b"[" + b" " * 40_000 + b"]"
    source = await start(nursery, catalyst, retry_ms=60_000)
    with trio.fail_after(10):
        assert await source.lookup_many([A], wait_s=30) == {}
    assert source.stats.failures == 1
    assert source.lookup(A) is None
    await wait_all_tasks_blocked()
    assert len(catalyst.requests) == 1


async def test_requests_in_flight_are_bounded(nursery, catalyst):
    catalyst.gate.clear()
    source = await start(nursery, catalyst, batch_size=2, max_in_flight=2)
    for i in range(10):
        source.lookup(addr(100 + i))
    await until(lambda: len(catalyst.requests) == 2)
    await wait_all_tasks_blocked()
    assert source.cache.batches_in_flight == 2 and source.cache.waiting == 6
    catalyst.gate.set()
    await until(lambda: len(catalyst.requests) == 5 and source.cache.batches_in_flight == 0)
    assert sorted(a for r in catalyst.requests for a in r) == [addr(100 + i) for i in range(10)]
