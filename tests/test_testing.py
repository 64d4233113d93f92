"""selfguard.testing.force_self_connects: forced self-connects, counted attempt by attempt, on any socket."""

from __future__ import annotations

import socket

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import close_rst

pytestmark = pytest.mark.usefixtures("needs_forcing")


def test_unguarded_the_forced_connect_really_self_connects(free_port):
    """Without the guard a forced connect ends up connected to itself, like the real bug."""
    port = free_port()
    with force_self_connects(port) as plan:
        sock = socket.socket()
        try:
            sock.connect(("127.0.0.1", port))
            assert selfguard.is_self_connected(sock)
        finally:
            close_rst(sock)
    assert 1 == plan.forced


def test_only_the_planned_number_of_attempts_is_forced(free_port):
    """times=2 forces two attempts; the third goes to a kernel-picked port as usual."""
    port = free_port()
    outcomes = []
    with force_self_connects(port, times=2) as plan:
        for _ in range(3):
            sock = socket.socket()
            outcomes.append(sock.connect_ex(("127.0.0.1", port)) == 0 and selfguard.is_self_connected(sock))
            close_rst(sock)
    assert [True, True, False] == outcomes
    assert (2, 0) == (plan.forced, plan.remaining)


def test_guard_retries_consume_the_plan_attempt_by_attempt(free_port):
    """With the guard installed, times=1 forces the first attempt and lets the retry through."""
    selfguard.install()
    port = free_port()
    with force_self_connects(port, times=1), pytest.raises(ConnectionRefusedError) as caught:
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not isinstance(caught.value, selfguard.SelfConnectError)
    assert {"self_connects": 1, "retries": 1} == {k: selfguard.stats()[k] for k in ("self_connects", "retries")}


def test_the_guard_stays_on_top_whichever_was_first(free_port):
    """Arming before install() and installing before arming give the same attempt-by-attempt counting."""
    port = free_port()
    with force_self_connects(port, times=1):
        selfguard.install()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert 1 == selfguard.stats()["retries"]
    assert selfguard.is_installed()


def test_leaving_the_block_restores_socket_socket(free_port):
    """After the block, socket.socket carries nothing of the helper's, with or without the guard."""
    with force_self_connects(free_port()):
        pass
    assert "connect" not in vars(socket.socket)
    selfguard.install()
    with force_self_connects(free_port()):
        pass
    assert selfguard.is_installed()
    assert vars(socket.socket)["connect"].__wrapped__ is socket._socket.socket.connect  # the guard, on the original


def test_a_port_outside_the_range_is_refused():
    """The kernel never picks a port outside the ephemeral range, so forcing one is an error."""
    with pytest.raises(ValueError, match="outside the ephemeral range"), force_self_connects(80):
        pass


def test_the_socket_keeps_its_own_port_range(free_port):
    """A range the application set on the socket is put back after the forced attempt."""
    from selfguard.testing import IP_LOCAL_PORT_RANGE, set_port_range

    port = free_port()
    sock = socket.socket()
    set_port_range(sock, 40000, 50000)
    before = sock.getsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE)
    with force_self_connects(port):
        sock.connect_ex(("127.0.0.1", port))
    assert before == sock.getsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE)
    close_rst(sock)
