"""A client connection's life, as a state machine without I/O (h11's `_state.py` rule).

    HANDSHAKE --opened--> LOGIN --verified--> LOADING --loaded--> ESTABLISHED
         \\                 \\                  \\                   \\
          `------------------`------------------`-------------------`--ended--> ENDED

- HANDSHAKE: the socket is accepted, the WebSocket upgrade not complete;
- LOGIN: the WebSocket is open, the login frame has not arrived;
- LOADING: the login is verified, the user's friend set is being fetched
  (from the store's cache at once, or from Redis);
- ESTABLISHED: the session runs: every message goes to it;
- ENDED: killed by the server or closed by the client; nothing more is
  delivered, the session (if any) has ended.

Everything `presenced.server.connection` decides (what a message means in each state, which
cause a connection ended with and how that is counted) is here; the connection only does
what these functions say.
"""

from __future__ import annotations

from enum import Enum

from presenced.closes import Close

__all__ = [
    "AWAITING_LOGIN",
    "Inbound",
    "LifecycleError",
    "Phase",
    "Step",
    "advance",
    "end_cause",
    "inbound",
    "login_failure",
]


class Phase(Enum):
    HANDSHAKE = "handshake"
    LOGIN = "login"
    LOADING = "loading"
    ESTABLISHED = "established"
    ENDED = "ended"


class Step(Enum):
    OPENED = "opened"  # the WebSocket handshake completed
    VERIFIED = "verified"  # the login frame's AuthChain checked out
    LOADED = "loaded"  # the friend set is known: the session starts
    ENDED = "ended"  # killed, closed, lost: from any phase


class LifecycleError(Exception):
    """A step that is not allowed in the current phase (a bug in the caller)."""


# Phases of a socket that has not logged in yet: what the login limits count.
AWAITING_LOGIN = frozenset({Phase.HANDSHAKE, Phase.LOGIN, Phase.LOADING})

_NEXT: dict[tuple[Phase, Step], Phase] = {
    (Phase.HANDSHAKE, Step.OPENED): Phase.LOGIN,
    (Phase.LOGIN, Step.VERIFIED): Phase.LOADING,
    (Phase.LOADING, Step.LOADED): Phase.ESTABLISHED,
}


def advance(phase: Phase, step: Step) -> Phase:
    """The phase after `step`; ENDED is reachable from every phase (and stays ENDED)."""
    if step is Step.ENDED:
        return Phase.ENDED
    try:
        return _NEXT[phase, step]
    except KeyError:
        raise LifecycleError(f"{step.value} while {phase.value}") from None


class Inbound(Enum):
    """What to do with a message that arrives."""

    VERIFY = "verify"  # the first message: the login frame
    HOLD = "hold"  # sent right behind the login (Unity does): kept until the session starts
    DELIVER = "deliver"  # to the session
    DROP = "drop"  # after the end


_INBOUND = {
    Phase.LOGIN: Inbound.VERIFY,
    Phase.LOADING: Inbound.HOLD,
    Phase.ESTABLISHED: Inbound.DELIVER,
    Phase.ENDED: Inbound.DROP,
    # The transport delivers no message before the handshake completes.
    Phase.HANDSHAKE: Inbound.DROP,
}


def inbound(phase: Phase) -> Inbound:
    return _INBOUND[phase]


def end_cause(killed: Close | None, failed: Close | None) -> Close:
    """Why a connection ended: our kill, else the WebSocket layer's failure of the peer's
    input (1009 oversized, 1002 malformed), else the client's doing (it closed or vanished)."""
    if killed is not None:
        return killed
    if failed is not None:
        return failed
    return Close.CLIENT


def login_failure(phase: Phase, cause: Close) -> str | None:
    """The `logins{result="failed"}` reason for a connection that ended in `phase`, or None.

    A refused login was counted with its AuthChain reason when it was refused; a socket
    that never completed the handshake never attempted a login.
    """
    if phase is not Phase.LOGIN and phase is not Phase.LOADING:
        return None
    if cause is Close.UNAUTHORIZED:
        return None
    if cause is Close.AUTH_TIMEOUT:
        return "timeout"
    return cause.label
