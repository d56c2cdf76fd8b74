"""Deciding what the friends-database source applies (pure: no database, no Redis)."""

from __future__ import annotations

from array import array
from datetime import datetime, timedelta

from presenced.graph.picture import (
    AddressIds,
    FriendshipPicture,
    contains,
    diff_adjacency,
)
from presenced.graph.reconcile import (
    Change,
    FullResult,
    IncrementalResult,
    Kind,
    PassKind,
    Reconciler,
)
from presenced.graph.social_events import BlockWanted, FriendshipWanted

A, B, C, D, E = ("0x" + ch * 40 for ch in "abcde")
T0 = datetime(2026, 11, 28, 12, 0, 0)
OVERLAP = timedelta(seconds=120)


# ------------------------------------------------------------------- picture


def test_pair_keys_are_symmetric_and_blocks_directed():
    ids = AddressIds()
    assert ids.pair_key(B, A) == ids.pair_key(A, B)
    assert ids.pair(ids.pair_key(B, A)) == (A, B)
    assert ids.block_key(A, B) != ids.block_key(B, A)
    assert ids.block(ids.block_key(B, A)) == (B, A)


def test_adjacency_drops_duplicates_and_self_pairs():
    ids = AddressIds()
    adjacency = ids.adjacency([(A, B), (B, A), (A, C), (C, C), (B, C)])
    assert sum(len(f) for f in adjacency) == 3
    assert contains(adjacency, ids.pair_key(C, A))
    assert not contains(adjacency, ids.pair_key(C, D))
    assert not contains(adjacency, ids.pair_key(E, D))


def test_diff_adjacency_finds_exactly_the_differences():
    ids = AddressIds()
    old = ids.adjacency([(A, B), (A, C), (B, C)])
    new = ids.adjacency([(A, B), (B, C), (C, D), (D, E)])
    added, removed = diff_adjacency(old, new)
    assert sorted(ids.pair(k) for k in added) == [(C, D), (D, E)]
    assert [ids.pair(k) for k in removed] == [(A, C)]
    assert diff_adjacency(new, new) == ([], [])
    assert diff_adjacency([], []) == ([], [])


def test_diff_adjacency_at_scale_is_exact():
    ids = AddressIds()
    users = [f"0x{i:040x}" for i in range(3000)]
    pairs = [(users[i], users[(i * 7 + k) % 3000]) for i in range(3000) for k in range(1, 6)]
    old = ids.adjacency(pairs)
    gone = set(pairs[::97])
    extra = [(users[i], users[(i + 1500) % 3000]) for i in range(0, 3000, 101)]
    new = ids.adjacency([p for p in pairs if p not in gone] + extra)
    added, removed = diff_adjacency(old, new)
    assert {ids.pair(k) for k in added} == {tuple(sorted(p)) for p in extra}
    assert {ids.pair(k) for k in removed} == {tuple(sorted(p)) for p in gone}


def test_friendship_picture_overlay_and_count():
    ids = AddressIds()
    picture = FriendshipPicture()
    picture.replace(ids.adjacency([(A, B), (A, C)]), {})
    ab, cd = ids.pair_key(A, B), ids.pair_key(C, D)
    assert len(picture) == 2 and picture.state(ab) is True and picture.state(cd) is False
    picture.set(cd, True)
    picture.set(ab, False)
    assert len(picture) == 2 and picture.state(ab) is False and picture.state(cd) is True
    picture.set(ab, None)
    assert picture.state(ab) is None and len(picture) == 2
    # Back to what the base says: the overlay entry goes.
    picture.set(ab, True)
    assert ab not in picture.overlay and len(picture) == 3
    assert sorted(ids.pair(k) for k in picture.keys()) == [(A, B), (A, C), (C, D)]


# ---------------------------------------------------------------- reconciler


def loaded(*pairs: tuple[str, str], blocks: tuple[tuple[str, str], ...] = ()) -> Reconciler:
    rec = Reconciler(OVERLAP)
    rec.loaded(T0, rec.ids.adjacency(pairs), {rec.ids.block_key(*b) for b in blocks})
    return rec


def incremental(
    rec: Reconciler, at: datetime, friendships=(), blocks=(), block_count: int | None = None,
    plan=None,
) -> list[Change]:
    plan = plan or rec.plan(PassKind.INCREMENTAL)
    count = len(rec.blocks) if block_count is None else block_count
    return rec.finish_incremental(
        plan, IncrementalResult(at, list(friendships), list(blocks), count))


