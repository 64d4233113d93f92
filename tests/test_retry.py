"""Blocking connects meeting real self-connects: retried in place, given up, relented, observed, or left alone."""

from __future__ import annotations

import errno
import socket
import time

import pytest

import selfguard
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import set_port_range

from helpers import ADDRESS_FORMS, can_bind, close_rst

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


@pytest.mark.parametrize(("family", "host"), ADDRESS_FORMS)
def test_connect_raises_self_connect_error_when_every_attempt_self_connects(forced, free_port, family, host):
    """connect() never returns a self-connected socket: after 1 + retries attempts it raises SelfConnectError."""
    selfguard.install()
    port = free_port()
    sock = forced(port, family)
    with pytest.raises(selfguard.SelfConnectError) as caught:
        sock.connect((host, port))
    assert errno.ECONNREFUSED == caught.value.errno
    assert isinstance(caught.value, ConnectionRefusedError)
    assert 3 == caught.value.attempts
    assert str(port) in str(caught.value) and "3 attempts" in str(caught.value)
    assert selfguard.is_self_connected(sock) is False
    assert 0 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # no ECONNRESET left behind by the reset
    assert {"self_connects": 3, "retries": 2, "gave_up": 1} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up")
    }


@pytest.mark.parametrize(("family", "host"), ADDRESS_FORMS)
def test_connect_ex_returns_econnrefused_when_every_attempt_self_connects(forced, free_port, family, host):
    """connect_ex() reports the exhausted budget as ECONNREFUSED, the socket unconnected."""
    selfguard.install()
    port = free_port()
    sock = forced(port, family)
    assert errno.ECONNREFUSED == sock.connect_ex((host, port))
    assert selfguard.is_self_connected(sock) is False
    assert 1 == selfguard.stats()["gave_up"]


def test_create_connection_raises_self_connect_error(forced, free_port):
    """socket.create_connection() surfaces SelfConnectError, which its callers already treat as refused."""
    selfguard.install()
    port = free_port()
    made = []
    real_socket = socket.socket

    class ForcedSocket(real_socket):  # a real socket, created the way create_connection creates it
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            set_port_range(self, port, port)

    socket.socket = ForcedSocket
    try:
        with pytest.raises(ConnectionRefusedError) as caught:
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        socket.socket = real_socket
    assert isinstance(caught.value, selfguard.SelfConnectError)
    assert made and 1 == selfguard.stats()["gave_up"]


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_the_retry_budget_is_configurable(forced, free_port, retries):
    """retries=N makes N + 1 attempts in all."""
    selfguard.install(retries=retries)
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError) as caught:
        forced(port).connect(("127.0.0.1", port))
    assert retries + 1 == caught.value.attempts
    assert retries + 1 == selfguard.stats()["self_connects"]
    assert retries == selfguard.stats()["retries"]


def test_a_retry_reaches_a_server_that_appeared_between_attempts(forced, free_port):
    """When the real server comes back between attempts, the retry on the same socket reaches it."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(3.5)
    fd = sock.fileno()
    servers = []

    def server_comes_back(event):
        if event.kind == "retry":
            # The port is free again at once (the guard reset the socket with
            # RST), so a server that does not set SO_REUSEADDR can bind it.
            srv = socket.socket()
            srv.bind(("127.0.0.1", port))
            srv.listen()
            servers.append(srv)
            set_port_range(sock, 0, 0)  # the kernel may now pick any port

    selfguard.add_listener(server_comes_back)
    sock.connect(("127.0.0.1", port))
    accepted, peer = servers[0].accept()
    with accepted:
        sock.sendall(b"PING")
        assert b"PING" == accepted.recv(4)  # the server got it, not the client itself
        assert sock.getsockname() == peer
    assert fd == sock.fileno()
    assert 1 == sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert 1 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert 3.5 == sock.gettimeout()
    assert {"self_connects": 1, "retries": 1, "gave_up": 0} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up")
    }
    servers[0].close()


def test_a_retry_after_the_range_widens_gets_the_truth(forced, free_port):
    """With nothing listening, a retry from another port reports what is true: connection refused."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    selfguard.add_listener(lambda event: event.kind == "retry" and set_port_range(sock, 0, 0))
    with pytest.raises(ConnectionRefusedError) as caught:
        sock.connect(("127.0.0.1", port))
    assert not isinstance(caught.value, selfguard.SelfConnectError)
    assert caught.value.__context__ is None  # not chained to anything of the guard's
    assert 1 == selfguard.stats()["retries"]


