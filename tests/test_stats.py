"""stats() and reset_stats(): the promised counters, what is checked, and back to zero."""

from __future__ import annotations

import errno
import select
import socket

import pytest

import selfguard


def test_stats_has_the_promised_counters_starting_at_zero():
    """stats() is a dict with at least checked, self_connects, retries and gave_up."""
    counters = selfguard.stats()
    assert {"checked", "self_connects", "retries", "gave_up"} <= set(counters)
    assert all(0 == value for value in counters.values())


def test_checked_counts_guarded_connects_inside_the_range():
    """Each connect to a port inside the ephemeral range is checked once; ports outside are not."""
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv:  # port 0: inside the range
        for _ in range(3):
            with socket.create_connection(srv.getsockname()):
                srv.accept()[0].close()
    assert 3 == selfguard.stats()["checked"]


def test_checked_counts_a_non_blocking_connect_once_however_often_so_error_is_read():
    """The SO_ERROR read that completes a non-blocking connect checks it; later reads of the connected socket don't."""
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.socket() as client:
        client.setblocking(False)
        assert errno.EINPROGRESS == client.connect_ex(srv.getsockname())
        select.select([], [client], [], 5)
        for _ in range(5):  # what a loop that looks at the socket again does
            assert 0 == client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        srv.accept()[0].close()
    assert 1 == selfguard.stats()["checked"]


def test_reset_stats_zeroes_every_counter(forced, free_port):
    """reset_stats() sets all counters back to zero."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    assert selfguard.stats()["self_connects"]
    selfguard.reset_stats()
    assert all(0 == value for value in selfguard.stats().values())