def full(rec: Reconciler, at: datetime, pairs, blocks=(), plan=None) -> list[Change]:
    plan = plan or rec.plan(PassKind.FULL)
    new = rec.ids.adjacency(pairs)
    added, removed = diff_adjacency(rec.friendships.base, new)
    return rec.finish_full(plan, FullResult(at, new, added, removed,
                                            {rec.ids.block_key(*b) for b in blocks}))


def summary(changes: list[Change]) -> list[tuple[str, tuple[str, str], bool, str]]:
    return [(c.kind.value, c.pair, c.active, c.origin) for c in changes]


def test_incremental_pass_reads_since_the_watermark_minus_the_overlap():
    rec = loaded((A, B))
    plan = rec.plan(PassKind.INCREMENTAL)
    assert plan.since == T0 - OVERLAP
    incremental(rec, T0 + timedelta(seconds=30), plan=plan)
    # The next window starts from the database clock of the last pass.
    assert rec.plan(PassKind.INCREMENTAL).since == T0 + timedelta(seconds=30) - OVERLAP


def test_incremental_pass_applies_only_differences():
    rec = loaded((A, B), (A, C))
    changes = incremental(rec, T0, friendships=[(A, B, True), (A, C, False), (C, D, True),
                                                (D, E, False)])
    assert summary(changes) == [("friendship", (A, C), False, "incremental"),
                                ("friendship", (C, D), True, "incremental")]
    # The same rows again (the overlap re-reads them): nothing twice.
    assert incremental(rec, T0, friendships=[(A, C, False), (C, D, True)]) == []


def test_an_event_is_applied_once_and_not_again_by_the_pass_that_re_reads_it():
    rec = loaded()
    change = rec.on_event(FriendshipWanted(A, B, True))
    assert change is not None and summary([change]) == [("friendship", (A, B), True, "event")]
    assert rec.on_event(FriendshipWanted(A, B, True)) is None
    plan = rec.plan(PassKind.INCREMENTAL)
    # The pair an event touched is verified by the next pass.
    assert plan.friendships == [(A, B)]
    assert incremental(rec, T0, friendships=[(A, B, True)], plan=plan) == []
    assert rec.plan(PassKind.INCREMENTAL).friendships == []


def test_an_event_for_a_row_that_is_not_there_is_undone_by_the_reconciliation():
    rec = loaded()
    assert rec.on_event(FriendshipWanted(A, B, True)) is not None
    plan = rec.plan(PassKind.INCREMENTAL)
    # The database has no such friendship: the verification says so.
    changes = incremental(rec, T0, friendships=[(A, B, False)], plan=plan)
    assert summary(changes) == [("friendship", (A, B), False, "incremental")]
    # When the row does appear, the window finds it.
    changes = incremental(rec, T0 + timedelta(seconds=5), friendships=[(A, B, True)])
    assert summary(changes) == [("friendship", (A, B), True, "incremental")]


def test_a_lost_event_is_found_by_the_window():
    rec = loaded((A, B))
    changes = incremental(rec, T0, friendships=[(A, B, False)])
    assert summary(changes) == [("friendship", (A, B), False, "incremental")]


def test_an_event_during_a_pass_wins_over_the_pass_s_older_snapshot():
    rec = loaded((A, B))
    plan = rec.plan(PassKind.INCREMENTAL)
    # While the pass reads (its snapshot still has A-B), the friendship ends.
    assert rec.on_event(FriendshipWanted(A, B, False)) is not None
    assert incremental(rec, T0, friendships=[(A, B, True), (C, D, True)], plan=plan) == [
        Change(Kind.FRIENDSHIP, rec.ids.pair_key(C, D), (C, D), True, "incremental")]
    assert rec.friendships.state(rec.ids.pair_key(A, B)) is False
    # ... and the next pass verifies it.
    assert rec.plan(PassKind.INCREMENTAL).friendships == [(A, B)]


