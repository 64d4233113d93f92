"""Regressions for defects a review found: each test provokes the real case on the kernel (or in a real interpreter)."""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import select
import socket
import subprocess
import sys

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import clean_environ, close_rst, under_sitecustomize

pytestmark = pytest.mark.usefixtures("needs_forcing")


@pytest.mark.parametrize("api", ["connect", "connect_ex"])
def test_a_non_blocking_connect_completed_by_connecting_again(forced, free_port, api):
    """gevent and Twisted learn that a non-blocking connect completed from a second connect: it gets the truth too."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=0.0)
    assert errno.EINPROGRESS == sock.connect_ex(("127.0.0.1", port))
    select.select([], [sock], [], 5)
    if api == "connect":
        with pytest.raises(selfguard.SelfConnectError):
            sock.connect(("127.0.0.1", port))
    else:
        assert errno.ECONNREFUSED == sock.connect_ex(("127.0.0.1", port))
    assert not selfguard.is_self_connected(sock)
    assert (1, 1) == (selfguard.stats()["self_connects"], selfguard.stats()["gave_up"])


def test_a_port_given_as_an_int_enum_is_guarded(forced, free_port):
    """The stdlib accepts int subclasses as ports, so the guard does too."""
    port = free_port()
    Ports = enum.IntEnum("Ports", {"BACKEND": port})
    selfguard.install()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", Ports.BACKEND))


def test_without_ctypes_the_guard_fails_open_and_counts_it(free_port):
    """An interpreter without _ctypes cannot reset in place: the connect returns as the stdlib's, one fault counted."""
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


def test_a_cancelled_asyncio_connect_leaves_the_port_free(free_port):
    """Cancelled in the very loop round its socket self-connected: the socket is reset, the server can bind."""
    selfguard.install()
    port = free_port()

    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with force_self_connects(port, times=1):
            task = asyncio.ensure_future(loop.sock_connect(sock, ("127.0.0.1", port)))
            await asyncio.sleep(0)  # the connect is issued; the loop waits for writability
            twin = os.dup(sock.fileno())  # writable in the same round: cancel the task then
            loop.add_writer(twin, lambda: (task.cancel(), loop.remove_writer(twin)))
            with pytest.raises(asyncio.CancelledError):
                await task
        os.close(twin)
        assert not selfguard.is_self_connected(sock)
        sock.close()  # what create_connection does on any exception

    asyncio.run(main())
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))  # no EADDRINUSE: no TIME_WAIT was left behind
    srv.close()


@pytest.mark.parametrize("mode", ["relent", "observe"])
def test_a_socket_handed_back_is_reported_once(free_port, mode):
    """In relent and observe modes, later SO_ERROR reads of the same socket add no events."""
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


def test_selfguard_run_keeps_empty_pythonpath_entries(tmp_path):
    """An empty PYTHONPATH entry means the current directory; it stays one under selfguard run."""
    (tmp_path / "mymod_in_cwd.py").write_text("VALUE = 'found'\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfguard",
            "run",
            "--",
            sys.executable,
            "-c",
            "import mymod_in_cwd as m; print(m.VALUE)",
        ],
        env=clean_environ(PYTHONPATH=os.pathsep + "/nonexistent"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ("found", "") == (done.stdout.strip(), done.stderr)


STAND_IN_CASES = {
    "an ssl socket's first connect": (
        "import socket, ssl\n"
        "ctx = ssl.create_default_context()\n"
        "try:\n    ctx.wrap_socket(socket.socket(), server_hostname='x').connect(('127.0.0.1', 1))\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n",
        "ConnectionRefusedError",
    ),
    "a patch on top that calls the original it saved": (
        "import socket\n"
        "original = socket.socket.connect\n"
        "def theirs(self, address):\n    return original(self, address)\n"
        "socket.socket.connect = theirs\n"
        "try:\n    socket.socket().connect(('127.0.0.1', 1))\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n",
        "ConnectionRefusedError",
    ),
    "a subclass overriding connect": (
        "import socket\n"
        "calls = []\n"
        "class Mine(socket.socket):\n"
        "    def connect(self, address):\n        calls.append(address); return super().connect(address)\n"
        "try:\n    Mine().connect(('127.0.0.1', 1))\n"
        "except OSError:\n    print(len(calls), 'call')\n",
        "1 call",
    ),
    "uninstall() before the first connect": (
        "import socket, selfguard\n"
        "selfguard.uninstall()\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "print(selfguard.is_installed())\n",
        "False",
    ),
    "a find_spec probe before importing socket": (
        "import importlib.util\n"
        "importlib.util.find_spec('socket')\n"
        "import socket, selfguard\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "print(selfguard.is_installed())\n",
        "True",
    ),
}


@pytest.mark.parametrize("case", sorted(STAND_IN_CASES))
def test_the_sitecustomize_stand_ins_change_nothing(case):
    """Under the sitecustomize, programs behave as without it (first connects included)."""
    code, expected = STAND_IN_CASES[case]
    done = under_sitecustomize(code)
    assert (expected, "") == (done.stdout.strip(), done.stderr)


def test_a_fork_during_the_first_connect_leaves_a_working_child():
    """Forking while another thread imports selfguard: the child says so, stands aside, and its connects work."""
    code = (
        "import os, socket, threading, time\n"
        "def first():\n"
        "    socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "t = threading.Thread(target=first); t.start()\n"
        "time.sleep(0.002)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('child', socket.socket().connect_ex(('127.0.0.1', 1)), flush=True)\n"
        "    os._exit(0)\n"
        "t.join(); os.waitpid(pid, 0)\n"
    )
    # Python 3.12+ warns that fork() in a multi-threaded process is risky: that is the point here.
    done = under_sitecustomize(code, "-W", "ignore::DeprecationWarning")
    assert "child 111" == done.stdout.strip()
    assert done.stderr in (
        "",
        "selfguard: not active in this process: RuntimeError: forked while another thread was importing selfguard\n",
    )
