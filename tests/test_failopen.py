"""Fail open: when the guard's own machinery fails, connects behave as the stdlib's; the fault is counted, logged once.

The faults are injected into selfguard's own functions (the libc disconnect,
getsockname as the guard calls it, the range file) or into the interpreter (no
_ctypes); the sockets and the self-connects they meet stay real.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

import selfguard
from selfguard import _detect, _kernel, _policy, testing

from helpers import require_forcing


def _fails(*args):
    raise OSError(errno.ENOSYS, "injected fault")


def test_an_unavailable_disconnect_returns_the_connect_as_the_stdlib_would(forced, free_port, monkeypatch, caplog):
    """Without the in-place disconnect the guard cannot retry: the self-connected socket comes back, as unguarded."""
    monkeypatch.setattr(_policy, "disconnect", _fails)
    selfguard.install()
    for _ in range(2):
        port = free_port()
        sock = forced(port)
        assert sock.connect(("127.0.0.1", port)) is None
        assert selfguard.is_self_connected(sock)
    assert 2 == selfguard.stats()["faults"]
    assert 1 == sum("disconnecting" in r.getMessage() for r in caplog.records)


def test_a_failing_getsockname_leaves_the_connect_untouched(monkeypatch, caplog):
    """If the check itself fails, the connect's own result stands."""
    monkeypatch.setattr(_detect, "_getsockname", _fails)
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        for _ in range(2):
            with socket.create_connection(srv.getsockname(), timeout=5) as client:
                srv.accept()[0].close()
                assert client.getpeername() == srv.getsockname()
    assert 2 == selfguard.stats()["faults"]
    assert 1 == sum("getsockname" in r.getMessage() for r in caplog.records)


def test_an_unreadable_range_checks_every_port(forced, free_port, monkeypatch, caplog):
    """With /proc unreadable (not Linux, a sandbox) every TCP port is checked: slower, never blind."""
    port = free_port()
    low = _kernel.read_ephemeral_range()[0]
    monkeypatch.setattr(_kernel, "RANGE_FILE", "/nonexistent/ip_local_port_range")
    testing.reset()  # forget the range read so far
    selfguard.install()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))
    with socket.socket() as server:  # a port below the real range, which the guard would otherwise skip
        server.bind(("127.0.0.1", testing.free_port(1024, low - 1)))
        server.listen()
        before = selfguard.stats()["checked"]
        socket.create_connection(server.getsockname(), timeout=5).close()
        assert before + 1 == selfguard.stats()["checked"]
    assert 1 == selfguard.stats()["faults"]
    assert 1 == sum("ephemeral port range" in r.getMessage() for r in caplog.records)


def test_broken_logging_never_breaks_a_connect(forced, free_port):
    """A logging handler that raises is ignored by the guard."""

    class Broken:
        level = 0

        def handle(self, record):
            raise RuntimeError("broken handler")

    logger = __import__("logging").getLogger("selfguard")
    handler = Broken()
    logger.addHandler(handler)  # type: ignore[arg-type]
    try:
        selfguard.install()
        port = free_port()
        with pytest.raises(selfguard.SelfConnectError):
            forced(port).connect(("127.0.0.1", port))
        assert 3 == selfguard.stats()["self_connects"]
    finally:
        logger.removeHandler(handler)  # type: ignore[arg-type]


def test_without_ctypes_the_guard_fails_open_and_counts_it(free_port):
    """An interpreter without _ctypes cannot reset in place: the connect returns as the stdlib's, one fault counted."""
    require_forcing()
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['_ctypes'] = None  # as if built without it\n"
            "import socket, selfguard\n"
            "from selfguard.testing import force_self_connect\n"
            "selfguard.install()\n"
            "s = socket.socket(); force_self_connect(s, int(sys.argv[1]))\n"
            "s.connect(('127.0.0.1', int(sys.argv[1])))\n"
            "print(selfguard.is_self_connected(s), selfguard.stats()['faults'])\n",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "True 1" == done.stdout.strip(), done.stderr
    assert 1 == done.stderr.count("disconnecting a self-connected socket failed")
