"""Connection caps and login deadlines (presenced.server.admission), without sockets."""

from __future__ import annotations

from presenced.closes import Close
from presenced.server.admission import Admission, Limits, derive_limits, fd_reserve, source_key


class Sock:
    def __init__(self, source: str, accepted_at: float) -> None:
        self.source = source
        self.accepted_at = accepted_at
        self.awaiting_login = True
        self.admission_ticket = None
        self.busy = False


def limits(**overrides) -> Limits:
    values = dict(sockets=100, logged_in=50, pending=10, pending_per_source=2,
                  login_timeout_s=30.0, grace_s=3.0)
    values.update(overrides)
    return Limits(**values)


def idle(sock: Sock) -> bool:
    return not sock.busy


def test_limits_derive_from_the_descriptor_limit():
    derived = derive_limits(nofile=20_000, redis_pool_size=16, max_connections=0,
                            max_pending=0, max_pending_per_source=0, login_timeout_s=30)
    assert derived.sockets == 20_000 - fd_reserve(16)
    assert derived.logged_in == derived.sockets
    assert derived.pending == min(16384, derived.sockets)
    assert derived.pending_per_source == 64
    tiny = derive_limits(nofile=50, redis_pool_size=0, max_connections=0, max_pending=0,
                         max_pending_per_source=0, login_timeout_s=30)
    assert tiny.sockets == 16 and tiny.pending == 16


def test_counts_follow_sockets_through_the_login():
    admission = Admission(limits(pending=2))
    a, b = Sock("1.1.1.1", 0.0), Sock("1.1.1.1", 0.0)
    admission.opened(a, 0.0)
    assert admission.accepting()
    admission.opened(b, 0.0)
    assert not admission.accepting()  # two awaiting login: the cap
    assert admission.by_source == {"1.1.1.1": 2}
    a.awaiting_login = False
    admission.left_login(a, logged_in=True)
    assert admission.accepting() and admission.logged_in == 1 and admission.pending == 1
    admission.logged_out()
    admission.closed()
    assert (admission.sockets, admission.logged_in) == (1, 0)


def test_the_socket_cap_counts_every_open_socket():
    admission = Admission(limits(sockets=2))
    for i in range(2):
        sock = Sock(f"10.0.0.{i}", 0.0)
        admission.opened(sock, 0.0)
        sock.awaiting_login = False
        admission.left_login(sock, logged_in=True)
    assert admission.pending == 0 and not admission.accepting()
    admission.closed()
    assert admission.accepting()


def test_full_at_the_cap_of_logged_in_connections():
    admission = Admission(limits(logged_in=1))
    sock = Sock("1.1.1.1", 0.0)
    admission.opened(sock, 0.0)
    assert not admission.full()
    admission.left_login(sock, logged_in=True)
    assert admission.full()


def test_the_login_timeout_applies_to_everyone():
    admission = Admission(limits(login_timeout_s=1.0, grace_s=3.0))
    sock = Sock("1.1.1.1", 0.0)
    admission.opened(sock, 0.0)
    assert admission.next_check() == 1.0
    assert admission.due(0.5, idle) == []
    assert admission.due(1.0, idle) == [(sock, Close.AUTH_TIMEOUT)]


def test_past_the_grace_silent_sockets_over_the_per_address_limit_go_oldest_first():
    admission = Admission(limits())
    socks = [Sock("1.1.1.1", t) for t in (0.0, 0.1, 0.2, 0.3)]
    other = Sock("2.2.2.2", 0.0)
    for sock in socks:
        admission.opened(sock, sock.accepted_at)
    admission.opened(other, 0.0)
    assert admission.due(2.9, idle) == []
    # At 3.1 the first two have waited the grace: both go (4 > 2, then 3 > 2).
    assert admission.due(3.15, idle) == [(socks[0], Close.LOGIN_LIMIT),
                                         (socks[1], Close.LOGIN_LIMIT)]
    for sock in socks[:2]:
        sock.awaiting_login = False
        admission.left_login(sock, logged_in=False)
    # The others are within the limit now; the other address was never over it.
    assert admission.due(3.5, idle) == []
    assert admission.next_check() == 30.0
    assert [s for s, _ in admission.due(30.3, idle)] == [other, socks[2], socks[3]]


def test_a_socket_with_unread_input_is_not_silent():
    admission = Admission(limits(pending_per_source=0))
    sock = Sock("1.1.1.1", 0.0)
    sock.busy = True
    admission.opened(sock, 0.0)
    assert admission.due(3.0, idle) == []
    assert admission.next_check() == 6.0  # looked at again after another grace
    sock.busy = False
    assert admission.due(6.0, idle) == [(sock, Close.LOGIN_LIMIT)]


def test_a_socket_that_left_the_login_is_not_held_by_the_heap():
    import gc
    import weakref

    admission = Admission(limits())
    sock = Sock("1.1.1.1", 0.0)
    admission.opened(sock, 0.0)
    sock.awaiting_login = False
    admission.left_login(sock, logged_in=True)
    ref = weakref.ref(sock)
    gc.disable()
    try:
        del sock
        assert ref() is None
    finally:
        gc.enable()
    assert admission.due(3.0, idle) == []


def test_source_keys():
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:3:4:5:6") == source_key("2001:db8:1:2::9") == \
        "2001:db8:1:2::/64"
