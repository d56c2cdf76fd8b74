"""Ethereum primitives needed by the AuthChain: keccak, EIP-191 personal_sign, EIP-55.

All curve maths runs in libsecp256k1 (through coincurve); nothing here is pure-Python crypto.
"""

from __future__ import annotations

from coincurve import PrivateKey, PublicKey
from sha3 import keccak_256

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def keccak256(data: bytes) -> bytes:
    """Original Keccak-256 (Ethereum's hash), which is not the standardised SHA3-256.

    From safe-pysha3 (the maintained pysha3, eth-hash's C backend): about 1 us a call, where
    pycryptodome's public hash object costs over 10 us, and every login hashes two to four
    times.
    """
    return keccak_256(data).digest()


def personal_message_hash(message: str) -> bytes:
    """EIP-191 version 0x45 hash, what wallets sign for `personal_sign`."""
    data = message.encode("utf-8")
    return keccak256(_PERSONAL_PREFIX + str(len(data)).encode("ascii") + data)


def _address_of_public_key(public_key: PublicKey) -> str:
    # Uncompressed SEC1 encoding starts with 0x04; the address hashes only the X‖Y coordinates.
    return "0x" + keccak256(public_key.format(compressed=False)[1:])[12:].hex()


def is_address(value: str) -> bool:
    """True for `0x` followed by exactly 40 hex digits, in any case."""
    return len(value) == 42 and value.startswith("0x") and _HEX_DIGITS.issuperset(value[2:])


def recover_personal_signer(message: str, signature: str) -> str:
    """Lower-case address whose key made `signature` (r‖s‖v, 0x-hex) over `message`.

    Raises ValueError when the signature is malformed or no key can be recovered.
    """
    if len(signature) != 132 or not signature.startswith("0x"):
        raise ValueError("signature must be 0x followed by 130 hex digits")
    raw = bytes.fromhex(signature[2:])
    # fromhex skips embedded whitespace, so the length must be checked on the bytes too.
    if len(raw) != 65:
        raise ValueError("signature must be 65 bytes")
    v = raw[64]
    # Wallets emit v as 27/28 (legacy Ethereum); some libraries emit the bare recovery id.
    if v >= 27:
        v -= 27
    if v > 1:
        raise ValueError(f"unsupported signature recovery id {raw[64]}")
    public_key = PublicKey.from_signature_and_message(
        raw[:64] + bytes((v,)), personal_message_hash(message), hasher=None
    )
    return _address_of_public_key(public_key)


def address_of_private_key(key: bytes) -> str:
    """Lower-case address of a 32-byte secp256k1 private key."""
    return _address_of_public_key(PrivateKey(key).public_key)


def sign_personal_message(private_key: bytes, message: str) -> str:
    """`personal_sign` as ethers/@dcl/crypto produce it: 0x-hex r‖s‖v with v in {27, 28}."""
    raw = PrivateKey(private_key).sign_recoverable(personal_message_hash(message), hasher=None)
    return "0x" + raw[:64].hex() + format(raw[64] + 27, "02x")


def to_checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of an address, as @dcl/crypto writes it into signed payloads."""
    if not is_address(address):
        raise ValueError(f"not an address: {address!r}")
    lower = address[2:].lower()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if int(nibble, 16) >= 8 else ch
        for ch, nibble in zip(lower, digest[:40], strict=True)
    )
