import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from presenced.auth import (
    AUTH_FAILURE_REASONS,
    AuthError,
    Identity,
    SeenLogins,
    VerifiedLinks,
    address_of_private_key,
    ephemeral_message,
    keccak256,
    login_frame,
    login_headers,
    recover_personal_signer,
    sign_personal_message,
    to_checksum_address,
    verify_auth_chain,
    verify_login,
    verify_login_once,
)

# Test vector produced by the real @dcl/crypto (deterministic RFC 6979 signatures).
OWNER_KEY = bytes([0x11]) * 32
EPHEMERAL_KEY = bytes([0x22]) * 32
OWNER = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
EPHEMERAL = "0x1563915e194D8CfBA1943570603F7606A3115508"
EXPIRATION = datetime(2099, 1, 1, tzinfo=UTC)
TS = 1700000000000
LINK1_SIG = (
    "0xcdddebfa1de8a7edd5c4a3dac5890590050d21ab9d997586e3aa0e3741fa4a8d"
    "39a1d7e065e849aff79fe63787a4b3fd084d1f8797d78b920752d2531e0ef6001c"
)
LINK2_SIG = (
    "0x1fb51464b887b67bc7259fd496435a2a844c7e524bdfbb2b0fe11f90c7afd1ad"
    "13090940cf932b910e56f0347af99faa561147d8d5c217b3499f4c8db16e6f691c"
)
NOW = TS + 1000


@pytest.fixture(scope="module")
def vector() -> Identity:
    return Identity.from_keys(OWNER_KEY, EPHEMERAL_KEY, EXPIRATION)


def headers_of(identity: Identity, ts: int = TS, metadata: str = "{}") -> dict:
    return login_headers(identity, ts, metadata)


def frame_of(headers: dict) -> str:
    return json.dumps(headers)


def reason_of(frame: object, now_ms: int = NOW, window_ms: int = 300_000) -> str:
    with pytest.raises(AuthError) as info:
        verify_login(frame, now_ms=now_ms, window_ms=window_ms)  # type: ignore[arg-type]
    assert info.value.reason in AUTH_FAILURE_REASONS
    return info.value.reason


def set_link(headers: dict, index: int, **changes: str) -> dict:
    link = json.loads(headers[f"x-identity-auth-chain-{index}"])
    link.update(changes)
    return {**headers, f"x-identity-auth-chain-{index}": json.dumps(link)}


# --- primitives and the test vector ---


def test_keccak_is_not_sha3() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


def test_vector_addresses() -> None:
    assert to_checksum_address(address_of_private_key(OWNER_KEY)) == OWNER
    assert to_checksum_address(address_of_private_key(EPHEMERAL_KEY)) == EPHEMERAL
    assert address_of_private_key(OWNER_KEY) == OWNER.lower()


def test_vector_signatures_byte_for_byte(vector: Identity) -> None:
    message = ephemeral_message(EPHEMERAL, EXPIRATION)
    assert message == (
        "Decentraland Login\nEphemeral address: "
        "0x1563915e194D8CfBA1943570603F7606A3115508\nExpiration: 2099-01-01T00:00:00.000Z"
    )
    assert sign_personal_message(OWNER_KEY, message) == LINK1_SIG
    assert sign_personal_message(EPHEMERAL_KEY, f"get:/:{TS}:{{}}") == LINK2_SIG
    assert vector.auth_chain[1]["signature"] == LINK1_SIG
    headers = headers_of(vector)
    assert json.loads(headers["x-identity-auth-chain-2"]) == {
        "type": "ECDSA_SIGNED_ENTITY",
        "payload": "get:/:1700000000000:{}",
        "signature": LINK2_SIG,
    }
    assert json.loads(headers["x-identity-auth-chain-0"]) == {
        "type": "SIGNER",
        "payload": OWNER,
        "signature": "",
    }
    assert headers["x-identity-timestamp"] == "1700000000000"
    assert headers["x-identity-metadata"] == "{}"


