"""Server-side verification of the login frame: signed-fetch headers carrying an AuthChain.

Accepts what `@dcl/crypto-middleware` and `@dcl/crypto` accept (the public npm packages;
their `Authenticator.validateSignature` and `verify` are the reference), with two
deliberate differences: contract wallets (EIP-1654) are refused instead of being delegated to a
Catalyst, and timestamps too far in the future are refused too.

Every function here raises only `AuthError`, whatever the input: the frame comes straight from an
unauthenticated socket.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

from presenced.auth.eth import is_address, recover_personal_signer

# Stable machine codes, used as a metrics label: extend with care.
AUTH_FAILURE_REASONS: tuple[str, ...] = (
    "bad-json",  # frame is not UTF-8 JSON of an object
    "missing-chain",  # no x-identity-auth-chain-0 header
    "chain-too-short",  # fewer than 2 links
    "chain-too-long",  # more than MAX_CHAIN_LINKS links
    "bad-link",  # a link is not a JSON object of strings, has an unknown type, or a bad SIGNER
    "signer-not-first",  # link 0 is not SIGNER
    "signer-repeated",  # SIGNER appears after link 0
    "unsupported-eip1654",  # contract-wallet link (EIP-1654/1271), not supported yet
    "ephemeral-expired",  # the ephemeral key's Expiration is not in the future
    "bad-ephemeral-payload",  # ECDSA_EPHEMERAL payload is not the 3-line login message
    "bad-signature",  # signature is malformed or no key can be recovered from it
    "signer-mismatch",  # recovered signer is not the current authority
    "payload-mismatch",  # chain does not end at the expected `get:/:<ts>:<metadata>` payload
    "bad-timestamp",  # x-identity-timestamp missing or not a decimal integer
    "timestamp-out-of-window",  # timestamp too far in the past or future
    "bad-metadata",  # x-identity-metadata is not JSON of an object
    "forbidden-signer",  # metadata.signer is a signer this service refuses
    "replayed",  # these signed headers already opened a session (login replay)
)

# Real clients send 2 or 3 links; the cap bounds the signature recoveries one frame can cost us.
MAX_CHAIN_LINKS = 8
FORBIDDEN_METADATA_SIGNERS = frozenset({"decentraland-kernel-scene"})

CHAIN_HEADER_PREFIX = "x-identity-auth-chain-"
TIMESTAMP_HEADER = "x-identity-timestamp"
METADATA_HEADER = "x-identity-metadata"

SIGNER = "SIGNER"
ECDSA_EPHEMERAL = "ECDSA_EPHEMERAL"
ECDSA_SIGNED_ENTITY = "ECDSA_SIGNED_ENTITY"
_EIP1654_TYPES = frozenset({"ECDSA_EIP_1654_EPHEMERAL", "ECDSA_EIP_1654_SIGNED_ENTITY"})
_ECDSA_TYPES = frozenset({ECDSA_EPHEMERAL, ECDSA_SIGNED_ENTITY})

_EPHEMERAL_TITLE = "Decentraland Login"
_EPHEMERAL_ADDRESS = "Ephemeral address: "
_EPHEMERAL_EXPIRATION = "Expiration: "
_EIP1654_MESSAGE = "contract wallets (EIP-1654) are not supported yet"
# 16 digits reach year 318857: far beyond any sane clock, and keeps int() cheap.
_MAX_TIMESTAMP_DIGITS = 16


class AuthError(Exception):
    """Login refused. `reason` is one of AUTH_FAILURE_REASONS; `message` is for humans."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class VerifiedLinks:
    """Ephemeral links (the owner's signature over the ephemeral key) already verified.

    A client keeps its ephemeral key for its whole validity (hours to days) and signs only the
    last link afresh for each login, so the owner's signature repeats across reconnects; its
    ECDSA recovery is half the work of a login. An entry is keyed by a 128-bit BLAKE2b digest
    of the authority, the signed text and the signature (the exact triple that was verified),
    and is good until the link's own expiration, which every login checks first anyway.

    Bounded: at `max_entries` the oldest entry goes (about 200 bytes each). Pure: no clock,
    no I/O; the caller passes the time.
    """

    __slots__ = ("max_entries", "_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(authority: str, message: str, signature: str) -> bytes:
        # Neither an address nor a hex signature holds a newline, so the joined text names
        # exactly one triple. surrogatepass: a payload may carry lone surrogates (JSON escapes).
        text = f"{authority.lower()}\n{message}\n{signature}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def verified(self, key: bytes, now_ms: int) -> bool:
        expires_ms = self._entries.get(key)
        if expires_ms is None:
            return False
        if expires_ms <= now_ms:
            del self._entries[key]
            return False
        return True

    def remember(self, key: bytes, expires_ms: int) -> None:
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[key] = expires_ms


class VerifiedLogin(NamedTuple):
    """A login frame that verified: who it is, and what makes this frame single-use.

    `replay_key` names the frame (a 128-bit BLAKE2b digest of the signed
    `get:/:<timestamp>:<metadata>` payload and the key that signed it; a client signs a fresh
    timestamp for every connection);
    `expires_ms` is when its timestamp leaves the window, after which the frame is refused
    anyway and need no longer be remembered.
    """

    address: str
    replay_key: bytes
    expires_ms: int


class SeenLogins:
    """Login frames already accepted, each until its timestamp leaves the window.

    The same signed headers presented twice open two sessions at the most once: the second
    use is a replay (a captured frame, a proxy log) and is refused. Entries expire with their
    frame's window (5 minutes by default), so the table holds one entry per login in the last
    window; at `max_entries` the oldest goes first and `evicted` counts it (such a frame could
    then be replayed until its window closes). Pure: the caller passes the time.
    """

    __slots__ = ("max_entries", "evicted", "_entries")

    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self.evicted = 0
        self._entries: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def first_use(self, key: bytes, expires_ms: int, now_ms: int) -> bool:
        """Remember `key` until `expires_ms`; False if it is remembered already."""
        entries = self._entries
        known = entries.get(key)
        if known is not None and known > now_ms:
            return False
        # Insertion order is close to expiry order (every entry lives one window from its
        # timestamp): expired entries leave from the front, each once, O(1) per login.
        while entries:
            oldest = next(iter(entries))
            if entries[oldest] > now_ms:
                break
            del entries[oldest]
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
            self.evicted += 1
        entries[key] = expires_ms
        return True


def replay_key(key_link: str, payload: str) -> bytes:
    """The key under which a login frame is remembered: the signed payload and its signer.

    Not the signature: an ECDSA signature has a second valid form (s and n - s), and hex
    accepts either case, so a replayer could vary the signature of the same frame.
    `key_link` is the payload of the link before the last (the ephemeral key's message, or
    the owner's address), which names the key that signed `payload`.
    """
    # Lower case and without CR: a SIGNER address may be spelled in either case and the
    # verifier strips CR from the ephemeral message, so neither may make a second key.
    text = f"{key_link.replace(chr(13), '').lower()}\n{payload}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def verify_login(frame: bytes | str, *, now_ms: int, window_ms: int = 300_000,
                 verified_links: VerifiedLinks | None = None) -> str:
    """Verify the first WebSocket frame of a connection; return the lower-case owner address.

    `verified_links` remembers ephemeral links verified before, so that a client reusing its
    ephemeral key costs one signature recovery, not two. Replays are not checked here: see
    `verify_login_once`.
    """
    return verify_login_frame(frame, now_ms=now_ms, window_ms=window_ms,
                              verified_links=verified_links).address


