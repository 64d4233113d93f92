"""Signals during a guarded connect: EINTR retried as CPython does, a raising handler's exception let through."""

from __future__ import annotations

import signal
import socket
import time

import pytest

import selfguard
from selfguard.testing import set_port_range

from helpers import full_backlog_server


@pytest.mark.parametrize("guarded", [False, True])
def test_eintr_is_retried_as_cpython_does_and_the_timeout_still_holds(free_port, guarded):
    """A signal every 10 ms with a handler that returns: the connect keeps waiting and times out on time."""
    port = free_port()
    held = full_backlog_server(port)
    if guarded:
        selfguard.install()
    interrupts = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: interrupts.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    sock = socket.socket()
    sock.settimeout(0.5)
    started = time.monotonic()
    try:
        with pytest.raises(socket.timeout):  # TimeoutError from Python 3.10 on
            sock.connect(("127.0.0.1", port))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sock.close()
        for s in held:
            s.close()
    assert 0.5 <= time.monotonic() - started < 0.9
    assert len(interrupts) >= 10


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted


def test_a_signal_handlers_exception_during_a_retry_comes_out_of_connect(forced, free_port):
    """The handler's exception comes out of connect() as it would unguarded, and the socket keeps its timeout."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=2.0)
    held = []

    def hang_the_retry(event):
        if event.kind == "retry":
            held.extend(full_backlog_server(port))
            set_port_range(sock, 0, 0)
            signal.setitimer(signal.ITIMER_REAL, 0.1)

    selfguard.add_listener(hang_the_retry)
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            sock.connect(("127.0.0.1", port))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for s in held:
            s.close()
    assert time.monotonic() - started < 1.0
    assert 2.0 == sock.gettimeout()
    assert 1 == selfguard.stats()["retries"]
