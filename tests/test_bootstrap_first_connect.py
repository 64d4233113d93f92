"""The sitecustomize's stand-ins until the first connect change nothing a program sees, even across a fork."""

from __future__ import annotations

import pytest

from helpers import under_sitecustomize

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
