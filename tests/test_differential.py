"""Differential: generated connect, connect_ex and create_connection calls agree with and without the guard.

Each case builds the same kind of socket twice in one process, runs the same
call without and then with the guard, and compares the outcome (return
value, or exception type, errno and message) and the socket's state after.
Hosts are limited to ones that resolve without DNS (literals, localhost, and
strings that fail before any lookup): the sandbox has no DNS to ask.
Ports inside the ephemeral range are of the parity bind() picks, never the
one connect() tries first, so no generated connect can self-connect by chance
(which would rightly differ).
"""

from __future__ import annotations

import atexit
import collections
import os
import socket
import tempfile
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import selfguard
from selfguard._kernel import read_ephemeral_range

from helpers import same_with_and_without_guard

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")

LOW, HIGH = read_ephemeral_range()
UNIX_DIR = tempfile.mkdtemp(prefix="selfguard-diff-")
UNIX_MISSING = os.path.join(UNIX_DIR, "missing")
UNIX_STALE = os.path.join(UNIX_DIR, "stale")  # bound once, nobody listening
_stale = socket.socket(socket.AF_UNIX)
_stale.bind(UNIX_STALE)
_stale.close()

_LISTENER = socket.create_server(("127.0.0.1", 0), backlog=4096)
atexit.register(_LISTENER.close)
LISTENING = _LISTENER.getsockname()[1]  # inside the range: a port 0 server gets an ephemeral one


def _drain() -> None:
    _LISTENER.setblocking(False)
    try:
        while True:
            _LISTENER.accept()[0].close()
    except BlockingIOError:
        pass


def _closed_port_in_range(n: int) -> int:
    port = LOW + 1 + 2 * (n % ((HIGH - LOW) // 2))  # bind()'s parity: never picked by connect() on an idle host
    return port


Address = collections.namedtuple("Address", "host port")
MSG_FASTOPEN = int(getattr(socket, "MSG_FASTOPEN", 0x20000000))


class IndexPort:
    """A port like numpy.int64: not an int, but with __index__, which the socket module honours."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


HOSTS = st.sampled_from(
    ["127.0.0.1", "127.1", "127.0.0.2", "0.0.0.0", "::1", "::ffff:127.0.0.1", "", "localhost", b"127.0.0.1",
     "127.0.0.1\x00x", "a" * 300, "::1%lo", "fe80::1%999999"]
)  # fmt: skip
PORTS = st.one_of(
    st.integers(0, 9999).map(_closed_port_in_range),
    st.just(LISTENING),
    st.sampled_from([0, 1, 79, 1023, 65535, 65536, -1, 2**31, 2**64]),
    st.sampled_from([True, 1.5, "80", None, b"80"]),
    st.integers(0, 9999).map(_closed_port_in_range).map(IndexPort),
    st.just(IndexPort(LISTENING)),
    st.sampled_from([IndexPort(70000), IndexPort(-1)]),
)
ADDRESSES = st.one_of(
    st.tuples(HOSTS, PORTS),
    st.tuples(HOSTS, PORTS, st.sampled_from([0, 1, -1, "x"])),
    st.tuples(HOSTS, PORTS, st.sampled_from([0, 1]), st.sampled_from([0, 1, 2**32, -1])),
    st.tuples(HOSTS),
    st.tuples(HOSTS, PORTS, st.just(0), st.just(0), st.just(0)),
    st.sampled_from([UNIX_MISSING, UNIX_STALE, "\0selfguard-abstract", "", b"\0x", None, 80, ["127.0.0.1", 80]]),
    st.tuples(HOSTS, PORTS).map(list),
    st.tuples(HOSTS, PORTS).map(lambda pair: Address(*pair)),
)

SOCKETS: dict[str, Callable[[], socket.socket]] = {
    "tcp4 blocking": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "tcp4 timeout": lambda: _with_timeout(socket.socket(socket.AF_INET, socket.SOCK_STREAM), 2.0),
    "tcp4 non-blocking": lambda: _with_timeout(socket.socket(socket.AF_INET, socket.SOCK_STREAM), 0.0),
    "tcp6 blocking": lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM),
    "tcp6 non-blocking": lambda: _with_timeout(socket.socket(socket.AF_INET6, socket.SOCK_STREAM), 0.0),
    "udp4": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    "udp6": lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    "unix stream": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
    "tcp4 closed": lambda: _closed(socket.socket()),
    "tcp4 connected": lambda: _connected(socket.socket()),
}


def _with_timeout(sock: socket.socket, timeout: float) -> socket.socket:
    sock.settimeout(timeout)
    return sock


def _closed(sock: socket.socket) -> socket.socket:
    sock.close()
    return sock


def _connected(sock: socket.socket) -> socket.socket:
    sock.connect(("127.0.0.1", LISTENING))
    return sock


CALLS: dict[str, Callable[[socket.socket, Any], Any]] = {
    "connect": lambda s, a: s.connect(a),
    "connect_ex": lambda s, a: s.connect_ex(a),
    "connect with extra argument": lambda s, a: s.connect(a, 1),
    "connect_ex by keyword": lambda s, a: s.connect_ex(address=a),
    "connect without argument": lambda s, a: s.connect(),
    "sendto with MSG_FASTOPEN": lambda s, a: s.sendto(b"x", MSG_FASTOPEN, a),
    "sendmsg with MSG_FASTOPEN": lambda s, a: s.sendmsg([b"x"], [], MSG_FASTOPEN, a),
    "sendto without flags": lambda s, a: s.sendto(b"x", a),
}


def run_both(make: Callable[[], socket.socket], act: Callable[[socket.socket], Any]) -> tuple[Any, ...]:
    """Unguarded, then guarded: the same outcome and socket state (the listener drained after each run)."""
    return same_with_and_without_guard(make, act, after_each=_drain)


@settings(max_examples=1800, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(SOCKETS)), call=st.sampled_from(sorted(CALLS)), address=ADDRESSES)
def test_generated_socket_calls_behave_the_same_with_and_without_the_guard(kind, call, address):
    """1 800 generated (socket, call, address) cases, Fast Open sends included: identical with and without the guard."""
    run_both(SOCKETS[kind], lambda s: CALLS[call](s, address))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(address=ADDRESSES, timeout=st.sampled_from([None, 0.5, 2.0]))
def test_generated_create_connection_calls_behave_the_same_with_and_without_the_guard(address, timeout):
    """300 generated socket.create_connection() calls: identical outcomes with and without the guard."""
    results = []
    for guarded in (False, True):
        if guarded:
            selfguard.install()
        try:
            conn = socket.create_connection(address, timeout=timeout)
        except BaseException as exc:
            results.append((type(exc), getattr(exc, "errno", None), str(exc)))
        else:
            results.append(("connected", conn.getpeername()))
            conn.close()
        finally:
            selfguard.uninstall()
            _drain()
    assert results[0] == results[1]


@pytest.mark.parametrize("kind", sorted(SOCKETS))
def test_the_counters_stay_at_zero_for_calls_the_guard_does_not_handle(kind):
    """Refused, invalid and foreign connects are not counted as anything."""
    for address in [("127.0.0.1", _closed_port_in_range(7)), ("127.0.0.1", 70000), UNIX_MISSING, None]:
        run_both(SOCKETS[kind], lambda s, a=address: s.connect_ex(a))
    assert {"self_connects": 0, "retries": 0, "gave_up": 0, "faults": 0} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up", "faults")
    }
