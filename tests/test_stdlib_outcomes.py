"""Outcomes the guard must leave as the stdlib's: tiny timeouts, calls on objects that are no socket."""

from __future__ import annotations

import errno
import socket

import pytest

import selfguard

from helpers import outcome, port_in_time_wait

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


@pytest.mark.parametrize("timeout", [1e-4, 1e-6])
@pytest.mark.parametrize("api", ["connect", "connect_ex"])
def test_eaddrnotavail_under_a_tiny_timeout_is_the_stdlibs(forced, free_port, timeout, api):
    """With no time left to retry, EADDRNOTAVAIL is reported as the stdlib reports it: errno 99, not a timeout."""
    port = free_port()
    port_in_time_wait(forced, port)

    def dial():
        sock = forced(port, timeout=timeout)
        return getattr(sock, api)(("127.0.0.1", port))

    unguarded = outcome(dial)
    selfguard.install()
    guarded = outcome(dial)
    assert unguarded == guarded
    assert errno.EADDRNOTAVAIL in unguarded
    assert 0 == selfguard.stats()["retries"]


@pytest.mark.parametrize("api", ["connect", "connect_ex", "bind", "getsockopt", "sendto"])
def test_calling_a_socket_method_on_an_object_that_is_no_socket_raises_the_stdlibs_type_error(api):
    """socket.socket.connect(object(), address) raises TypeError with the stdlib's message, not AttributeError."""
    args = {
        "connect": (("127.0.0.1", 40000),),
        "connect_ex": (("127.0.0.1", 40000),),
        "bind": (("127.0.0.1", 0),),
        "getsockopt": (socket.SOL_SOCKET, socket.SO_ERROR),
        "sendto": (b"x", 0x20000000, ("127.0.0.1", 40000)),
    }[api]

    def call():
        return getattr(socket.socket, api)(object(), *args)

    unguarded = outcome(call)
    selfguard.install()
    assert unguarded == outcome(call)
    assert TypeError is unguarded[0]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.getsockopt(1, optname=4),
        lambda s: s.sendmsg([b"x"], flags=0),
        lambda s: s.sendto(b"x", flags=0),
        lambda s: s.connect(address=("127.0.0.1", 1)),
        lambda s: s.bind(address=("127.0.0.1", 0)),
    ],
    ids=["getsockopt", "sendmsg", "sendto", "connect", "bind"],
)
def test_keyword_calls_get_the_stdlibs_error_message(call):
    """`s.getsockopt(1, optname=4)`: the same TypeError text ("socket.getsockopt() takes ...") with the guard."""
    with socket.socket() as sock:
        unguarded = outcome(lambda: call(sock))
    selfguard.install()
    with socket.socket() as sock:
        assert unguarded == outcome(lambda: call(sock))
    assert TypeError is unguarded[0]
