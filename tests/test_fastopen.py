"""TCP Fast Open: sendto()/sendmsg() with MSG_FASTOPEN connect without connect(), and are guarded like it."""

from __future__ import annotations

import errno
import select
import socket
from typing import Any, Callable

import pytest

import selfguard
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import set_port_range

from helpers import can_bind, close_rst, outcome, require

MSG_FASTOPEN = int(getattr(socket, "MSG_FASTOPEN", 0x20000000))

SENDS: dict[str, Callable[[socket.socket, bytes, Any], Any]] = {
    "sendto": lambda sock, data, address: sock.sendto(data, MSG_FASTOPEN, address),
    "sendmsg": lambda sock, data, address: sock.sendmsg([data], [], MSG_FASTOPEN, address),
}


@pytest.fixture(autouse=True)
def _fast_open_on():
    with open("/proc/sys/net/ipv4/tcp_fastopen") as f:
        require(int(f.read()) & 1, "needs TCP Fast Open enabled for clients (net.ipv4.tcp_fastopen & 1)")


@pytest.mark.parametrize("api", list(SENDS))
def test_without_the_guard_a_fast_open_send_talks_to_itself(forced, free_port, api):
    """The control: unguarded, the socket connects to itself and reads back the data it sent."""
    port = free_port()
    sock = forced(port, timeout=None)
    assert 4 == SENDS[api](sock, b"PING", ("127.0.0.1", port))
    assert selfguard.is_self_connected(sock)
    sock.settimeout(5)
    assert b"PING" == sock.recv(4)


@pytest.mark.parametrize("api", list(SENDS))
def test_a_fast_open_self_connect_is_retried_then_refused(forced, free_port, api):
    """Every attempt self-connects: SelfConnectError after the retries, the socket reset and the port free."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=None)
    with pytest.raises(selfguard.SelfConnectError) as caught:
        SENDS[api](sock, b"PING", ("127.0.0.1", port))
    assert 3 == caught.value.attempts
    assert not selfguard.is_self_connected(sock)
    assert can_bind(port)
    assert (3, 2, 1) == tuple(selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up"))


def server_comes_back_at_the_retry(sock: socket.socket, port: int) -> list[socket.socket]:
    """At the guard's retry, let *sock* pick any port and start a server on *port*: it holds that server."""
    server: list[socket.socket] = []

    def server_comes_back(event: selfguard.Event) -> None:
        if event.kind == "retry":
            set_port_range(sock, 0, 0)
            server.append(socket.create_server(("127.0.0.1", port)))

    selfguard.add_listener(server_comes_back)
    return server


@pytest.mark.parametrize("api", list(SENDS))
def test_a_fast_open_retry_delivers_the_data_once_to_a_server_that_came_back(forced, free_port, api):
    """The reset drops what the socket sent itself; the retry sends it to the real server, once."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=None)
    server = server_comes_back_at_the_retry(sock, port)
    assert 4 == SENDS[api](sock, b"PING", ("127.0.0.1", port))
    peer, _ = server[0].accept()
    with peer:
        peer.settimeout(5)
        assert b"PING" == peer.recv(16)
    assert ("127.0.0.1", port) == sock.getpeername()
    close_rst(sock)
    server[0].close()


def test_a_non_blocking_fast_open_connect_gets_the_truth_from_so_error(forced, free_port):
    """Non-blocking: the stdlib raises EINPROGRESS; the completed self-connect reads as ECONNREFUSED."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=0.0)
    with pytest.raises(BlockingIOError):
        sock.sendto(b"PING", MSG_FASTOPEN, ("127.0.0.1", port))
    select.select([], [sock], [], 5)
    assert errno.ECONNREFUSED == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert not selfguard.is_self_connected(sock)


@pytest.mark.parametrize("api", list(SENDS))
def test_fast_open_outcomes_the_guard_does_not_handle_are_the_stdlibs(free_port, api):
    """Refused, a real server, UDP, bad flags and bad addresses: identical with and without the guard."""
    low = read_ephemeral_range()[0]
    closed = free_port()
    closed += 1 - (closed - low) % 2  # the parity connect() tries last: no chance self-connect in the control
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cases: list[Callable[[], Any]] = [
            lambda: SENDS[api](socket.socket(), b"x", ("127.0.0.1", closed)),
            lambda: SENDS[api](socket.socket(), b"x", srv.getsockname()),
            lambda: SENDS[api](socket.socket(socket.AF_INET, socket.SOCK_DGRAM), b"x", ("127.0.0.1", closed)),
            lambda: SENDS[api](socket.socket(), b"x", ("127.0.0.1",)),
            lambda: SENDS[api](socket.socket(), b"x", ("127.0.0.1", 70000)),
            lambda: SENDS[api](socket.socket(), b"x", "not an address"),
            lambda: socket.socket().sendto(b"x", "flags", ("127.0.0.1", closed)),
            lambda: socket.socket().sendto(b"x", 0, ("127.0.0.1", closed)),
        ]
        unguarded = [outcome(case) for case in cases]
        selfguard.install()
        guarded = [outcome(case) for case in cases]
        for _ in range(2):  # the served connects, accepted so nothing is left in the backlog
            srv.accept()[0].close()
    assert unguarded == guarded


def test_a_fast_open_retry_sends_a_generators_buffers_again(forced, free_port):
    """sendmsg() takes any iterable of buffers: a one-shot generator is sent whole by the retry too."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=None)
    server = server_comes_back_at_the_retry(sock, port)
    chunks = (chunk for chunk in [b"HELLO ", b"WORLD"])
    assert 11 == sock.sendmsg(chunks, iter(()), MSG_FASTOPEN, ("127.0.0.1", port))
    peer, _ = server[0].accept()
    with peer:
        peer.settimeout(5)
        received = b""
        while len(received) < 11:
            received += peer.recv(16)
        assert b"HELLO WORLD" == received
    close_rst(sock)
    server[0].close()