def test_recover_accepts_v_as_recovery_id() -> None:
    message = "hello"
    signature = sign_personal_message(OWNER_KEY, message)
    bare = signature[:-2] + format(int(signature[-2:], 16) - 27, "02x")
    assert recover_personal_signer(message, signature) == OWNER.lower()
    assert recover_personal_signer(message, bare) == OWNER.lower()


def test_vector_login(vector: Identity) -> None:
    frame = login_frame(vector, TS)
    assert verify_login(frame, now_ms=NOW) == OWNER.lower()
    assert verify_login(frame.encode(), now_ms=NOW) == OWNER.lower()
    real_now = int(time.time() * 1000)
    assert verify_login(frame, now_ms=real_now, window_ms=real_now) == OWNER.lower()


def test_crlf_ephemeral_payload_accepted(vector: Identity) -> None:
    headers = set_link(
        headers_of(vector), 1, payload=vector.auth_chain[1]["payload"].replace("\n", "\r\n")
    )
    assert verify_login(frame_of(headers), now_ms=NOW) == OWNER.lower()


def test_two_link_chain_signed_by_owner() -> None:
    payload = f"get:/:{TS}:{{}}"
    links = [
        {"type": "SIGNER", "payload": OWNER, "signature": ""},
        {
            "type": "ECDSA_SIGNED_ENTITY",
            "payload": payload,
            "signature": sign_personal_message(OWNER_KEY, payload),
        },
    ]
    assert verify_auth_chain(links, payload, NOW) == OWNER.lower()


def test_generated_identity_is_reproducible() -> None:
    first = Identity.generate(random.Random(1))
    second = Identity.generate(random.Random(1))
    assert first.owner_address == second.owner_address
    assert first.ephemeral_address == second.ephemeral_address
    assert first.owner_address != Identity.generate(random.Random(2)).owner_address
    now = int(time.time() * 1000)
    assert verify_login(login_frame(first, now), now_ms=now) == first.address


# --- each failure has its reason ---


def test_reasons_are_unique() -> None:
    assert len(set(AUTH_FAILURE_REASONS)) == len(AUTH_FAILURE_REASONS)


def test_tampered_payload(vector: Identity) -> None:
    headers = set_link(headers_of(vector), 2, payload=f"get:/:{TS + 1}:{{}}")
    assert reason_of(frame_of(headers)) == "signer-mismatch"
    # Signed correctly but for another timestamp than the header claims.
    headers = {**headers_of(vector), "x-identity-timestamp": str(TS + 1)}
    assert reason_of(frame_of(headers)) == "payload-mismatch"
    headers = {**headers_of(vector), "x-identity-metadata": '{"a":1}'}
    assert reason_of(frame_of(headers)) == "payload-mismatch"


def test_signature_by_wrong_key(vector: Identity) -> None:
    payload = f"get:/:{TS}:{{}}"
    wrong = sign_personal_message(bytes([0x33]) * 32, payload)
    assert reason_of(frame_of(set_link(headers_of(vector), 2, signature=wrong))) == (
        "signer-mismatch"
    )
    message = vector.auth_chain[1]["payload"]
    wrong = sign_personal_message(EPHEMERAL_KEY, message)
    assert reason_of(frame_of(set_link(headers_of(vector), 1, signature=wrong))) == (
        "signer-mismatch"
    )


def test_bad_signature_bytes(vector: Identity) -> None:
    for signature in ("0x" + "zz" * 65, "0x" + "00" * 65, LINK2_SIG[:-2] + "1d", "0x" + " " * 130):
        headers = set_link(headers_of(vector), 2, signature=signature)
        assert reason_of(frame_of(headers)) == "bad-signature"
    assert reason_of(frame_of(set_link(headers_of(vector), 2, signature=""))) == "bad-signature"