def verify_login_once(frame: bytes | str, *, now_ms: int, seen_logins: SeenLogins,
                      window_ms: int = 300_000,
                      verified_links: VerifiedLinks | None = None) -> VerifiedLogin:
    """`verify_login_frame`, then refuse ("replayed") a frame `seen_logins` accepted before.

    The check follows the signature check, so a forged frame cannot fill the table.
    """
    login = verify_login_frame(frame, now_ms=now_ms, window_ms=window_ms,
                               verified_links=verified_links)
    if not seen_logins.first_use(login.replay_key, login.expires_ms, now_ms):
        raise AuthError("replayed", "these signed headers were used for a login already")
    return login


def verify_login_frame(frame: bytes | str, *, now_ms: int, window_ms: int = 300_000,
                       verified_links: VerifiedLinks | None = None) -> VerifiedLogin:
    """Verify a login frame; return the owner with the frame's replay key and expiry."""
    headers = _parse_frame(frame)
    links = _chain_from_headers(headers)

    raw_metadata = headers.get(METADATA_HEADER, "")
    if not isinstance(raw_metadata, str):
        raise AuthError("bad-metadata", f"{METADATA_HEADER} must be a string")
    _check_metadata(raw_metadata)

    raw_timestamp = headers.get(TIMESTAMP_HEADER)
    timestamp = _parse_timestamp(raw_timestamp)
    # Cheap checks go before the chain walk so stale frames cost no EC recovery.
    if timestamp < now_ms - window_ms or timestamp > now_ms + window_ms:
        raise AuthError(
            "timestamp-out-of-window",
            f"timestamp {timestamp} is more than {window_ms} ms away from now ({now_ms})",
        )

    # Raw header strings, not re-serialised values: the client signed exactly these characters.
    expected_payload = f"get:/:{raw_timestamp}:{raw_metadata}"
    address = verify_auth_chain(links, expected_payload, now_ms, verified_links)
    # The chain verified: it has at least two links, and the last signs `expected_payload`.
    key = replay_key(str(links[-2].get("payload", "")), expected_payload)
    return VerifiedLogin(address, key, timestamp + window_ms + 1)


