"""The demonstration behind `python -m selfguard`: a real self-connect unguarded, then guarded."""

from __future__ import annotations

import logging
import platform
import random
import socket
import sys
import time
from typing import Callable, Optional

from . import _events, _install
from ._errors import SelfConnectError
from ._kernel import is_self_connected, read_ephemeral_range
from .testing import can_force_self_connect, force_self_connect

MAX_DIALS = 500_000
MAX_SECONDS = 30.0


def _free_port(low: int, high: int) -> int:
    """A port inside the range, of the parity connect() tries first, that nothing holds."""
    for _ in range(1000):
        port = random.randint(low, high)
        port -= (port - low) % 2
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _bind_result(port: int) -> str:
    server = socket.socket()  # no SO_REUSEADDR, like many servers
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        return f"fails: {exc}"
    finally:
        server.close()
    return "OK"


def _dial(port: int, forced: bool) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    if forced:
        force_self_connect(sock, port)
    return sock


def _until(
    port: int, forced: bool, done: Callable[[socket.socket], bool]
) -> tuple[Optional[socket.socket], int, Optional[BaseException]]:
    """Dial *port* until done(sock) says so (bounded); return the socket, the dial count and the last error."""
    deadline = time.monotonic() + MAX_SECONDS
    error: Optional[BaseException] = None
    for dials in range(1, (1 if forced else MAX_DIALS) + 1):
        sock = _dial(port, forced)
        try:
            sock.connect(("127.0.0.1", port))
            error = None
        except OSError as exc:
            error = exc
        if done(sock) or time.monotonic() > deadline:
            return sock, dials, error
        sock.close()
    return None, dials, error


def main() -> int:
    low, high = read_ephemeral_range()
    forced = can_force_self_connect()
    how = "IP_LOCAL_PORT_RANGE forces it" if forced else f"brute force, up to {MAX_DIALS} dials (Linux < 6.3)"
    print(f"selfguard demonstration on Linux {platform.release()}, ephemeral ports {low}-{high} ({how})\n")

    port = _free_port(low, high)
    print(f"1. Without the guard: a client dials 127.0.0.1:{port}, where nothing listens")
    sock, dials, _ = _until(port, forced, is_self_connected)
    if sock is None or not is_self_connected(sock):
        print(f"   no self-connect in {dials} dials; try again")
        return 1
    local, peer = sock.getsockname(), sock.getpeername()
    sock.sendall(b"PING")
    reply = sock.recv(4)
    print(f"   connect() succeeded after {dials} dial(s): local {local[0]}:{local[1]} == remote {peer[0]}:{peer[1]}")
    print(f"   it sent b'PING' and read back {reply!r}: its own request, as if a server answered")
    sock.close()
    print(f"   after close(), a server binding port {port} {_bind_result(port)}  <- TIME_WAIT, ~60 s\n")

    port = _free_port(low, high)
    print(f"2. With selfguard.install(): the same dial to 127.0.0.1:{port}")
    # Show the guard's own log lines in place (logger "selfguard", WARNING).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("   [log] %(message)s"))
    _events.logger.addHandler(handler)
    _install.install()
    try:
        sock, dials, error = _until(port, forced, lambda s: _events.stats()["self_connects"] > 0)
        if isinstance(error, SelfConnectError):
            print(f"   connect() raised SelfConnectError: {error}")
        else:
            print(f"   the guard caught a self-connect in {dials} dial(s); its retry told the truth: {error!r}")
        if sock is not None:
            print(f"   the socket is not connected to itself: is_self_connected() = {is_self_connected(sock)}")
            sock.close()
        print(f"   right after, a server binding port {port}: {_bind_result(port)}")
        with (
            socket.create_server(("127.0.0.1", port)) as server,
            socket.create_connection(("127.0.0.1", port), timeout=5) as client,
        ):
            accepted, _ = server.accept()
            accepted.close()
            print(f"   with the server up, a client reaches it: {client.getsockname()[1]} -> {port}")
        print(f"\ncounters: {_events.stats()}")
    finally:
        _install.uninstall()
        _events.logger.removeHandler(handler)
    return 0