def test_expired_ephemeral_key() -> None:
    expiration = datetime.fromtimestamp(NOW / 1000, UTC) - timedelta(seconds=1)
    identity = Identity.from_keys(OWNER_KEY, EPHEMERAL_KEY, expiration)
    assert reason_of(login_frame(identity, TS)) == "ephemeral-expired"
    # Expiring exactly now is already expired.
    identity = Identity.from_keys(OWNER_KEY, EPHEMERAL_KEY, datetime.fromtimestamp(NOW / 1000, UTC))
    assert reason_of(login_frame(identity, TS)) == "ephemeral-expired"


def test_bad_ephemeral_payload(vector: Identity) -> None:
    good = vector.auth_chain[1]["payload"]
    for payload in (
        good.replace("Decentraland Login", "Decentraland login"),
        good.replace("2099-01-01T00:00:00.000Z", "tomorrow"),
        good.replace(EPHEMERAL, "0x1234"),
        good + "\nextra",
    ):
        headers = set_link(headers_of(vector), 1, payload=payload)
        assert reason_of(frame_of(headers)) == "bad-ephemeral-payload"


def test_signer_not_first(vector: Identity) -> None:
    headers = headers_of(vector)
    swapped = {
        **headers,
        "x-identity-auth-chain-0": headers["x-identity-auth-chain-1"],
        "x-identity-auth-chain-1": headers["x-identity-auth-chain-0"],
    }
    assert reason_of(frame_of(swapped)) == "signer-not-first"


def test_signer_twice(vector: Identity) -> None:
    headers = headers_of(vector)
    headers["x-identity-auth-chain-3"] = headers["x-identity-auth-chain-2"]
    headers["x-identity-auth-chain-2"] = headers["x-identity-auth-chain-0"]
    assert reason_of(frame_of(headers)) == "signer-repeated"


def test_timestamp_window(vector: Identity) -> None:
    frame = login_frame(vector, TS)
    assert reason_of(frame, now_ms=TS + 300_001) == "timestamp-out-of-window"
    assert reason_of(frame, now_ms=TS - 300_001) == "timestamp-out-of-window"
    assert verify_login(frame, now_ms=TS + 300_000) == OWNER.lower()
    assert verify_login(frame, now_ms=TS - 300_000) == OWNER.lower()


@pytest.mark.parametrize("value", [None, "", "12a", "-1", "1e12", "١٢", "9" * 5000, 1700000000000])
def test_bad_timestamp(vector: Identity, value: object) -> None:
    headers = headers_of(vector)
    if value is None:
        del headers["x-identity-timestamp"]
    else:
        headers["x-identity-timestamp"] = value
    assert reason_of(frame_of(headers)) == "bad-timestamp"


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\xff\xfe\x00garbage\x80",
        bytes(range(256)),
        "",
        "[1, 2, 3]",
        '"a string"',
        "null",
        "[" * 100_000,
        "1" * 5000,
    ],
)
def test_garbage_frames(frame: object) -> None:
    assert reason_of(frame) == "bad-json"


def test_missing_chain(vector: Identity) -> None:
    headers = {k: v for k, v in headers_of(vector).items() if "chain" not in k}
    assert reason_of(frame_of(headers)) == "missing-chain"
    headers = {k: v for k, v in headers_of(vector).items() if k != "x-identity-auth-chain-0"}
    assert reason_of(frame_of(headers)) == "missing-chain"
    assert reason_of("{}") == "missing-chain"


def test_chain_of_one_link(vector: Identity) -> None:
    headers = headers_of(vector)
    del headers["x-identity-auth-chain-1"]  # link 2 is then past the gap and ignored
    assert reason_of(frame_of(headers)) == "chain-too-short"


def test_chain_too_long(vector: Identity) -> None:
    headers = headers_of(vector)
    for index in range(3, 12):
        headers[f"x-identity-auth-chain-{index}"] = headers["x-identity-auth-chain-2"]
    assert reason_of(frame_of(headers)) == "chain-too-long"


