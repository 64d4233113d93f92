"""Non-blocking connects completed by SO_ERROR or by connecting again: the truth, never a self-connection."""

from __future__ import annotations

import errno
import os
import select
import socket

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import can_bind, close_rst

pytestmark = pytest.mark.usefixtures("needs_forcing")


def non_blocking(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family)
    sock.setblocking(False)
    return sock


def complete_like_an_event_loop(sock: socket.socket, address) -> int:
    """connect_ex, wait until writable, read SO_ERROR: what every selector-based loop does."""
    code = sock.connect_ex(address)
    if code != errno.EINPROGRESS:
        return code
    _, writable, _ = select.select([], [sock], [], 5)
    assert writable, "the connect never completed"
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def complete_by_connecting_again(sock: socket.socket, port: int, api: str) -> None:
    """Start a non-blocking connect, wait until writable, connect again (gevent, Twisted): the truth, a refusal."""
    assert errno.EINPROGRESS == sock.connect_ex(("127.0.0.1", port))
    select.select([], [sock], [], 5)
    if api == "connect":
        with pytest.raises(selfguard.SelfConnectError):
            sock.connect(("127.0.0.1", port))
    else:
        assert errno.ECONNREFUSED == sock.connect_ex(("127.0.0.1", port))


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_completed_self_connect_is_reported_as_refused(free_port, family, host):
    """SO_ERROR reads ECONNREFUSED instead of 0, the socket is reset and the port is free."""
    selfguard.install()
    port = free_port()
    sock = non_blocking(family)
    try:
        with force_self_connects(port):
            assert errno.ECONNREFUSED == complete_like_an_event_loop(sock, (host, port))
        assert not selfguard.is_self_connected(sock)
        assert can_bind(port, host)
    finally:
        close_rst(sock)
    assert {"self_connects": 1, "gave_up": 1, "retries": 0} == {
        k: selfguard.stats()[k] for k in ("self_connects", "gave_up", "retries")
    }


def test_without_the_guard_the_loop_is_told_it_connected(free_port):
    """The control: unguarded, SO_ERROR says 0 and the socket is connected to itself."""
    port = free_port()
    sock = non_blocking()
    try:
        with force_self_connects(port):
            assert 0 == complete_like_an_event_loop(sock, ("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
    finally:
        close_rst(sock)


def test_a_real_connection_completes_untouched():
    """A non-blocking connect to a real server completes with SO_ERROR 0 and is checked once."""
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        sock = non_blocking()
        try:
            assert 0 == complete_like_an_event_loop(sock, srv.getsockname())
            assert srv.getsockname() == sock.getpeername()
        finally:
            sock.close()
    assert {"checked": 1, "self_connects": 0} == {k: selfguard.stats()[k] for k in ("checked", "self_connects")}


def test_an_so_error_read_before_the_connect_completes_does_not_end_the_check(free_port):
    """SO_ERROR read before completion (even before the connect is issued) finds nothing; the final read, the truth."""
    selfguard.install()
    port = free_port()
    sock = non_blocking()
    try:
        with force_self_connects(port):
            # Not during the handshake: on loopback it is over by the time connect_ex() returns,
            # so a read right after it would already be the completion read.
            assert 0 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert errno.EINPROGRESS == sock.connect_ex(("127.0.0.1", port))
            select.select([], [sock], [], 5)
            assert errno.ECONNREFUSED == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert not selfguard.is_self_connected(sock)
        assert 1 == selfguard.stats()["self_connects"]
    finally:
        close_rst(sock)


def test_observe_mode_reports_success_and_counts(free_port):
    """mode="observe" lets the self-connect through, counted."""
    selfguard.install(mode="observe")
    port = free_port()
    sock = non_blocking()
    try:
        with force_self_connects(port):
            assert 0 == complete_like_an_event_loop(sock, ("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
        assert 1 == selfguard.stats()["self_connects"]
    finally:
        close_rst(sock)


def test_trio_sockets_get_the_truth(free_port):
    """trio.socket connects are guarded: ConnectionRefusedError, never a self-connected socket."""
    trio = pytest.importorskip("trio")
    selfguard.install()
    port = free_port()

    async def main():
        sock = trio.socket.socket()
        with sock, force_self_connects(port), pytest.raises(ConnectionRefusedError):
            await sock.connect(("127.0.0.1", port))
        assert can_bind(port)  # (test_clients.py has trio reach the server that comes back)

    trio.run(main)
    assert 1 == selfguard.stats()["self_connects"]


@pytest.mark.parametrize("api", ["connect", "connect_ex"])
def test_a_non_blocking_connect_completed_by_connecting_again_gets_the_truth(forced, free_port, api):
    """gevent and Twisted learn that a non-blocking connect completed from a second connect: it gets the truth too."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=0.0)
    complete_by_connecting_again(sock, port, api)
    assert not selfguard.is_self_connected(sock)
    assert (1, 1) == (selfguard.stats()["self_connects"], selfguard.stats()["gave_up"])


def _fd_non_blocking(forced, port: int, how: str) -> socket.socket:
    """A socket the kernel treats as non-blocking while gettimeout() says None (blocking)."""
    sock = forced(port, timeout=None)
    os.set_blocking(sock.fileno(), False)
    if how == "os.set_blocking":
        return sock
    # A non-blocking fd handed over by C code or through SCM_RIGHTS.
    return socket.socket(fileno=os.dup(sock.fileno()))


@pytest.mark.parametrize("how", ["os.set_blocking", "socket(fileno=)"])
def test_an_fd_made_non_blocking_below_python_gets_the_truth_at_so_error(forced, free_port, how):
    """gettimeout() None, O_NONBLOCK on the fd: the connect answers EINPROGRESS and SO_ERROR is checked."""
    selfguard.install()
    port = free_port()
    sock = _fd_non_blocking(forced, port, how)
    assert sock.gettimeout() is None
    try:
        assert errno.ECONNREFUSED == complete_like_an_event_loop(sock, ("127.0.0.1", port))
        assert not selfguard.is_self_connected(sock)
        assert can_bind(port)
    finally:
        close_rst(sock)
    assert (1, 1) == (selfguard.stats()["self_connects"], selfguard.stats()["gave_up"])


@pytest.mark.parametrize("api", ["connect", "connect_ex"])
def test_an_fd_made_non_blocking_below_python_completed_by_connecting_again_ends(forced, free_port, api):
    """Connecting again until it completes ends with the truth, as it does unguarded (no retry that restarts it)."""
    selfguard.install()
    port = free_port()
    sock = _fd_non_blocking(forced, port, "os.set_blocking")
    try:
        complete_by_connecting_again(sock, port, api)
        assert not selfguard.is_self_connected(sock)
    finally:
        close_rst(sock)
    assert (1, 1, 0) == tuple(selfguard.stats()[k] for k in ("self_connects", "gave_up", "retries"))
