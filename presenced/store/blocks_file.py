"""Block lists on disk: CSV lines `blocker,blocked` (or JSON lines), like friends files."""

from __future__ import annotations

import json
from collections.abc import Iterable

from presenced.model import normalize_address
from presenced.store.base import Block
from presenced.store.friends_file import LineError


def parse_block_line(text: str) -> Block | None:
    """Parse one line; None for blank lines and comments. Raises ValueError.

    CSV: `0xblocker…,0xblocked…` (spaces allowed, `#` starts a comment).
    JSON lines: `["0xblocker…", "0xblocked…"]` or
    `{"blocker": "0x…", "blocked": "0x…"}`. The order matters: the first
    address blocks the second.
    """
    line = text.strip()
    if not line or line.startswith("#"):
        return None
    if line[0] in "[{":
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON: {e.msg}") from None
        if isinstance(value, dict):
            value = [value.get("blocker"), value.get("blocked")]
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("expected a blocker and a blocked address")
        blocker, blocked = value
    else:
        parts = [p.strip() for p in line.split("#", 1)[0].split(",")]
        if len(parts) != 2:
            raise ValueError("expected two comma-separated addresses: blocker,blocked")
        blocker, blocked = parts
    if not isinstance(blocker, str) or not isinstance(blocked, str):
        raise ValueError("addresses must be strings")
    blocker, blocked = normalize_address(blocker), normalize_address(blocked)
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