def test_bad_links(vector: Identity) -> None:
    for value in ("not json", "[]", '"x"', "{}", '{"type": 1, "payload": "", "signature": ""}'):
        headers = {**headers_of(vector), "x-identity-auth-chain-1": value}
        assert reason_of(frame_of(headers)) == "bad-link"
    headers = {**headers_of(vector), "x-identity-auth-chain-1": {"type": "SIGNER"}}
    assert reason_of(frame_of(headers)) == "bad-link"
    assert reason_of(frame_of(set_link(headers_of(vector), 2, type="MYSTERY"))) == "bad-link"
    assert reason_of(frame_of(set_link(headers_of(vector), 0, payload="alice"))) == "bad-link"


def test_forbidden_signer(vector: Identity) -> None:
    metadata = '{"signer":"decentraland-kernel-scene"}'
    assert reason_of(login_frame(vector, TS, metadata)) == "forbidden-signer"
    other = '{"signer":"dcl:explorer"}'
    assert verify_login(login_frame(vector, TS, other), now_ms=NOW) == OWNER.lower()


@pytest.mark.parametrize("metadata", ["not json", "[]", "1", "null", 5])
def test_bad_metadata(vector: Identity, metadata: object) -> None:
    headers = {**headers_of(vector), "x-identity-metadata": metadata}
    assert reason_of(frame_of(headers)) == "bad-metadata"


def test_eip1654_link_type(vector: Identity) -> None:
    for index, kind in ((1, "ECDSA_EIP_1654_EPHEMERAL"), (2, "ECDSA_EIP_1654_SIGNED_ENTITY")):
        headers = set_link(headers_of(vector), index, type=kind)
        with pytest.raises(AuthError) as info:
            verify_login(frame_of(headers), now_ms=NOW)
        assert info.value.reason == "unsupported-eip1654"
        assert "EIP-1654" in info.value.message


def test_short_signature(vector: Identity) -> None:
    headers = set_link(headers_of(vector), 2, signature=LINK2_SIG[:-2])
    assert reason_of(frame_of(headers)) == "unsupported-eip1654"
    headers = set_link(headers_of(vector), 1, signature=LINK1_SIG + "00" * 10)
    assert reason_of(frame_of(headers)) == "unsupported-eip1654"


def test_verify_auth_chain_rejects_odd_inputs() -> None:
    for links in (None, [], "abc", [1, 2], [{"type": "SIGNER", "payload": OWNER}]):
        with pytest.raises(AuthError):
            verify_auth_chain(links, "x", NOW)  # type: ignore[arg-type]


# --- property-style: mutations only ever raise AuthError ---

_ODD_VALUES = [None, 0, -1, 10**30, 1.5, True, [], {}, [1], {"a": "b"}, "", "\ud800", "x" * 300]


def _mutate_text(rng: random.Random, text: str) -> str:
    if not text:
        return rng.choice(["{", "0x", "\x00"])
    i = rng.randrange(len(text))
    op = rng.randrange(3)
    if op == 0:
        return text[:i] + text[i + 1 :]
    char = rng.choice('{}[]":,0x1aAfZ\n\r\\ \u00e9\ud800')
    return text[:i] + char + text[i + (op == 1) :]


def _mutate(rng: random.Random, headers: dict) -> object:
    headers = dict(headers)
    key = rng.choice(list(headers))
    op = rng.randrange(8)
    if op == 0:
        del headers[key]
    elif op == 1:
        headers[key] = rng.choice(_ODD_VALUES)
    elif op == 2 and isinstance(headers[key], str):
        headers[key] = _mutate_text(rng, headers[key])
    elif op == 3 and "chain" in key:
        link = json.loads(headers[key])
        field = rng.choice(["type", "payload", "signature"])
        if rng.random() < 0.5:
            link.pop(field)
        else:
            link[field] = rng.choice([*_ODD_VALUES, "SIGNER", "ECDSA_EPHEMERAL"])
        headers[key] = json.dumps(link)
    elif op == 4:
        return rng.choice(_ODD_VALUES) if rng.random() < 0.5 else list(headers.values())
    elif op == 5:
        text = json.dumps(headers)
        for _ in range(rng.randrange(1, 4)):
            text = _mutate_text(rng, text)
        return text.encode("utf-8", "surrogatepass") if rng.random() < 0.5 else text
    elif op == 6:
        data = bytearray(json.dumps(headers).encode())
        data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    else:
        headers[f"x-identity-auth-chain-{rng.randrange(6)}"] = rng.choice(
            [*_ODD_VALUES, headers.get("x-identity-auth-chain-0")]
        )
    return json.dumps(headers)


