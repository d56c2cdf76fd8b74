"""Friendship lists on disk: CSV (`address_a,address_b`) or JSON lines.

Files exported from spreadsheets are accepted as they come: a UTF-8
byte-order mark, a header line (`address_a,address_b`, or any two column
names), CRLF line ends and double-quoted fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass

import trio

from presenced.model import normalize_address
from presenced.store.base import Friendship, ordered_pair

# Pairs per batch handed to a store by `FriendsFile.batches`.
SOURCE_BATCH = 20_000
BOM = "\ufeff"
# Two column names, as a spreadsheet writes them (never an address: those
# start with a digit).
_HEADER = re.compile(r'\s*"?[A-Za-z_][\w .-]*"?\s*,\s*"?[A-Za-z_][\w .-]*"?\s*')


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def split_address_pair(
    text: str, keys: tuple[str, str] = ("a", "b"), *, csv_hint: str = ""
) -> tuple[str, str] | None:
    """Two normalized addresses from one line; None for blank lines and comments.

    Raises ValueError. CSV: `0xabc…,0xdef…` (spaces and quotes allowed, `#` starts a
    comment). JSON lines: `["0xabc…", "0xdef…"]` or an object with the two `keys`.
    Shared by friends files and block lists (`csv_hint` names the columns in the error).
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
            value = [value.get(keys[0]), value.get(keys[1])]
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"expected a pair of addresses ({keys[0]}, {keys[1]})")
        a, b = value
    else:
        line = line.split("#", 1)[0]
        parts = [p.strip().strip('"').strip() for p in line.split(",")]
        if len(parts) != 2:
            raise ValueError("expected two comma-separated addresses" + csv_hint)
        a, b = parts
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError("addresses must be strings")
    return normalize_address(a), normalize_address(b)


def parse_friendship_line(text: str) -> Friendship | None:
    """Parse one line of a friends file (`split_address_pair`); None for blank lines and
    comments. Raises ValueError."""
    pair = split_address_pair(text)
    if pair is None:
        return None
    a, b = pair
    if a == b:
        raise ValueError("a user cannot be their own friend")
    return ordered_pair(a, b)


def is_header(text: str) -> bool:
    """True for a line of two column names, such as `address_a,address_b`."""
    return _HEADER.fullmatch(text.strip()) is not None


def parse_friendships(
    lines: Iterable[str], *, first_line: int = 1
) -> tuple[list[Friendship], list[LineError]]:
    """Parse every line, collecting errors with their 1-based line numbers.

    `first_line` is the number of the first of `lines` in its file (an
    import sent in chunks): only the start of a file may carry a byte-order
    mark and a header line.
    """
    pairs: list[Friendship] = []
    errors: list[LineError] = []
    at_start = first_line == 1
    for number, text in enumerate(lines, start=1):
        if at_start:
            if number == 1:
                text = text.removeprefix(BOM)
            stripped = text.strip()
            if stripped and not stripped.startswith("#"):
                at_start = False
                if is_header(stripped):
                    continue
        try:
            pair = parse_friendship_line(text)
        except ValueError as e:
            errors.append(LineError(number, str(e)))
            continue
        if pair is not None:
            pairs.append(pair)
    return pairs, errors


def read_friendships_file(path: str) -> tuple[list[Friendship], list[LineError]]:
    with open(path, encoding="utf-8", newline=None) as f:
        return parse_friendships(f)


class FriendsFileError(Exception):
    """The friends file cannot be read or has malformed lines (one line of text)."""


class FriendsFile:
    """A friends file as a store's friends source (`serve --friends`).

    `read` parses the whole file, refusing it if any line is malformed; a
    store rebuilding its friendships reads it again through `batches` (and
    the `--blocks` file, if any, through `block_batches`).
    """

    def __init__(self, path: str, blocks_path: str | None = None) -> None:
        self.path = path
        self.blocks_path = blocks_path

    @property
    def name(self) -> str:
        return f"friends file {self.path}"

    def read(self) -> list[Friendship]:
        """Every pair in the file; raises FriendsFileError."""
        try:
            pairs, errors = read_friendships_file(self.path)
        except OSError as e:
            raise FriendsFileError(f"cannot read friends file: {e}") from None
        except UnicodeDecodeError as e:
            raise FriendsFileError(f"{self.path}: not UTF-8 text ({e.reason})") from None
        if errors:
            shown = "; ".join(str(e) for e in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise FriendsFileError(f"{self.path}: {shown}{more}")
        return pairs

    async def batches(self) -> AsyncIterator[Sequence[Friendship]]:
        pairs = await trio.to_thread.run_sync(self.read)
        for start in range(0, len(pairs), SOURCE_BATCH):
            yield pairs[start : start + SOURCE_BATCH]

    async def block_batches(self) -> AsyncIterator[Sequence[Friendship]]:
        if self.blocks_path is None:
            return
        from presenced.store.blocks_file import read_blocks_file

        blocks, errors = await trio.to_thread.run_sync(read_blocks_file, self.blocks_path)
        if errors:
            raise FriendsFileError(f"{self.blocks_path}: {errors[0]}")
        for start in range(0, len(blocks), SOURCE_BATCH):
            yield blocks[start : start + SOURCE_BATCH]


def iter_csv(pairs: Iterable[Friendship]) -> Iterator[str]:
    for a, b in pairs:
        yield f"{a},{b}\n"