def verify_auth_chain(links: list[dict], expected_payload: str, now_ms: int,
                      verified_links: VerifiedLinks | None = None) -> str:
    """Walk an AuthChain locally; return the lower-case owner address if it signs the payload."""
    typed = _check_structure(links)
    authority = ""
    for index, (kind, payload, signature) in enumerate(typed):
        if kind == SIGNER:
            authority = payload
        elif kind == ECDSA_EPHEMERAL:
            # Clients on Windows may send CRLF; what was signed is the LF form.
            message = payload.replace("\r", "")
            ephemeral_address, expires_ms = _check_ephemeral_payload(index, message, now_ms)
            if verified_links is None:
                _require_signer(index, message, signature, authority)
            else:
                key = verified_links.key(authority, message, signature)
                if not verified_links.verified(key, now_ms):
                    _require_signer(index, message, signature, authority)
                    verified_links.remember(key, expires_ms)
            authority = ephemeral_address
        else:
            _require_signer(index, payload, signature, authority)
            authority = payload
    if authority != expected_payload:
        raise AuthError("payload-mismatch", "the auth chain does not sign the expected payload")
    return typed[0][1].lower()


def _parse_frame(frame: bytes | str) -> dict[str, Any]:
    try:
        if isinstance(frame, bytes | bytearray | memoryview):
            frame = bytes(frame).decode("utf-8")
        if not isinstance(frame, str):
            raise TypeError
        headers = json.loads(frame)
    except (ValueError, TypeError, RecursionError) as exc:
        # ValueError covers invalid UTF-8, bad JSON and over-long integer literals.
        raise AuthError("bad-json", "the login frame is not UTF-8 JSON") from exc
    if not isinstance(headers, dict):
        raise AuthError("bad-json", "the login frame must be a JSON object of headers")
    return headers


def _chain_from_headers(headers: dict[str, Any]) -> list[dict]:
    links: list[dict] = []
    # Indices past the first gap are ignored, as the reference verifier does.
    for index in range(MAX_CHAIN_LINKS + 1):
        raw = headers.get(f"{CHAIN_HEADER_PREFIX}{index}")
        if raw is None:
            break
        if index == MAX_CHAIN_LINKS:
            raise AuthError("chain-too-long", f"auth chain has more than {MAX_CHAIN_LINKS} links")
        if not isinstance(raw, str):
            raise AuthError("bad-link", f"{CHAIN_HEADER_PREFIX}{index} must be a string")
        try:
            link = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise AuthError("bad-link", f"link {index} is not JSON") from exc
        links.append(link)
    if not links:
        raise AuthError("missing-chain", f"no {CHAIN_HEADER_PREFIX}0 header")
    return links


def _check_metadata(raw: str) -> None:
    # A missing or empty header counts as {}, as the reference middleware parses `metadata || '{}'`.
    try:
        metadata = json.loads(raw or "{}")
    except (ValueError, RecursionError) as exc:
        raise AuthError("bad-metadata", f"{METADATA_HEADER} is not JSON") from exc
    if not isinstance(metadata, dict):
        raise AuthError("bad-metadata", f"{METADATA_HEADER} must be a JSON object")
    signer = metadata.get("signer")
    if isinstance(signer, str) and signer in FORBIDDEN_METADATA_SIGNERS:
        raise AuthError("forbidden-signer", f"signer {signer!r} may not open a session")


