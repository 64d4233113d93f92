"""A spurious EADDRNOTAVAIL on a kernel-picked port is retried within the budget, as Go's dialer does."""

from __future__ import annotations

import errno
import socket

import pytest

import selfguard
from selfguard import _state
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import free_port, set_port_range

from helpers import port_in_time_wait

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


def test_spurious_eaddrnotavail_is_retried_within_the_budget(forced, free_port):
    """A kernel-picked port that fails with EADDRNOTAVAIL is retried, then the last error is raised as it was."""
    port = free_port()
    port_in_time_wait(forced, port)
    probe = forced(port)
    assert errno.EADDRNOTAVAIL == probe.connect_ex(("127.0.0.1", port))  # the situation, unguarded

    selfguard.install()
    with pytest.raises(OSError) as caught:
        forced(port).connect(("127.0.0.1", port))
    assert errno.EADDRNOTAVAIL == caught.value.errno
    assert type(caught.value) is OSError
    assert {"addrnotavail": 3, "retries": 2} == {k: selfguard.stats()[k] for k in ("addrnotavail", "retries")}


def test_an_eaddrnotavail_retry_can_succeed(forced, free_port):
    """When a retry may use another port, it gets through: here to the truth, connection refused."""
    port = free_port()
    port_in_time_wait(forced, port)
    selfguard.install()
    sock = forced(port)
    selfguard.add_listener(lambda event: event.kind == "retry" and set_port_range(sock, 0, 0))
    assert errno.ECONNREFUSED == sock.connect_ex(("127.0.0.1", port))
    assert {"addrnotavail": 1, "retries": 1} == {k: selfguard.stats()[k] for k in ("addrnotavail", "retries")}


def test_eaddrnotavail_retries_can_be_turned_off(forced, free_port):
    """retry_addrnotavail=False returns the first EADDRNOTAVAIL untouched."""
    port = free_port()
    port_in_time_wait(forced, port)
    selfguard.install(retry_addrnotavail=False)
    assert errno.EADDRNOTAVAIL == forced(port).connect_ex(("127.0.0.1", port))
    assert 0 == selfguard.stats()["retries"]


def test_eaddrnotavail_on_an_explicitly_bound_port_is_not_retried(free_port):
    """EADDRNOTAVAIL on a port the user bound is theirs to handle: no retry."""
    selfguard.install()
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as srv:  # a destination inside the range
        first, second = socket.socket(), socket.socket()
        try:
            for sock in (first, second):  # two sockets on one explicit port, to one destination
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
            first.connect(srv.getsockname())
            assert errno.EADDRNOTAVAIL == second.connect_ex(srv.getsockname())
        finally:
            first.close()
            second.close()
    assert 0 == selfguard.stats()["addrnotavail"]


def _outside_the_range() -> int:
    low, high = read_ephemeral_range()
    return free_port(max(1024, low - 2000), low - 1) if low > 2024 else free_port(high + 1, min(65535, high + 2000))


def test_eaddrnotavail_on_a_port_bound_outside_the_range_is_not_retried():
    """A bind outside the range is not remembered (nothing needs it); the kernel still says the socket is bound."""
    port = _outside_the_range()
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv:  # a destination inside the range
        first, second = socket.socket(), socket.socket()
        try:
            for sock in (first, second):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
            assert 0 == len(_state.state.user_bound)
            first.connect(srv.getsockname())
            assert errno.EADDRNOTAVAIL == second.connect_ex(srv.getsockname())
        finally:
            first.close()
            second.close()
    assert {"addrnotavail": 0, "retries": 0} == {k: selfguard.stats()[k] for k in ("addrnotavail", "retries")}


def test_only_a_bind_inside_the_range_is_remembered():
    """Binds inside the range are remembered: a connect from there to its own port is the user's. None else is."""
    selfguard.install()
    inside, outside, unix = socket.socket(), socket.socket(), socket.socket(socket.AF_UNIX)
    inside.bind(("127.0.0.1", free_port()))  # selfguard.testing's: inside the range
    outside.bind(("127.0.0.1", _outside_the_range()))
    unix.bind("")  # autobind: an abstract name, no port
    try:
        assert inside in _state.state.user_bound
        assert 1 == len(_state.state.user_bound)
    finally:
        for sock in (inside, outside, unix):
            sock.close()
