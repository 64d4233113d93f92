"""What the guard does not handle behaves as without it: same return value, exception type, errno, message."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

import selfguard

from helpers import outcome, same_with_and_without_guard

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


@pytest.fixture
def closed_port(free_port):
    return free_port()


TCP = socket.socket
BAD_CALLS = {
    "port too large": lambda s, p: s.connect(("127.0.0.1", 99999)),
    "negative port": lambda s, p: s.connect(("127.0.0.1", -1)),
    "port as str": lambda s, p: s.connect(("127.0.0.1", str(p))),
    "port as float": lambda s, p: s.connect(("127.0.0.1", float(p))),
    "port as bool": lambda s, p: s.connect(("127.0.0.1", True)),
    "1-tuple": lambda s, p: s.connect(("127.0.0.1",)),
    "3-tuple on IPv4": lambda s, p: s.connect(("127.0.0.1", p, 0)),
    "string address": lambda s, p: s.connect("127.0.0.1"),
    "None address": lambda s, p: s.connect(None),
    "list address": lambda s, p: s.connect(["127.0.0.1", p]),
    "NUL in host": lambda s, p: s.connect(("127.0.0.1\0", p)),
    "huge host": lambda s, p: s.connect(("a" * 100_000, p)),
    "empty host": lambda s, p: s.connect(("", p)),
    "no arguments": lambda s, p: s.connect(),
    "extra argument": lambda s, p: s.connect(("127.0.0.1", p), 1),
    "keyword argument": lambda s, p: s.connect(address=("127.0.0.1", p)),
    "refused": lambda s, p: s.connect(("127.0.0.1", p)),
    "connect_ex refused": lambda s, p: s.connect_ex(("127.0.0.1", p)),
    "connect_ex bad port": lambda s, p: s.connect_ex(("127.0.0.1", 70000)),
    "connect_ex str address": lambda s, p: s.connect_ex("x"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_tcp_calls_the_guard_does_not_handle_behave_as_without_it(name, closed_port):
    """Wrong types, shapes, ports and hosts, refused connects: identical outcomes."""
    same_with_and_without_guard(TCP, lambda s: BAD_CALLS[name](s, closed_port))


def test_an_ipv6_address_with_flowinfo_and_scope_id_is_refused_as_unguarded(closed_port):
    """A 4-tuple IPv6 address is validated and refused as without the guard."""
    result = same_with_and_without_guard(
        lambda: socket.socket(socket.AF_INET6), lambda s: s.connect(("::1", closed_port, 0, 0))
    )
    assert ConnectionRefusedError is result[0]


def test_udp_connect_is_untouched(closed_port):
    """UDP sockets, even to a port in the range, are left to the stdlib."""
    result = same_with_and_without_guard(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        lambda s: (s.connect(("127.0.0.1", closed_port)), s.getpeername())[1],
    )
    assert ("returned", ("127.0.0.1", closed_port), "connected") == result


def test_connecting_a_closed_socket_fails_the_same_way(closed_port):
    """Connecting a closed socket fails the same way."""

    def act(s):
        s.close()
        return s.connect(("127.0.0.1", closed_port))

    assert OSError is same_with_and_without_guard(TCP, act)[0]


def test_connecting_a_connected_socket_again_fails_with_eisconn_either_way():
    """A second connect on a connected socket fails with EISCONN either way."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        address = srv.getsockname()

        def act(s):
            s.connect(address)
            srv.accept()[0].close()
            return s.connect(address)

        result = same_with_and_without_guard(TCP, act)
    assert 106 == result[1]  # EISCONN


def test_a_non_blocking_connect_to_a_closed_port_returns_what_the_kernel_said(closed_port):
    """A non-blocking connect to a closed port returns what the kernel said (EINPROGRESS), as unguarded."""

    def make():
        s = socket.socket()
        s.setblocking(False)
        return s

    same_with_and_without_guard(make, lambda s: s.connect_ex(("127.0.0.1", closed_port)))


@pytest.mark.parametrize("kind", ["missing", "existing-not-listening", "abstract"])
def test_unix_socket_connects_behave_as_without_the_guard(kind):
    """AF_UNIX paths, existing, missing and abstract: identical outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sock")
        if kind == "existing-not-listening":
            bound = socket.socket(socket.AF_UNIX)
            bound.bind(path)
        address = "\0selfguard-test-abstract" if kind == "abstract" else path
        same_with_and_without_guard(lambda: socket.socket(socket.AF_UNIX), lambda s: s.connect(address))
        if kind == "existing-not-listening":
            bound.close()


def test_create_connection_to_a_closed_port_is_refused_the_same_way(closed_port):
    """socket.create_connection() to a closed port raises the same ConnectionRefusedError."""
    results = []
    for guarded in (False, True):
        if guarded:
            selfguard.install()
        results.append(outcome(lambda: socket.create_connection(("127.0.0.1", closed_port), timeout=2)))
        selfguard.uninstall()
    assert results[0] == results[1]
    assert ConnectionRefusedError is results[0][0]
