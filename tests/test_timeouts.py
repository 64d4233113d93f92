"""One deadline for the whole connect: retries and listeners share the socket's timeout, reported as CPython does."""

from __future__ import annotations

import errno
import socket
import time

import pytest

import selfguard
from selfguard.testing import set_port_range

from helpers import full_backlog_server

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


def test_the_timeout_bounds_all_attempts_together(forced, free_port):
    """A retry that hangs runs out of the socket's timeout, not a fresh one, and the timeout is restored."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=0.6)
    held = []

    def server_with_full_backlog(event):
        if event.kind == "retry":
            held.extend(full_backlog_server(port))  # the retry hangs until its timeout
            set_port_range(sock, 0, 0)
            time.sleep(0.4)  # listener time counts against the same deadline

    selfguard.add_listener(server_with_full_backlog)
    started = time.monotonic()
    with pytest.raises(socket.timeout, match="timed out"):
        sock.connect(("127.0.0.1", port))
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 0.6 + 0.2  # one deadline: 0.4 s in the listener, the rest in the hanging retry
    assert 0.6 == sock.gettimeout()
    for s in held:
        s.close()


def test_connect_ex_reports_a_timeout_as_cpython_does(forced, free_port):
    """connect_ex() returns the errno CPython returns for a timed-out connect."""
    port = free_port()
    held = full_backlog_server(port)
    probe = socket.socket()
    probe.settimeout(0.2)
    expected = probe.connect_ex(("127.0.0.1", port))  # unguarded, the same situation
    probe.close()
    for s in held:
        s.close()

    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=0.3)
    held = []

    def server_with_full_backlog(event):
        if event.kind == "retry":
            held.extend(full_backlog_server(port))
            set_port_range(sock, 0, 0)

    selfguard.add_listener(server_with_full_backlog)
    assert expected == sock.connect_ex(("127.0.0.1", port))
    assert errno.EWOULDBLOCK == expected
    for s in held:
        s.close()


def test_time_in_listeners_counts_against_the_timeout_but_never_becomes_a_timeout(forced, free_port):
    """One deadline for the whole call, as Go's dialer has: slow listeners cut the retries short; the truth stays."""
    selfguard.install()
    port = free_port()
    selfguard.add_listener(lambda event: time.sleep(0.15))
    started = time.monotonic()
    with pytest.raises(selfguard.SelfConnectError) as caught:  # not socket.timeout
        forced(port, timeout=0.2).connect(("127.0.0.1", port))
    elapsed = time.monotonic() - started
    assert 2 == caught.value.attempts  # the third attempt had no time left
    assert elapsed < 4 * 0.15 + 0.1  # four events (self_connect, retry, self_connect, gave_up); no third attempt


def _timeouts_a_float_round_trip_changes(count: int) -> list[float]:
    """Timeouts given to the nanosecond for which settimeout(gettimeout()) would not give back the same value."""
    found: list[float] = []
    with socket.socket() as probe:
        for ns in range(16_500_000_001, 16_500_000_001 + 2_000_000, 7):
            probe.settimeout(ns / 1e9)
            seen = probe.gettimeout()
            probe.settimeout(seen)
            if probe.gettimeout() != seen:
                found.append(ns / 1e9)
                if len(found) == count:
                    break
    return found


def test_after_a_retry_the_timeout_comes_back_to_the_nanosecond(forced, free_port):
    """Timeouts whose float round trip is off by 1 ns are given back exactly after a retry (and after giving up)."""
    selfguard.install()
    timeouts = _timeouts_a_float_round_trip_changes(10)
    assert 10 == len(timeouts)
    for timeout in timeouts:
        port = free_port()
        sock = forced(port, timeout=timeout)
        before = sock.gettimeout()
        assert errno.ECONNREFUSED == sock.connect_ex(("127.0.0.1", port))  # three attempts, then gave up
        assert before == sock.gettimeout()
    assert 2 * len(timeouts) == selfguard.stats()["retries"]


class Counting(socket.socket):
    """A subclass whose settimeout() has a side effect: the guard's retries must not call it."""

    calls = 0

    def settimeout(self, value: float | None) -> None:
        Counting.calls += 1
        super().settimeout(value)


def test_a_retry_never_calls_a_subclass_s_own_settimeout(forced, free_port):
    """The guard sets the remaining budget with _socket.socket's method, as the stdlib keeps it."""
    selfguard.install()
    port = free_port()
    sock = Counting()
    sock.settimeout(2.0)
    set_port_range(sock, port, port)
    Counting.calls = 0
    assert errno.ECONNREFUSED == sock.connect_ex(("127.0.0.1", port))  # three attempts, then gave up
    assert (0, 2.0) == (Counting.calls, sock.gettimeout())
    assert 2 == selfguard.stats()["retries"]
    sock.close()