def _parse_timestamp(raw: object) -> int:
    if (
        not isinstance(raw, str)
        or not 0 < len(raw) <= _MAX_TIMESTAMP_DIGITS
        or not (raw.isascii() and raw.isdigit())
    ):
        raise AuthError("bad-timestamp", f"{TIMESTAMP_HEADER} must be Unix milliseconds")
    return int(raw)


def _check_structure(links: list[dict]) -> list[tuple[str, str, str]]:
    """Validate shapes and types before any expensive recovery; return (type, payload, sig)."""
    if not isinstance(links, list) or len(links) < 2:
        raise AuthError("chain-too-short", "an auth chain needs at least 2 links")
    if len(links) > MAX_CHAIN_LINKS:
        raise AuthError("chain-too-long", f"auth chain has more than {MAX_CHAIN_LINKS} links")
    typed: list[tuple[str, str, str]] = []
    for index, link in enumerate(links):
        if not isinstance(link, dict):
            raise AuthError("bad-link", f"link {index} is not an object")
        kind = link.get("type")
        payload = link.get("payload")
        signature = link.get("signature", "")
        if not (isinstance(kind, str) and isinstance(payload, str) and isinstance(signature, str)):
            raise AuthError("bad-link", f"link {index} needs string type, payload and signature")
        if kind == SIGNER:
            if index != 0:
                raise AuthError("signer-repeated", f"link {index} is a second SIGNER")
            if not is_address(payload):
                raise AuthError("bad-link", "SIGNER payload is not an Ethereum address")
        elif index == 0:
            raise AuthError("signer-not-first", "the first link must be SIGNER")
        elif kind in _EIP1654_TYPES:
            raise AuthError("unsupported-eip1654", _EIP1654_MESSAGE)
        elif kind in _ECDSA_TYPES:
            if not signature:
                raise AuthError("bad-signature", f"link {index} has no signature")
            # The reference client treats any other length as a contract-wallet signature.
            if len(signature) != 132:
                raise AuthError("unsupported-eip1654", _EIP1654_MESSAGE)
        else:
            raise AuthError("bad-link", f"link {index} has unknown type {kind[:40]!r}")
        typed.append((kind, payload, signature))
    return typed


def _check_ephemeral_payload(index: int, message: str, now_ms: int) -> tuple[str, int]:
    """The ephemeral address of the 3-line login message and its expiration (Unix ms), if it
    has not expired."""
    lines = message.split("\n")
    if (
        len(lines) != 3
        or lines[0] != _EPHEMERAL_TITLE
        or not lines[1].startswith(_EPHEMERAL_ADDRESS)
        or not lines[2].startswith(_EPHEMERAL_EXPIRATION)
    ):
        raise AuthError("bad-ephemeral-payload", f"link {index} is not a login message")
    address = lines[1][len(_EPHEMERAL_ADDRESS) :].strip()
    if not is_address(address):
        raise AuthError("bad-ephemeral-payload", f"link {index} has a malformed ephemeral address")
    expiration_ms = _parse_expiration_ms(lines[2][len(_EPHEMERAL_EXPIRATION) :].strip())
    if expiration_ms is None:
        raise AuthError("bad-ephemeral-payload", f"link {index} has a malformed expiration")
    if expiration_ms <= now_ms:
        raise AuthError("ephemeral-expired", f"the ephemeral key of link {index} has expired")
    return address, expiration_ms


def _parse_expiration_ms(text: str) -> int | None:
    try:
        expiration = datetime.fromisoformat(text)
    except ValueError:
        return None
    if expiration.tzinfo is None:
        # Every known client writes UTC; a zone-less date is read as UTC, not as server-local time.
        expiration = expiration.replace(tzinfo=UTC)
    try:
        return int(expiration.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        return None


def _require_signer(index: int, message: str, signature: str, authority: str) -> None:
    try:
        signer = recover_personal_signer(message, signature)
    except ValueError as exc:
        # Also covers payloads that cannot be UTF-8 encoded (lone surrogates from JSON escapes).
        raise AuthError("bad-signature", f"link {index}: {exc}") from exc
    if signer != authority.lower():
        raise AuthError("signer-mismatch", f"link {index} is not signed by the current authority")
