"""The fuzzers' invariants (fuzz/targets.py) over every input of fuzz/corpus/, and the inputs
the fuzzers found, as plain unit tests (no fuzzer needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection

from fuzz import targets
from fuzz.targets import TARGETS
from presenced.ws import frames as ws_frames
from presenced.ws.frames import InboundFrames

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
INPUTS = sorted((t, p) for t in TARGETS for p in (CORPUS / t).iterdir())


def test_every_target_has_a_corpus():
    assert {t for t, _ in INPUTS} == set(TARGETS)


@pytest.mark.parametrize("target, path", INPUTS, ids=[f"{t}/{p.name}" for t, p in INPUTS])
def test_corpus_input_keeps_the_invariants(target, path):
    TARGETS[target](path.read_bytes())


def test_the_ws_check_catches_a_splitter_that_reads_differently(monkeypatch):
    # The invariants are not vacuous: a splitter that garbles payloads is caught.
    monkeypatch.setattr(ws_frames, "unmask", lambda key, payload: payload[::-1] + b"!")
    seeds = [p.read_bytes() for t, p in INPUTS if t == "ws_frames"]
    failures = 0
    for seed in seeds:
        try:
            targets.check_ws_frames(seed)
        except AssertionError:
            failures += 1
    assert failures


# ------------------------------------------------------ found by the ws_frames fuzzer


def masked(b0: int, length_field: bytes, payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((b0, 0x80 | length_field[0])) + length_field[1:] + key + body


@pytest.mark.parametrize("length_field", [
    bytes((126,)) + (42).to_bytes(2, "big"),  # 2 length bytes where the 7-bit form would do
    bytes((127,)) + (42).to_bytes(8, "big"),
    bytes((127,)) + (300).to_bytes(8, "big"),
])
def test_a_frame_with_a_non_minimal_length_goes_to_wsproto_which_refuses_it(length_field):
    # The splitter used to read these as messages; wsproto (RFC 6455 5.2) closes with 1002.
    n = int.from_bytes(length_field[1:], "big")
    frame = masked(0x82, length_field, bytes(n))
    frames = InboundFrames(1000)
    frames.synced()
    assert frames.feed(frame) == ([], frame)
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(frame)
    (event,) = ws.events()
    assert isinstance(event, CloseConnection) and event.code == 1002


def test_an_incomplete_header_is_held_and_judged_by_wsproto_once_released():
    # A ping announcing a 64-bit length (invalid for a control frame): wsproto alone refuses
    # it from its first two bytes, the splitter holds them until the header is complete. The
    # splitter only tells wsproto later, never differently (nothing is read from it).
    start = b"\xe9\xff"
    frames = InboundFrames(1000)
    frames.synced()
    assert frames.feed(start) == ([], b"")
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(frames.release())
    (event,) = ws.events()
    assert isinstance(event, CloseConnection) and event.code == 1002