def test_random_mutations_only_raise_auth_error(vector: Identity) -> None:
    rng = random.Random(20240501)
    base = headers_of(vector)
    accepted = 0
    for _ in range(2000):
        frame = _mutate(rng, base)
        try:
            verify_login(frame, now_ms=NOW)  # type: ignore[arg-type]
            accepted += 1
        except AuthError as exc:
            assert exc.reason in AUTH_FAILURE_REASONS
    # Only harmless mutations (e.g. extra chain links past a gap) may still verify.
    assert accepted < 2000


# --- verified ephemeral links remembered across logins ---


def test_a_remembered_link_is_accepted_again_and_nothing_else_is(vector: Identity) -> None:
    links = VerifiedLinks(10)
    assert verify_login(login_frame(vector, TS), now_ms=NOW, verified_links=links) == \
        OWNER.lower()
    assert len(links) == 1
    # The next login (a fresh last link) reuses the remembered ephemeral link.
    assert verify_login(login_frame(vector, TS + 5), now_ms=NOW + 5,
                        verified_links=links) == OWNER.lower()
    assert len(links) == 1
    # The same link 1 under another SIGNER is another triple: verified, and refused.
    other = to_checksum_address(address_of_private_key(bytes([0x33]) * 32))
    headers = set_link(headers_of(vector), 0, payload=other)
    with pytest.raises(AuthError) as info:
        verify_login(frame_of(headers), now_ms=NOW, verified_links=links)
    assert info.value.reason == "signer-mismatch"
    # A tampered signature is not in the memory either.
    tampered = LINK1_SIG[:-4] + ("00" if LINK1_SIG[-4:-2] != "00" else "01") + LINK1_SIG[-2:]
    headers = set_link(headers_of(vector), 1, signature=tampered)
    with pytest.raises(AuthError):
        verify_login(frame_of(headers), now_ms=NOW, verified_links=links)
    assert len(links) == 1


def test_a_remembered_link_expires_with_the_ephemeral_key() -> None:
    links = VerifiedLinks(10)
    expiration = datetime.fromtimestamp((NOW + 10_000) / 1000, UTC)
    identity = Identity.from_keys(OWNER_KEY, EPHEMERAL_KEY, expiration)
    verify_login(login_frame(identity, TS), now_ms=NOW, verified_links=links)
    link = identity.auth_chain[1]
    key = VerifiedLinks.key(OWNER, link["payload"], link["signature"])
    assert links.verified(key, NOW + 9_999)
    assert not links.verified(key, NOW + 10_000) and len(links) == 0


def test_the_memory_of_verified_links_is_bounded() -> None:
    links = VerifiedLinks(3)
    for i in range(5):
        links.remember(VerifiedLinks.key("0xa", f"message {i}", "0xsig"), NOW + 1000)
    assert len(links) == 3
    assert not links.verified(VerifiedLinks.key("0xa", "message 0", "0xsig"), NOW)
    assert links.verified(VerifiedLinks.key("0xa", "message 4", "0xsig"), NOW)
    # Lone surrogates (JSON escapes in a payload) make a key too.
    VerifiedLinks.key("0xa", "\ud800", "0xsig")


# --- login replay: a frame opens one session ---

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def once(frame: object, seen: SeenLogins, now_ms: int = NOW) -> str:
    return verify_login_once(frame, now_ms=now_ms, seen_logins=seen).address  # type: ignore[arg-type]


def refused_once(frame: object, seen: SeenLogins, now_ms: int = NOW) -> str:
    with pytest.raises(AuthError) as info:
        verify_login_once(frame, now_ms=now_ms, seen_logins=seen)  # type: ignore[arg-type]
    return info.value.reason


