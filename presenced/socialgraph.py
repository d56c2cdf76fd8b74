"""Reproducible synthetic social graphs: who the synthetic users are and who is friends.

Used by `presenced seed friendships --random` and by the load simulator, which
must rebuild exactly the graph that was seeded and log in as its users. Both
derive everything from one integer seed:

- **Users.** User `i` (0 <= i < users) of seed `S` owns the identity
  `Identity.generate(random.Random(f"{S}:{i}"))`: its owner key is the first
  32 random bytes of that generator (redrawn in the negligible case they are
  not a valid secp256k1 key), its ephemeral key the next ones. The address is
  the owner key's address, so it depends only on `S` and `i`, never on the
  number of users, the ephemeral key or the expiration. `user_address()`
  computes it without signing anything (4x faster than a full identity).
- **Friendships.** A Chung-Lu random graph: every user gets an expected
  friend count from a power law (exponent 2.5 by default), capped at the
  structural cutoff sqrt(users * avg_friends), then scaled so that the mean is
  the requested average; `round(users * avg_friends / 2)` distinct
  friendships are drawn, each endpoint with probability proportional to its
  expected count. The result is skewed like real social graphs: most users
  have a few friends, a few have very many. The random choices come from
  `random.Random(f"{S}:graph")`.

`random.Random` seeded with a string hashes it with SHA-512, so the same seed
gives the same graph on every machine and Python process (PYTHONHASHSEED has
no effect).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate

from presenced.auth.eth import address_of_private_key
from presenced.auth.identity import Identity

DEFAULT_EXPONENT = 2.5
# Order of the secp256k1 group, as in presenced.auth.identity: a key must lie in [1, N).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def user_rng(seed: int, index: int) -> random.Random:
    """The generator user `index`'s keys are drawn from."""
    return random.Random(f"{seed}:{index}")


def user_identity(seed: int, index: int, expiration: datetime | None = None) -> Identity:
    """The full identity (keys and signed auth chain) of user `index`."""
    return Identity.generate(user_rng(seed, index), expiration)


def user_address(seed: int, index: int) -> str:
    """User `index`'s address (lower case); equal to `user_identity(...).address`."""
    rng = user_rng(seed, index)
    # Mirrors Identity.generate's first draw (the owner key); a test checks
    # that both agree.
    while True:
        key = rng.randbytes(32)
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            return address_of_private_key(key).lower()


@dataclass
class SocialGraph:
    """`users` synthetic users and their friendships, as index pairs (i < j), sorted."""

    seed: int
    users: int
    edges: list[tuple[int, int]]
    _addresses: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def generate(
        cls,
        users: int,
        avg_friends: float,
        seed: int,
        *,
        exponent: float = DEFAULT_EXPONENT,
    ) -> SocialGraph:
        """A reproducible graph with the given average friend count; raises ValueError."""
        check_parameters(users, avg_friends)
        if exponent <= 2:
            raise ValueError("the power-law exponent must be greater than 2")
        rng = random.Random(f"{seed}:graph")
        target = round(users * avg_friends / 2)
        if target == 0:
            return cls(seed, users, [])
        weights = _expected_degrees(users, avg_friends, exponent, rng)
        cumulative = list(accumulate(weights))
        population = range(users)
        edges: set[tuple[int, int]] = set()
        draws = 0
        # Rejection of loops and repeats is rare below the structural cutoff;
        # past this many draws (a dense graph) fall back to uniform pairs so
        # that generation always ends.
        max_draws = 20 * target + 1000
        while len(edges) < target and draws < max_draws:
            need = target - len(edges)
            ends = rng.choices(population, cum_weights=cumulative, k=2 * need + 16)
            draws += need + 8
            for a, b in zip(ends[::2], ends[1::2], strict=True):
                if a == b:
                    continue
                edges.add((a, b) if a < b else (b, a))
                if len(edges) == target:
                    break
        while len(edges) < target:
            a, b = rng.randrange(users), rng.randrange(users)
            if a != b:
                edges.add((a, b) if a < b else (b, a))
        return cls(seed, users, sorted(edges))

    # ------------------------------------------------------------- structure

    def degrees(self) -> list[int]:
        counts = [0] * self.users
        for a, b in self.edges:
            counts[a] += 1
            counts[b] += 1
        return counts

    def adjacency(self) -> list[list[int]]:
        friends: list[list[int]] = [[] for _ in range(self.users)]
        for a, b in self.edges:
            friends[a].append(b)
            friends[b].append(a)
        return friends

    # ------------------------------------------------------------ identities

    def address(self, index: int) -> str:
        address = self._addresses.get(index)
        if address is None:
            address = self._addresses[index] = user_address(self.seed, index)
        return address

    def addresses(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Every user's address, in index order; `progress(n)` after each batch."""
        out = []
        for index in range(self.users):
            out.append(self.address(index))
            if progress is not None and (index + 1) % 500 == 0:
                progress(500)
        if progress is not None and self.users % 500:
            progress(self.users % 500)
        return out

    def identity(self, index: int, expiration: datetime | None = None) -> Identity:
        return user_identity(self.seed, index, expiration)

    def friendships(self) -> Iterator[tuple[str, str]]:
        """Every friendship as a pair of addresses."""
        for a, b in self.edges:
            yield self.address(a), self.address(b)

    def csv_lines(self, avg_friends: float | None = None) -> Iterator[str]:
        """The graph in the CSV format of `--friends`, with a header comment."""
        average = f" avg_friends={avg_friends:g}" if avg_friends is not None else ""
        yield (f"# presenced social graph: seed={self.seed} users={self.users}{average} "
               f"friendships={len(self.edges)}\n")
        for a, b in self.friendships():
            yield f"{a},{b}\n"


def check_parameters(users: int, avg_friends: float) -> None:
    """Raises ValueError for a graph that cannot be built."""
    if users < 1:
        raise ValueError("users must be at least 1")
    if avg_friends < 0:
        raise ValueError("the average friend count must not be negative")
    # Half of all possible pairs: denser graphs are not social graphs, and
    # rejection sampling would crawl.
    if avg_friends > (users - 1) / 2:
        raise ValueError(
            f"an average of {avg_friends:g} friends needs more than {users} users "
            f"(at most (users - 1) / 2 = {(users - 1) / 2:g})"
        )


def _expected_degrees(
    users: int, avg_friends: float, exponent: float, rng: random.Random
) -> list[float]:
    # Rank r gets weight r^(-1/(exponent-1)): the friend counts then follow a
    # power law with that exponent. Shuffled so index order carries no rank.
    alpha = 1.0 / (exponent - 1.0)
    weights = [(rank + 1) ** -alpha for rank in range(users)]
    rng.shuffle(weights)
    cap = min(users - 1, max(avg_friends, math.sqrt(users * avg_friends)))
    # Scale to the mean, clip at the cap, and rescale the rest until the mean
    # holds (a few rounds: only the head of the distribution is clipped).
    for _ in range(50):
        total = sum(weights)
        scale = avg_friends * users / total
        weights = [min(cap, w * scale) for w in weights]
        if abs(sum(weights) - avg_friends * users) < 1e-6 * avg_friends * users:
            break
    return weights
