"""Fail open: when the guard's own machinery fails, connects behave as the stdlib's; the fault is counted, logged once.

The faults are injected into selfguard's own functions (the libc disconnect,
getsockname as the guard calls it, the range file) or into the interpreter (no
_ctypes); the sockets and the self-connects they meet stay real.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

import selfguard
from selfguard import _detect, _kernel, _policy, testing

from helpers import require_forcing, require_speedups


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


def test_a_failing_getsockname_leaves_the_connect_untouched(monkeypatch, caplog, python_wrappers):
    """If the check itself fails, the connect's own result stands.

    The fault is injected into the Python wrappers' getsockname(); the C ones
    make their own and, should it fail, ask the Python code, which fails here.
    """
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


@pytest.mark.parametrize("speedups", ["1", "0"])
def test_without_ctypes_a_self_connect_is_reset_in_place_with_its_options(free_port, speedups):
    """Without _ctypes a self-connect is reset all the same, options kept.

    With the C accelerator (SELFGUARD_SPEEDUPS=1), by its own AF_UNSPEC connect;
    without it, by a fresh socket put on the same fd.
    """
    require_forcing()
    if speedups == "1":
        require_speedups()
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['_ctypes'] = None  # as if built without it (or a 3.12 subinterpreter)\n"
            "import os, socket, selfguard\n"
            "from selfguard.testing import force_self_connect\n"
            "selfguard.install()\n"
            "port = int(sys.argv[1])\n"
            "s = socket.socket(); s.settimeout(3.5); fd = s.fileno()\n"
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)\n"
            "force_self_connect(s, port)\n"
            "try:\n"
            "    s.connect(('127.0.0.1', port))\n"
            "except selfguard.SelfConnectError:\n"
            "    print('SelfConnectError')\n"
            "print(s.fileno() == fd, s.gettimeout(), os.get_blocking(fd),\n"
            "      s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),\n"
            "      s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))\n"
            "socket.create_server(('127.0.0.1', port)).close()  # RST, not FIN: the port is free at once\n"
            "print(selfguard.stats()['self_connects'], selfguard.stats()['faults'])\n",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SELFGUARD_SPEEDUPS=speedups),
    )
    assert ["SelfConnectError", "True 3.5 False 1 1", "3 0"] == done.stdout.split("\n")[:3], done.stderr


def test_a_connect_during_interpreter_shutdown_behaves_as_the_stdlibs():
    """A __del__ that connects at shutdown, with the cached range stale, gets the stdlib's outcome (no NameError)."""
    script = r"""
import os, socket, sys, time
import selfguard
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import free_port

PORT = free_port(1024, read_ephemeral_range()[0] - 1)  # outside the range, nothing listening: refused

class Late:
    def __del__(self):
        sock = socket.socket()
        try:
            outcome = sock.connect_ex(("127.0.0.1", PORT))
        except BaseException as exc:
            outcome = repr(exc)
        finally:
            sock.close()
        os.write(1, f"{outcome}\n".encode())

selfguard.install()
with socket.socket() as first:  # the range is read now
    first.connect_ex(("127.0.0.1", PORT))
time.sleep(1.2)  # and is stale by the time of the shutdown
late = Late()
late.cycle = late  # collected by the collection at shutdown, once builtins.open is gone
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    assert str(errno.ECONNREFUSED) == done.stdout.strip(), done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr


def test_one_failed_read_of_the_range_costs_one_fault_and_the_next_read_puts_it_back():
    """EMFILE at the fd limit while the range is due: that connect is checked; a second later the range is back."""
    script = r"""
import json, os, resource, socket, time
import selfguard
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import free_port

selfguard.install()
server = socket.create_server(("127.0.0.1", free_port(1024, read_ephemeral_range()[0] - 1)))
clients = [socket.socket() for _ in range(3)]
clients[0].connect(server.getsockname())  # the range is read: a port outside it is not checked
checked = [selfguard.stats()["checked"]]
time.sleep(1.2)  # the range is due for a read
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
filler = []
try:
    while True:
        filler.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
clients[1].connect(server.getsockname())  # the read fails (EMFILE): every port is checked
checked.append(selfguard.stats()["checked"])
for fd in filler:
    os.close(fd)
time.sleep(1.2)
clients[2].connect(server.getsockname())  # the next read puts the range back
checked.append(selfguard.stats()["checked"])
print(json.dumps({"checked": checked, "faults": selfguard.stats()["faults"]}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    report = __import__("json").loads(done.stdout)
    assert [0, 1, 1] == report["checked"]
    assert 1 == report["faults"]
    assert 1 == done.stderr.count("ephemeral port range"), done.stderr