def test_blocking_sockets_are_guarded(forced, free_port):
    """A socket in blocking mode (no timeout) is guarded and stays in blocking mode."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=None)
    with pytest.raises(selfguard.SelfConnectError):
        sock.connect(("127.0.0.1", port))
    assert sock.gettimeout() is None
    assert sock.getblocking() is True


def test_the_port_is_free_at_once_after_a_caught_self_connect(forced, free_port):
    """After the guard gave up, a server without SO_REUSEADDR can bind the port immediately."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    assert can_bind(port)


def test_without_the_guard_a_closed_self_connect_blocks_the_server(forced, free_port):
    """The control for the test above: unguarded, close() leaves TIME_WAIT and the server cannot bind."""
    port = free_port()
    sock = forced(port)
    sock.connect(("127.0.0.1", port))
    sock.close()
    assert not can_bind(port)


def test_relent_returns_the_self_connected_socket_like_go(forced, free_port):
    """mode="relent" retries, then hands back the self-connected socket, counted."""
    selfguard.install(mode="relent")
    port = free_port()
    sock = forced(port)
    sock.connect(("127.0.0.1", port))
    assert selfguard.is_self_connected(sock)
    assert {"self_connects": 3, "retries": 2, "relented": 1, "gave_up": 0} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "relented", "gave_up")
    }


def test_observe_counts_and_never_interferes(forced, free_port, caplog):
    """mode="observe" returns the self-connected socket at once, counted and logged."""
    selfguard.install(mode="observe")
    port = free_port()
    sock = forced(port)
    assert 0 == sock.connect_ex(("127.0.0.1", port))
    assert selfguard.is_self_connected(sock)
    assert {"self_connects": 1, "retries": 0} == {k: selfguard.stats()[k] for k in ("self_connects", "retries")}
    assert any("self-connect" in r.getMessage() and r.name == "selfguard" for r in caplog.records)


def test_a_guarded_connect_is_logged_once_at_warning(forced, free_port, caplog):
    """A connect that self-connected three times gives one WARNING on the selfguard logger, naming the address."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    lines = [r for r in caplog.records if r.name == "selfguard" and "connected to itself" in r.getMessage()]
    assert 1 == len(lines)
    assert all(r.levelname == "WARNING" and str(port) in r.getMessage() for r in lines)


def test_an_explicit_bind_then_connect_to_itself_is_left_alone(free_port):
    """A socket bound to an explicit port is the user's choice, even when it connects to itself."""
    selfguard.install()
    port = free_port()
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.connect(("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
        assert 0 == selfguard.stats()["self_connects"]
    finally:
        close_rst(sock)


def test_a_bind_to_port_zero_is_guarded(forced, free_port):
    """bind(("127.0.0.1", 0)) lets the kernel pick the port, so the connect is guarded."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    sock.bind(("127.0.0.1", 0))  # the forced range makes the kernel pick *port* here
    assert port == sock.getsockname()[1]
    with pytest.raises(selfguard.SelfConnectError):
        sock.connect(("127.0.0.1", port))
    assert 3 == selfguard.stats()["self_connects"]


def test_the_seed_loop_never_gets_a_self_connected_socket(free_port):
    """The article's reconnect loop to a closed port in the default range: the guard catches what it meets.

    Bounded: stops at the first caught self-connect, or after 400 000 dials
    or 60 seconds.
    """
    selfguard.install()
    low, _ = read_ephemeral_range()
    port = free_port()
    # connect() tries ports of the range's low parity first (bind() the other
    # one), so only those are ever met by an unbound socket on an idle host.
    port -= (port - low) % 2
    deadline = time.monotonic() + 60
    dials = handed_back = 0
    while selfguard.stats()["self_connects"] == 0 and dials < 400_000 and time.monotonic() < deadline:
        dials += 1
        sock = socket.socket()
        try:
            sock.connect(("127.0.0.1", port))
            handed_back += selfguard.is_self_connected(sock)
        except ConnectionRefusedError:
            pass
        finally:
            sock.close()
    assert selfguard.stats()["self_connects"] >= 1, f"no self-connect met in {dials} dials"
    assert 0 == handed_back
    assert can_bind(port)
