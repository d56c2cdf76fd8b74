"""Client side of the login: an owner key delegating to an ephemeral key, as @dcl/crypto does.

Used by our Python client, the load simulator and tests. The messages, address casing and JSON
layout reproduce `@dcl/crypto` + `decentraland-crypto-fetch` byte for byte, so a frame made here
is indistinguishable from one made by a real explorer.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from presenced.auth.authchain import (
    CHAIN_HEADER_PREFIX,
    ECDSA_EPHEMERAL,
    ECDSA_SIGNED_ENTITY,
    METADATA_HEADER,
    SIGNER,
    TIMESTAMP_HEADER,
)
from presenced.auth.eth import address_of_private_key, sign_personal_message, to_checksum_address

DEFAULT_EPHEMERAL_LIFETIME = timedelta(days=30)
# Order of the secp256k1 group: a private key must lie in [1, N).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class Identity:
    """Owner and ephemeral keys plus the 2-link chain (SIGNER, ECDSA_EPHEMERAL) binding them.

    Addresses are EIP-55 checksummed, as @dcl/crypto writes them into the chain.
    """

    owner_key: bytes
    owner_address: str
    ephemeral_key: bytes
    ephemeral_address: str
    expiration: datetime
    auth_chain: tuple[dict[str, str], ...]
    # The last login timestamp this identity signed (see `login_timestamp_ms`).
    _last_login_ms: list[int] = field(default_factory=lambda: [0], init=False, repr=False,
                                      compare=False)

    def login_timestamp_ms(self) -> int:
        """The wall clock in ms for a new login, later than any this identity signed before.

        A server refuses a login frame it has seen (a replay), and two connections opened in
        the same millisecond would sign the same frame: each gets a timestamp of its own.
        """
        last = self._last_login_ms
        now = max(int(time.time() * 1000), last[0] + 1)
        last[0] = now
        return now

    @property
    def address(self) -> str:
        """The owner address as the server reports it (lower case)."""
        return self.owner_address.lower()

    @classmethod
    def from_keys(cls, owner_key: bytes, ephemeral_key: bytes, expiration: datetime) -> Identity:
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        # The signed text carries milliseconds only; keep the object equal to what was signed.
        expiration = expiration.astimezone(UTC).replace(
            microsecond=expiration.microsecond // 1000 * 1000
        )
        owner_address = to_checksum_address(address_of_private_key(owner_key))
        ephemeral_address = to_checksum_address(address_of_private_key(ephemeral_key))
        message = ephemeral_message(ephemeral_address, expiration)
        chain = (
            {"type": SIGNER, "payload": owner_address, "signature": ""},
            {
                "type": ECDSA_EPHEMERAL,
                "payload": message,
                "signature": sign_personal_message(owner_key, message),
            },
        )
        return cls(owner_key, owner_address, ephemeral_key, ephemeral_address, expiration, chain)

    @classmethod
    def generate(
        cls, rng: random.Random | None = None, expiration: datetime | None = None
    ) -> Identity:
        """Fresh keys; with a seeded `rng` the keys (hence addresses) are reproducible."""
        if expiration is None:
            expiration = datetime.now(UTC) + DEFAULT_EPHEMERAL_LIFETIME
        return cls.from_keys(_random_key(rng), _random_key(rng), expiration)


def ephemeral_message(ephemeral_address: str, expiration: datetime) -> str:
    """The text the owner signs to delegate to the ephemeral key (@dcl/crypto format)."""
    return (
        "Decentraland Login\n"
        f"Ephemeral address: {ephemeral_address}\n"
        f"Expiration: {_js_iso(expiration)}"
    )


def login_headers(identity: Identity, timestamp_ms: int, metadata: str = "{}") -> dict[str, str]:
    """Signed-fetch headers for `GET /`, the login message of the WebSocket."""
    payload = f"get:/:{timestamp_ms}:{metadata}"
    links = (
        *identity.auth_chain,
        {
            "type": ECDSA_SIGNED_ENTITY,
            "payload": payload,
            "signature": sign_personal_message(identity.ephemeral_key, payload),
        },
    )
    headers = {f"{CHAIN_HEADER_PREFIX}{i}": _js_json(link) for i, link in enumerate(links)}
    headers[TIMESTAMP_HEADER] = str(timestamp_ms)
    headers[METADATA_HEADER] = metadata
    return headers


def login_frame(identity: Identity, timestamp_ms: int, metadata: str = "{}") -> str:
    """The JSON text of the first WebSocket frame."""
    return _js_json(login_headers(identity, timestamp_ms, metadata))


def _random_key(rng: random.Random | None) -> bytes:
    while True:
        key = rng.randbytes(32) if rng is not None else secrets.token_bytes(32)
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            return key


def _js_iso(moment: datetime) -> str:
    # Date.prototype.toISOString: UTC, always three fraction digits, "Z" suffix.
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def _js_json(value: object) -> str:
    # JSON.stringify: no whitespace and non-ASCII left as is.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
