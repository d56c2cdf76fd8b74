"""A connection's life (presenced.server.lifecycle): transitions and decisions."""

from __future__ import annotations

import pytest

from presenced.closes import Close
from presenced.server.lifecycle import (
    AWAITING_LOGIN,
    Inbound,
    LifecycleError,
    Phase,
    Step,
    advance,
    end_cause,
    inbound,
    login_failure,
)


def test_the_happy_path():
    phase = Phase.HANDSHAKE
    for step, expected in ((Step.OPENED, Phase.LOGIN), (Step.VERIFIED, Phase.LOADING),
                           (Step.LOADED, Phase.ESTABLISHED), (Step.ENDED, Phase.ENDED)):
        phase = advance(phase, step)
        assert phase is expected
    assert advance(Phase.ENDED, Step.ENDED) is Phase.ENDED


@pytest.mark.parametrize("phase, step", [
    (Phase.HANDSHAKE, Step.VERIFIED), (Phase.LOGIN, Step.LOADED),
    (Phase.ESTABLISHED, Step.OPENED), (Phase.ENDED, Step.LOADED),
])
def test_steps_out_of_order_are_bugs(phase, step):
    with pytest.raises(LifecycleError):
        advance(phase, step)


def test_what_a_message_means():
    assert inbound(Phase.LOGIN) is Inbound.VERIFY
    assert inbound(Phase.LOADING) is Inbound.HOLD
    assert inbound(Phase.ESTABLISHED) is Inbound.DELIVER
    assert inbound(Phase.ENDED) is Inbound.DROP
    assert Phase.ESTABLISHED not in AWAITING_LOGIN and Phase.HANDSHAKE in AWAITING_LOGIN


def test_why_it_ended():
    assert end_cause(Close.FLOOD, Close.MESSAGE_TOO_BIG) is Close.FLOOD
    assert end_cause(None, Close.MESSAGE_TOO_BIG) is Close.MESSAGE_TOO_BIG
    assert end_cause(None, None) is Close.CLIENT


def test_login_failures_are_counted_once():
    assert login_failure(Phase.LOGIN, Close.AUTH_TIMEOUT) == "timeout"
    assert login_failure(Phase.LOGIN, Close.UNAUTHORIZED) is None  # counted with its reason
    assert login_failure(Phase.LOADING, Close.STORE_UNAVAILABLE) == "store"
    assert login_failure(Phase.LOGIN, Close.CLIENT) == "client"
    assert login_failure(Phase.HANDSHAKE, Close.AUTH_TIMEOUT) is None
    assert login_failure(Phase.ESTABLISHED, Close.CLIENT) is None
