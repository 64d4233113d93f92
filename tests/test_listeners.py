"""Metrics hooks: stats(), reset_stats(), listeners and the events they receive."""

from __future__ import annotations

import logging
import socket
import time

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


def test_reset_stats_zeroes_every_counter(forced, free_port):
    """reset_stats() sets all counters back to zero."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    assert selfguard.stats()["self_connects"]
    selfguard.reset_stats()
    assert all(0 == value for value in selfguard.stats().values())


def test_listeners_receive_frozen_events_in_order(forced, free_port):
    """A listener sees what happened, through which API, both addresses and the attempt number."""
    selfguard.install(retries=1)
    port = free_port()
    events = []
    selfguard.add_listener(events.append)
    assert 111 == forced(port).connect_ex(("127.0.0.1", port))
    assert ["self_connect", "retry", "self_connect", "gave_up"] == [e.kind for e in events]
    assert [1, 2, 2, 2] == [e.attempt for e in events]
    assert all("connect_ex" == e.api and ("127.0.0.1", port) == e.remote for e in events)
    assert ("127.0.0.1", port) == events[0].local
    with pytest.raises(AttributeError):
        events[0].kind = "other"


def test_a_listener_that_raises_never_breaks_a_connect(forced, free_port, caplog):
    """A failing listener is counted as a fault and logged once; the connect proceeds as usual."""
    selfguard.install()

    def broken(event):
        raise RuntimeError("listener bug")

    selfguard.add_listener(broken)
    for _ in range(2):
        port = free_port()
        with pytest.raises(selfguard.SelfConnectError):
            forced(port).connect(("127.0.0.1", port))
    assert 2 * 6 == selfguard.stats()["faults"]  # 3 self_connect + 2 retry + 1 gave_up events, twice
    logged = [r for r in caplog.records if "listener" in r.getMessage() and r.levelno == logging.WARNING]
    assert 1 == len(logged)


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


def test_remove_listener_stops_the_calls_and_tolerates_unknown_functions(forced, free_port):
    """remove_listener() stops deliveries; removing twice or an unknown function is harmless."""
    selfguard.install()
    events = []
    selfguard.add_listener(events.append)
    selfguard.add_listener(events.append)  # added once only
    selfguard.remove_listener(events.append)
    selfguard.remove_listener(events.append)
    selfguard.remove_listener(print)
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    assert [] == events


def test_a_listener_that_connects_is_not_re_entered(forced, free_port):
    """A listener whose own connect self-connects: that connect is guarded and counted, but not fed back to it."""
    selfguard.install()
    outer, inner = free_port(), free_port()
    received, nested = [], []

    def connects_itself(event):
        received.append(event.kind)
        if event.kind == "self_connect" and event.attempt == 1:
            try:
                forced(inner).connect(("127.0.0.1", inner))
            except selfguard.SelfConnectError:
                nested.append("caught")

    selfguard.add_listener(connects_itself)
    with pytest.raises(selfguard.SelfConnectError):
        forced(outer).connect(("127.0.0.1", outer))
    assert ["caught"] == nested
    assert ["self_connect", "retry", "self_connect", "retry", "self_connect", "gave_up"] == received
    assert (6, 2) == (selfguard.stats()["self_connects"], selfguard.stats()["gave_up"])
