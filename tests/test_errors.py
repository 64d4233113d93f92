"""SelfConnectError: what it is, what it says, and that it survives a trip between processes."""

from __future__ import annotations

import errno
import pickle

import selfguard


def test_a_self_connect_error_is_a_connection_refused_error_with_econnrefused():
    """Callers that handle refused connections handle it unchanged."""
    error = selfguard.SelfConnectError(("127.0.0.1", 45000), 3)
    assert isinstance(error, ConnectionRefusedError)
    assert errno.ECONNREFUSED == error.errno
    assert "127.0.0.1:45000" in str(error) and "3 attempts" in str(error)


def test_an_ipv6_address_is_shown_in_brackets():
    """An IPv6 host is shown as [host]:port."""
    assert "[::1]:45000" in str(selfguard.SelfConnectError(("::1", 45000, 0, 0), 2))


def test_a_self_connect_error_survives_pickling():
    """multiprocessing and concurrent.futures can carry it across processes intact."""
    error = selfguard.SelfConnectError(("::1", 45000, 0, 0), 3)
    copy = pickle.loads(pickle.dumps(error))
    assert type(error) is type(copy)
    assert (error.address, error.attempts, error.errno, str(error)) == (
        copy.address,
        copy.attempts,
        copy.errno,
        str(copy),
    )


def test_notes_and_attributes_survive_pickling():
    """A note (add_note on 3.11+) and an attribute the caller set are there after the trip, as for any exception."""
    error = selfguard.SelfConnectError(("127.0.0.1", 45000), 3)
    error.__notes__ = ["while fetching the config"]
    error.request_id = 7
    copy = pickle.loads(pickle.dumps(error))
    assert (["while fetching the config"], 7) == (copy.__notes__, copy.request_id)
    assert (error.address, error.attempts, str(error)) == (copy.address, copy.attempts, str(copy))
