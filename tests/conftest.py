"""Shared fixtures: a clean guard for every test, free ports inside the ephemeral range, forced self-connects."""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Any, Callable, Iterator

import pytest

from selfguard import testing
from selfguard.testing import can_force_self_connect, force_self_connect

ON_CI = bool(os.environ.get("CI"))
LINGER_RST = struct.pack("ii", 1, 0)

# Every form of a local address a self-connect shows up with.
ADDRESS_FORMS = [
    (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET, "0.0.0.0"),
    (socket.AF_INET6, "::1"),
    (socket.AF_INET6, "::ffff:127.0.0.1"),
]


def require(condition: bool, reason: str) -> None:
    """Skip with *reason* when *condition* is false -- except on CI, where it must run."""
    if condition:
        return
    if ON_CI:
        pytest.fail(f"CI must be able to run this test, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def clean_guard() -> Iterator[None]:
    """Every test starts and ends with the guard off, counters at zero and no listeners."""
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Return a function giving a fresh port inside the ephemeral range that nothing holds."""
    used: list[int] = []

    def pick() -> int:
        used.append(testing.free_port(avoid=used))
        return used[-1]

    return pick


@pytest.fixture
def forced() -> Callable[..., socket.socket]:
    """Return a factory of TCP sockets whose next connect to *port* self-connects (IP_LOCAL_PORT_RANGE)."""
    require(sys.platform.startswith("linux") and can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    made: list[socket.socket] = []

    def make(port: int, family: int = socket.AF_INET, timeout: float | None = 5.0) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        force_self_connect(sock, port)
        sock.settimeout(timeout)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        close_rst(sock)


def close_rst(sock: socket.socket) -> None:
    """Close with RST, so a test's self-connected socket leaves no TIME_WAIT behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    except OSError:
        pass
    sock.close()


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server that does not set SO_REUSEADDR could bind *port* now."""
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        srv.bind((host, port))
    except OSError:
        return False
    finally:
        srv.close()
    return True


def full_backlog_server(port: int) -> list[socket.socket]:
    """A listener on *port* whose backlog is full: a further connect to it hangs until its timeout.

    listen(0) with one client not accepted: Linux drops further SYNs. Close
    both returned sockets when done.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(0)
    return [server, socket.create_connection(("127.0.0.1", port))]


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What *call* returned, or the type, errno and message of what it raised."""
    try:
        return ("returned", call())
    except BaseException as exc:  # the point is to compare every outcome
        return (type(exc), getattr(exc, "errno", None), str(exc))