def test_blocks_from_events_and_passes():
    rec = loaded(blocks=((A, B),))
    assert rec.on_event(BlockWanted(A, B, True)) is None
    change = rec.on_event(BlockWanted(C, A, True))
    assert change is not None and change.pair == (C, A)
    plan = rec.plan(PassKind.INCREMENTAL)
    assert sorted(plan.blocks) == [(A, B), (C, A)]
    changes = incremental(rec, T0, blocks=[(A, B, True), (C, A, True), (D, E, True)],
                          block_count=3, plan=plan)
    assert summary(changes) == [("block", (D, E), True, "incremental")]
    assert not rec.blocks_needed


def test_an_unblock_without_event_is_found_by_the_block_count():
    rec = loaded(blocks=((A, B), (C, D)))
    assert incremental(rec, T0, block_count=1) == []
    assert rec.blocks_needed
    assert rec.next_kind(full_due=False) is PassKind.BLOCKS
    plan = rec.plan(PassKind.BLOCKS)
    result = FullResult(T0, None, [], [], {rec.ids.block_key(C, D)})
    assert summary(rec.finish_full(plan, result)) == [("block", (A, B), False, "blocks")]
    assert not rec.blocks_needed
    assert rec.next_kind(full_due=False) is PassKind.INCREMENTAL


def test_full_comparison_finds_what_the_window_cannot():
    rec = loaded((A, B), (A, C), blocks=((A, B),))
    # A friendship applied by an event, one removed by a pass: in the overlay.
    rec.on_event(FriendshipWanted(C, D, True))
    incremental(rec, T0, friendships=[(C, D, True), (A, C, False)])
    changes = full(rec, T0 + timedelta(minutes=15), [(A, B), (B, C), (C, D)],
                   blocks=[(B, A)])
    assert sorted(summary(changes)) == [
        ("block", (A, B), False, "full"),
        ("block", (B, A), True, "full"),
        ("friendship", (B, C), True, "full"),
    ]
    assert not rec.full_needed
    assert rec.friendships.overlay == {}
    assert len(rec.friendships) == 3


def test_full_comparison_leaves_pairs_touched_during_it_to_the_events():
    rec = loaded((A, B))
    plan = rec.plan(PassKind.FULL)
    rec.on_event(FriendshipWanted(A, B, False))
    rec.on_event(FriendshipWanted(D, E, True))
    # The snapshot predates both events.
    assert full(rec, T0, [(A, B), (B, C)], plan=plan) == [
        Change(Kind.FRIENDSHIP, rec.ids.pair_key(B, C), (B, C), True, "full")]
    assert rec.friendships.state(rec.ids.pair_key(A, B)) is False
    assert rec.friendships.state(rec.ids.pair_key(D, E)) is True
    assert sorted(rec.plan(PassKind.INCREMENTAL).friendships) == [(A, B), (D, E)]


def test_a_change_the_store_refused_is_applied_again_whatever_the_database_says():
    rec = loaded()
    change = rec.on_event(FriendshipWanted(A, B, True))
    assert change is not None
    rec.failed([change])
    assert rec.friendships.state(change.key) is None
    plan = rec.plan(PassKind.INCREMENTAL)
    assert plan.friendships == [(A, B)]
    changes = incremental(rec, T0, friendships=[(A, B, True)], plan=plan)
    assert summary(changes) == [("friendship", (A, B), True, "incremental")]


def test_too_many_pairs_to_verify_ask_for_a_full_comparison():
    rec = Reconciler(OVERLAP, max_verify=2)
    rec.loaded(T0, [], set())
    for pair in [(A, B), (A, C), (A, D)]:
        rec.on_event(FriendshipWanted(*pair, True))
    plan = rec.plan(PassKind.INCREMENTAL)
    assert plan.friendships == [] and rec.full_needed
    incremental(rec, T0, plan=plan)
    assert rec.next_kind(full_due=False) is PassKind.FULL
    assert summary(full(rec, T0, [(A, B)])) == [
        ("friendship", (A, C), False, "full"), ("friendship", (A, D), False, "full")]
    assert rec.next_kind(full_due=False) is PassKind.INCREMENTAL


def test_a_failed_full_comparison_is_tried_again():
    rec = loaded((A, B))
    rec.plan(PassKind.FULL)
    assert rec.next_kind(full_due=False) is PassKind.FULL


def test_empty_arrays_compare_like_missing_users():
    ids = AddressIds()
    old = ids.adjacency([(A, B)])
    assert diff_adjacency(old, [array("I")]) == ([], [ids.pair_key(A, B)])
