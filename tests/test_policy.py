"""One policy for every connect path: attempts numbered truthfully, each handed-back socket reported once."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from typing import Any, Callable

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import close_rst, require_forcing


def _so_error_path(sock: socket.socket, address: Any) -> Any:
    """What selector loops do: connect_ex, wait until writable, read SO_ERROR."""
    sock.setblocking(False)
    assert errno.EINPROGRESS == sock.connect_ex(address)
    select.select([], [sock], [], 5)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def _connect_again_path(sock: socket.socket, address: Any) -> Any:
    """What gevent and Twisted do: connect_ex, wait until writable, connect_ex again."""
    sock.setblocking(False)
    assert errno.EINPROGRESS == sock.connect_ex(address)
    select.select([], [sock], [], 5)
    return sock.connect_ex(address)


def _blocking_path(sock: socket.socket, address: Any) -> Any:
    return sock.connect_ex(address)


def _asyncio_path(sock: socket.socket, address: Any) -> Any:
    sock.setblocking(False)

    async def dial() -> None:
        await asyncio.get_running_loop().sock_connect(sock, address)

    try:
        asyncio.run(dial())
    except OSError as exc:
        return exc.errno
    return 0


PATHS: dict[str, Callable[[socket.socket, Any], Any]] = {
    "SO_ERROR": _so_error_path,
    "connect again": _connect_again_path,
    "blocking connect_ex": _blocking_path,
    "asyncio sock_connect": _asyncio_path,
}
# Paths on which nobody waits to connect again: the first attempt is also the last.
NO_RETRY = ("SO_ERROR", "connect again")


@pytest.mark.parametrize("path", NO_RETRY)
def test_a_non_blocking_self_connect_is_reported_as_attempt_one(free_port, forced, caplog, path):
    """A path that cannot retry reports one self-connect, attempt 1, and gives up after 1 -- not "attempt 3"."""
    events: list[selfguard.Event] = []
    selfguard.install()
    selfguard.add_listener(events.append)
    port = free_port()
    sock = forced(port)
    assert errno.ECONNREFUSED == PATHS[path](sock, ("127.0.0.1", port))
    assert [("self_connect", 1), ("gave_up", 1)] == [(e.kind, e.attempt) for e in events]
    assert (1, 1, 0) == tuple(selfguard.stats()[k] for k in ("self_connects", "gave_up", "retries"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("gave up after 1 attempt:" in m for m in messages), messages


@pytest.mark.parametrize("mode", ["relent", "observe"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_handed_back_socket_is_reported_once_on_every_path(free_port, forced, mode, path):
    """relent and observe hand the self-connected socket back; asking SO_ERROR about it again reports nothing new."""
    selfguard.install(mode=mode, retries=0)
    port = free_port()
    sock = forced(port)
    assert 0 == PATHS[path](sock, ("127.0.0.1", port))
    assert selfguard.is_self_connected(sock)
    reported = selfguard.stats()["self_connects"]
    assert 1 == reported
    for _ in range(3):  # what an event loop does when it looks at the socket again
        assert 0 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    # Connecting again: 0 the first time after a non-blocking connect, EISCONN after that (the stdlib's answers).
    assert sock.connect_ex(("127.0.0.1", port)) in (0, errno.EISCONN)
    assert reported == selfguard.stats()["self_connects"]
    assert (1 if mode == "relent" else 0) == selfguard.stats()["relented"]
    close_rst(sock)


@pytest.mark.parametrize("mode", ["relent", "observe"])
def test_with_retries_left_a_non_blocking_self_connect_is_still_handed_back_once(free_port, mode):
    """With retries to spare, relent and observe still hand a non-blocking self-connect back at once, reported once."""
    require_forcing()
    selfguard.install(mode=mode)
    port = free_port()
    sock = socket.socket()
    sock.setblocking(False)
    with force_self_connects(port):
        sock.connect_ex(("127.0.0.1", port))
        select.select([], [sock], [], 5)
        for _ in range(3):
            assert 0 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    close_rst(sock)
    assert 1 == selfguard.stats()["self_connects"]


def test_so_error_with_a_buffer_length_gets_the_truth_as_bytes(free_port, forced):
    """getsockopt(SOL_SOCKET, SO_ERROR, buflen) returns bytes; a self-connect reads as ECONNREFUSED there too."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    sock.setblocking(False)
    assert errno.EINPROGRESS == sock.connect_ex(("127.0.0.1", port))
    select.select([], [sock], [], 5)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR, 4)
    assert errno.ECONNREFUSED == int.from_bytes(raw, "little" if socket.htons(1) != 1 else "big")
    assert not selfguard.is_self_connected(sock)
    assert 1 == selfguard.stats()["gave_up"]


def test_so_error_with_a_buffer_length_passes_real_errors_through(free_port):
    """A refused non-blocking connect reads the same bytes with and without the guard."""
    port = free_port()
    seen = []
    for guarded in (False, True):
        if guarded:
            selfguard.install()
        with socket.socket() as sock:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port + 1 if port % 2 == 0 else port))
            select.select([], [sock], [], 5)
            seen.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR, 8))
    assert seen[0] == seen[1]
    assert any(seen[0])


class _ComparedSocket(socket.socket):  # noqa: PLW1641 (unhashable on purpose)
    """A socket class that defines __eq__, and so is unhashable (as some libraries' wrappers are)."""

    def __eq__(self, other: object) -> bool:
        return self is other


@pytest.mark.parametrize("mode", ["enforce", "observe"])
@pytest.mark.parametrize("path", list(PATHS))
def test_an_unhashable_socket_class_gets_the_same_outcome(free_port, mode, path):
    """A socket.socket subclass with __eq__ (no __hash__) self-connects: reset and refused, or handed back once."""
    require_forcing()
    selfguard.install(mode=mode, retries=0)
    port = free_port()
    sock = _ComparedSocket()
    sock.settimeout(5)
    from selfguard.testing import force_self_connect

    force_self_connect(sock, port)
    outcome = PATHS[path](sock, ("127.0.0.1", port))
    if mode == "enforce":
        assert errno.ECONNREFUSED == outcome
        assert not selfguard.is_self_connected(sock)
    else:
        assert 0 == outcome
        assert selfguard.is_self_connected(sock)
        for _ in range(2):
            assert 0 == sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert 1 == selfguard.stats()["self_connects"]
    close_rst(sock)


def test_an_unhashable_socket_bound_on_purpose_connects_to_itself(free_port):
    """bind() to an explicit port on an unhashable socket is remembered: the deliberate self-connect is left alone."""
    selfguard.install()
    port = free_port()
    with _ComparedSocket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
        assert 0 == selfguard.stats()["self_connects"]


def test_a_socket_bound_to_port_0_that_dials_its_own_port_is_reset():
    """bind(("127.0.0.1", 0)) then a dial to that port: the kernel picked it, so it is reset (docs/limits.md)."""
    selfguard.install()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):  # the retry picks another port: nothing listens at this one
            sock.connect(sock.getsockname())
    assert 1 == selfguard.stats()["self_connects"]
