"""Soak: a million guarded connects with forced self-connects mixed in; memory and open fds stay flat.

Bounded in count (1 000 000 connects) and in time (the loop stops after
300 s whatever the count, and the test then fails on the count). Prints the
figures, for the record.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

import selfguard
from selfguard import testing
from selfguard.testing import force_self_connect

from helpers import LINGER_RST, open_fds, require_forcing

CONNECTS = 1_000_000
FORCE_EVERY = 1_000  # one connect in a thousand meets a self-connect (three, with its retries)
SERVE_EVERY = 100  # one in a hundred reaches a real server; the rest are refused


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.fixture
def quiet_guard():
    """pytest keeps every captured log record; thousands of WARNINGs would be its memory growth, not ours."""
    logger = logging.getLogger("selfguard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.soak
def test_a_million_guarded_connects_leak_nothing_and_count_exactly(free_port, capsys, quiet_guard):
    """1 000 000 connects (1 % to a server, 0.1 % forced to self-connect): no leak, exact counters.

    The refused dials go to a closed port of the parity connect() tries first,
    so they meet real self-connects now and then, as a reconnect loop does
    (about 7 per 100 000 here): each is caught and retried once.
    """
    require_forcing()
    selfguard.install()
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    closed, forced_port = testing.free_port(connect_parity=True), free_port()
    serving = server.getsockname()
    samples = []
    outcomes = {"refused": 0, "served": 0, "SelfConnectError": 0}
    started = time.monotonic()
    done = 0
    while done < CONNECTS and time.monotonic() - started < 300:
        sock = socket.socket()
        if done % FORCE_EVERY == 0:
            force_self_connect(sock, forced_port)
            try:
                sock.connect(("127.0.0.1", forced_port))
            except selfguard.SelfConnectError:
                outcomes["SelfConnectError"] += 1
        elif done % SERVE_EVERY == 0:
            sock.connect(serving)
            server.accept()[0].close()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # no TIME_WAIT pile-up
            outcomes["served"] += 1
        else:
            outcomes["refused"] += sock.connect_ex(("127.0.0.1", closed)) == 111
        sock.close()
        done += 1
        if done % 100_000 == 0:
            samples.append((done, rss_kib(), open_fds()))
    seconds = time.monotonic() - started
    server.close()
    counters = selfguard.stats()
    forced = CONNECTS // FORCE_EVERY
    natural = counters["self_connects"] - 3 * forced
    with capsys.disabled():
        print(
            f"\nsoak: {done:,} connects in {seconds:.0f} s; (connects, RSS KiB, open fds): {samples}; "
            f"{outcomes}; natural self-connects caught: {natural}"
        )

    assert CONNECTS == done, f"only {done:,} connects in 300 s"
    assert forced == outcomes["SelfConnectError"] == counters["gave_up"]
    served = CONNECTS // SERVE_EVERY - CONNECTS // FORCE_EVERY  # every forced round number is also a round hundred
    assert (served, CONNECTS - forced - served) == (outcomes["served"], outcomes["refused"])
    assert 2 * forced + natural == counters["retries"]  # each natural self-connect: one retry, then refused
    first_rss, last_rss = samples[0][1], samples[-1][1]
    assert last_rss - first_rss < 2048, f"RSS grew by {last_rss - first_rss} KiB"
    assert len({fds for _, _, fds in samples}) == 1, f"open fds changed: {samples}"
