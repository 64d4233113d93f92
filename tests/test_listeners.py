"""Listeners: the events they receive in order, removal, and that none can break or re-enter a connect."""

from __future__ import annotations

import logging

import pytest

import selfguard


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


@pytest.mark.parametrize("not_callable", [42, "print", None])
def test_add_listener_rejects_what_cannot_be_called_at_once(not_callable):
    """add_listener(42) raises TypeError at the call, not a fault at the first event."""
    with pytest.raises(TypeError, match="callable"):
        selfguard.add_listener(not_callable)
    assert 0 == selfguard.stats()["faults"]
