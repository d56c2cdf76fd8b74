"""FriendCache: cached friend sets, fetches racing with changes, re-reads, bounds.

Pure: plain calls, no Redis (the store's I/O around it is tested in
tests/test_redis_store.py).
"""

from __future__ import annotations

from presenced.store.base import FriendshipChanged
from presenced.store.friend_cache import FriendCache


def added(a: str, b: str) -> FriendshipChanged:
    return FriendshipChanged(a, b, True)


def removed(a: str, b: str) -> FriendshipChanged:
    return FriendshipChanged(a, b, False)


def fetched(cache: FriendCache, address: str, friends: set[str]) -> set[str]:
    """A fetch with nothing racing it."""
    mark = cache.begin_fetch()
    return cache.store(address, set(friends), cache.end_fetch(mark))


def test_changes_apply_to_cached_sets_only():
    cache = FriendCache()
    fetched(cache, "0xa", {"0xb"})
    cache.apply(added("0xa", "0xc"))
    cache.apply(added("0xd", "0xe"))  # neither is cached: nothing to keep
    assert cache.get("0xa") == {"0xb", "0xc"}
    assert cache.get("0xd") is None and "0xd" not in cache
    cache.apply(removed("0xb", "0xa"))
    assert cache.get("0xa") == {"0xc"}
    cache.drop("0xa")
    assert cache.get("0xa") is None and len(cache) == 0


def test_a_fetch_keeps_the_changes_that_raced_with_it():
    cache = FriendCache()
    mark = cache.begin_fetch()
    # Redis answered {0xold}; before the answer is stored, 0xnew is added
    # and 0xold removed (through the feed or by this instance).
    cache.apply(added("0xa", "0xnew"))
    cache.apply(removed("0xold", "0xa"))
    cache.apply(added("0xx", "0xy"))  # someone else's
    friends = cache.store("0xa", {"0xold"}, cache.end_fetch(mark))
    assert friends == {"0xnew"}
    assert cache.get("0xa") == {"0xnew"}


def test_overlapping_fetches_each_replay_what_followed_their_own_start():
    cache = FriendCache()
    first = cache.begin_fetch()
    cache.apply(added("0xa", "0xb"))
    second = cache.begin_fetch()
    cache.apply(added("0xc", "0xd"))
    # The second read saw 0xa-0xb already; replaying only what came after it
    # is what keeps a later removal of it from being undone.
    assert cache.end_fetch(second) == [added("0xc", "0xd")]
    cache.apply(removed("0xa", "0xb"))
    assert cache.end_fetch(first) == [added("0xa", "0xb"), added("0xc", "0xd"),
                                      removed("0xa", "0xb")]
    # With no fetch in flight nothing is logged any more.
    cache.apply(added("0xe", "0xf"))
    mark = cache.begin_fetch()
    assert cache.end_fetch(mark) == []


def test_the_oldest_entries_go_beyond_the_bound():
    cache = FriendCache(max_entries=3)
    for name in ("0x1", "0x2", "0x3", "0x4", "0x5"):
        fetched(cache, name, {"0xf"})
    assert cache.addresses() == ["0x3", "0x4", "0x5"]


def test_refresh_turns_differences_into_events_once_per_pair():
    cache = FriendCache()
    fetched(cache, "0xa", {"0xb", "0xgone"})
    fetched(cache, "0xb", {"0xa"})
    fresh = {"0xa": {"0xb", "0xc"}, "0xb": {"0xa", "0xc"}, "0xuncached": {"0xz"}}
    events = cache.refresh(fresh, [])
    assert events == [added("0xa", "0xc"), removed("0xa", "0xgone"), added("0xb", "0xc")]
    assert cache.get("0xa") == {"0xb", "0xc"}
    assert cache.get("0xuncached") is None
    # The same pair seen from both of its (cached) ends is one event.
    fetched(cache, "0xc", {"0xa", "0xb"})
    events = cache.refresh({"0xa": {"0xb"}, "0xc": {"0xb"}}, [])
    assert events == [removed("0xa", "0xc")]


def test_refresh_replays_changes_made_while_it_read():
    cache = FriendCache()
    fetched(cache, "0xa", {"0xb"})
    mark = cache.begin_fetch()
    cache.apply(added("0xa", "0xc"))  # after the snapshot was read
    events = cache.refresh({"0xa": {"0xb"}}, cache.end_fetch(mark))
    assert events == []
    assert cache.get("0xa") == {"0xb", "0xc"}


def test_after_data_loss_a_missing_friendship_is_unknown_not_removed():
    cache = FriendCache()
    fetched(cache, "0xa", {"0xb", "0xc"})
    # Redis lost its data: the re-read lacks 0xb and has a new 0xd.
    events = cache.refresh({"0xa": {"0xd"}}, [], removals=False)
    assert events == [added("0xa", "0xd")]
    assert cache.get("0xa") == {"0xb", "0xc", "0xd"}


def test_pairs_gives_every_cached_friendship_once():
    cache = FriendCache()
    fetched(cache, "0xb", {"0xa", "0xc"})
    fetched(cache, "0xa", {"0xb"})
    # A stale set on one side: the pair is still given (from the other side).
    fetched(cache, "0xz", {"0xy"})
    fetched(cache, "0xy", set())
    assert sorted(cache.pairs()) == [("0xa", "0xb"), ("0xb", "0xc"), ("0xy", "0xz")]


def test_pairs_survives_changes_while_it_is_walked():
    cache = FriendCache()
    for i in range(10):
        fetched(cache, f"0x{i}", {"0xf"})
    walked = []
    for pair in cache.pairs():
        walked.append(pair)
        cache.drop("0x9")
        fetched(cache, "0xnew", {"0xg"})
    assert ("0x9", "0xf") not in walked
    assert len(walked) == 9
