"""The reproducible synthetic social graph shared by `seed friendships --random` and simulate."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from presenced.auth.identity import Identity
from presenced.socialgraph import SocialGraph, user_address, user_identity, user_rng


def test_addresses_match_the_identities_simulate_logs_in_with():
    for index in range(20):
        identity = Identity.generate(user_rng(5, index))
        assert user_address(5, index) == identity.address
        assert user_identity(5, index).address == identity.address
    assert user_address(5, 0) != user_address(6, 0) != user_address(5, 1)


def test_same_seed_same_graph_other_seed_other_graph():
    one = SocialGraph.generate(500, 10, seed=11)
    assert one.edges == SocialGraph.generate(500, 10, seed=11).edges
    assert one.edges != SocialGraph.generate(500, 10, seed=12).edges


def test_reproducible_across_processes():
    # String seeding hashes with SHA-512, so PYTHONHASHSEED cannot change the graph.
    code = ("from presenced.socialgraph import SocialGraph as G; "
            "g = G.generate(300, 6, seed=3); print(hash(tuple(g.edges)) if False else g.edges[:50],"
            " g.address(7))")
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h)}).stdout
        for h in (1, 2)
    }
    assert len(outputs) == 1


def test_shape_average_and_skew():
    graph = SocialGraph.generate(5000, 20, seed=1)
    degrees = graph.degrees()
    assert len(graph.edges) == 50_000
    assert len(set(graph.edges)) == len(graph.edges)
    assert all(a < b for a, b in graph.edges)
    assert statistics.mean(degrees) == 20
    # Skewed: the median user has fewer friends than average, the top 1 % many more.
    ordered = sorted(degrees)
    assert statistics.median(degrees) < 20
    assert ordered[int(0.99 * len(ordered))] > 3 * 20
    assert max(degrees) <= (5000 * 20) ** 0.5 * 2


def test_adjacency_is_symmetric():
    graph = SocialGraph.generate(200, 6, seed=9)
    friends = graph.adjacency()
    for a, b in graph.edges:
        assert b in friends[a] and a in friends[b]
    assert [len(f) for f in friends] == graph.degrees()


def test_small_and_degenerate_graphs():
    assert SocialGraph.generate(1, 0, seed=0).edges == []
    assert len(SocialGraph.generate(11, 5, seed=0).edges) == 28  # dense: still exact
    with pytest.raises(ValueError, match="needs more than 10 users"):
        SocialGraph.generate(10, 6, seed=0)
    with pytest.raises(ValueError):
        SocialGraph.generate(0, 1, seed=0)


def test_csv_lines_parse_back():
    from presenced.store.friends_file import parse_friendships

    graph = SocialGraph.generate(100, 4, seed=2)
    pairs, errors = parse_friendships(graph.csv_lines(4))
    assert errors == []
    assert pairs == [tuple(sorted(p)) for p in graph.friendships()]
