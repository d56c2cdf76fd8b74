"""The Catalyst lambdas profile format: the request body and the parsing of the answer.

`POST {base}/profiles` with `{"ids": [address, ...]}` answers a JSON list with one entry per
known user: `{"avatars": [{"ethAddress" | "userId": "0x..", "name": ..., "hasClaimedName": ...,
"avatar": {"snapshots": {"face256": url}}}], ...}`. Unknown users are simply absent.

The answer comes from another service: anything malformed is skipped entry by entry, and
strings are cut to sizes that keep our own messages small.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from presenced.profiles.cache import Profile

__all__ = ["MAX_NAME_CHARS", "MAX_URL_CHARS", "ProfileFormatError", "parse_profiles",
           "request_body"]

MAX_NAME_CHARS = 64
MAX_URL_CHARS = 1024


class ProfileFormatError(ValueError):
    """The answer is not a JSON list of profiles at all."""


def request_body(addresses: Iterable[str]) -> bytes:
    return json.dumps({"ids": list(addresses)}).encode()


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def parse_profiles(body: bytes, wanted: Iterable[str]) -> dict[str, Profile]:
    """The profiles in `body` of the addresses in `wanted` (lower-case), keyed by address."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProfileFormatError(f"not JSON: {e}") from None
    if not isinstance(data, list):
        raise ProfileFormatError(f"expected a JSON list, got {type(data).__name__}")
    wanted_set = set(wanted)
    found: dict[str, Profile] = {}
    for item in data:
        if not isinstance(item, dict):
            continue
        avatars = item.get("avatars")
        if not isinstance(avatars, list) or not avatars or not isinstance(avatars[0], dict):
            continue
        first = avatars[0]
        address = first.get("ethAddress") or first.get("userId")
        if not isinstance(address, str):
            continue
        address = address.lower()
        if address not in wanted_set:
            continue
        avatar = first.get("avatar")
        snapshots = avatar.get("snapshots") if isinstance(avatar, dict) else None
        face = snapshots.get("face256") if isinstance(snapshots, dict) else None
        found[address] = Profile(
            address=address,
            name=_text(first.get("name"), MAX_NAME_CHARS),
            has_claimed_name=first.get("hasClaimedName") is True,
            picture_url=_text(face, MAX_URL_CHARS),
        )
    return found
