"""Block lists on disk: CSV lines `blocker,blocked` (or JSON lines), like friends files."""

from __future__ import annotations

from collections.abc import Iterable

from presenced.store.base import Block
from presenced.store.friends_file import LineError, split_address_pair


def parse_block_line(text: str) -> Block | None:
    """Parse one line; None for blank lines and comments. Raises ValueError.

    CSV: `0xblocker…,0xblocked…`; JSON lines: `["0xblocker…", "0xblocked…"]` or
    `{"blocker": "0x…", "blocked": "0x…"}` (`split_address_pair`). The order matters: the
    first address blocks the second.
    """
    pair = split_address_pair(text, ("blocker", "blocked"), csv_hint=": blocker,blocked")
    if pair is None:
        return None
    blocker, blocked = pair
    if blocker == blocked:
        raise ValueError("a user cannot block themselves")
    return blocker, blocked


def parse_blocks(lines: Iterable[str]) -> tuple[list[Block], list[LineError]]:
    """Parse every line, collecting errors with their 1-based line numbers."""
    blocks: list[Block] = []
    errors: list[LineError] = []
    for number, text in enumerate(lines, start=1):
        try:
            block = parse_block_line(text)
        except ValueError as e:
            errors.append(LineError(number, str(e)))
            continue
        if block is not None:
            blocks.append(block)
    return blocks, errors


def read_blocks_file(path: str) -> tuple[list[Block], list[LineError]]:
    with open(path, encoding="utf-8") as f:
        return parse_blocks(f)