def test_a_login_frame_is_accepted_once(vector: Identity) -> None:
    seen = SeenLogins()
    frame = login_frame(vector, TS)
    assert once(frame, seen) == OWNER.lower()
    assert refused_once(frame, seen, NOW + 60_000) == "replayed"
    assert refused_once(frame.encode(), seen) == "replayed"
    # The next login of the same client signs another timestamp: accepted.
    assert once(login_frame(vector, TS + 1), seen) == OWNER.lower()
    assert len(seen) == 2


def test_a_replay_cannot_vary_what_was_not_signed(vector: Identity) -> None:
    seen = SeenLogins()
    headers = headers_of(vector)
    once(frame_of(headers), seen)
    last = json.loads(headers["x-identity-auth-chain-2"])
    signature = last["signature"]
    # Upper-case hex, CRLF in the ephemeral message, the SIGNER in another case: each still
    # verifies (or is refused for its signature), and none is a new frame.
    variants = [
        set_link(headers, 2, signature="0x" + signature[2:].upper()),
        set_link(headers, 1, payload=vector.auth_chain[1]["payload"].replace("\n", "\r\n")),
        set_link(headers, 0, payload=OWNER.lower()),
    ]
    # The other valid ECDSA signature of the same payload: (r, n - s) with v flipped.
    raw = bytes.fromhex(signature[2:])
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    flipped = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([27 + 28 - v])
    variants.append(set_link(headers, 2, signature="0x" + flipped.hex()))
    for variant in variants:
        assert refused_once(frame_of(variant), seen) in ("replayed", "bad-signature")
    assert len(seen) == 1


def test_a_forged_frame_is_not_remembered(vector: Identity) -> None:
    seen = SeenLogins()
    forged = set_link(headers_of(vector), 2,
                      signature=sign_personal_message(bytes([0x33]) * 32, f"get:/:{TS}:{{}}"))
    refused_once(frame_of(forged), seen)
    assert len(seen) == 0
    assert refused_once(login_frame(vector, TS - 400_000), seen) == "timestamp-out-of-window"
    assert len(seen) == 0


def test_a_seen_login_is_forgotten_when_its_window_closes() -> None:
    seen = SeenLogins()
    assert seen.first_use(b"a", expires_ms=1_000, now_ms=0)
    assert seen.first_use(b"b", expires_ms=2_000, now_ms=10)
    assert not seen.first_use(b"a", expires_ms=1_000, now_ms=999)
    # Expired entries leave from the front as new logins arrive.
    assert seen.first_use(b"c", expires_ms=3_000, now_ms=1_500)
    assert len(seen) == 2
    assert seen.first_use(b"a", expires_ms=4_000, now_ms=1_500)


def test_the_memory_of_seen_logins_is_bounded() -> None:
    seen = SeenLogins(3)
    for i in range(5):
        assert seen.first_use(bytes([i]), expires_ms=NOW + 1000, now_ms=NOW)
    assert len(seen) == 3 and seen.evicted == 2
    assert not seen.first_use(bytes([4]), expires_ms=NOW + 1000, now_ms=NOW)


def test_the_window_of_a_seen_login_is_that_of_its_timestamp(vector: Identity) -> None:
    seen = SeenLogins()
    frame = login_frame(vector, TS)
    once(frame, seen, NOW)
    # The last moment the timestamp is in the window, the frame is still a replay; after it,
    # the window refuses it anyway.
    assert refused_once(frame, seen, TS + 300_000) == "replayed"
    assert refused_once(frame, seen, TS + 300_001) == "timestamp-out-of-window"


def test_an_identity_signs_a_new_timestamp_for_every_login(vector: Identity) -> None:
    identity = Identity.from_keys(OWNER_KEY, EPHEMERAL_KEY, EXPIRATION)
    stamps = [identity.login_timestamp_ms() for _ in range(1000)]
    assert stamps == sorted(set(stamps))
    assert abs(stamps[0] - time.time() * 1000) < 60_000
