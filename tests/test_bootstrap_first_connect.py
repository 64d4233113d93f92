"""The sitecustomize's stand-ins until the first connect change nothing a program sees, even across a fork."""

from __future__ import annotations

import pytest

from helpers import require_forcing, under_sitecustomize

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


def test_a_signal_handler_sending_during_the_first_connect_leaves_the_guard_on(free_port):
    """A SIGALRM handler that sends and connects while the first connect imports selfguard: the guard still comes on."""
    require_forcing()
    port = free_port()
    code = (
        "import signal, socket, sys\n"
        "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "reentered = 0\n"
        "def heartbeat(signum, frame):\n"
        "    global reentered\n"
        # The first connect is half-way through importing selfguard or installing it.
        "    if 'selfguard' in sys.modules and type(vars(socket.socket)['connect']).__name__ == 'function':\n"
        "        reentered += 1\n"
        "    udp.sendto(b'beat', ('127.0.0.1', 9))\n"
        "    with socket.socket() as tcp:\n"
        "        tcp.connect_ex(('127.0.0.1', 1))\n"
        "signal.signal(signal.SIGALRM, heartbeat)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "print('re-entered', reentered > 0)\n"
        "import selfguard\n"
        "from selfguard.testing import force_self_connect\n"
        f"s = socket.socket(); force_self_connect(s, {port})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port})); print('UNGUARDED')\n"
        "except selfguard.SelfConnectError:\n"
        "    print('caught', selfguard.status())\n"
    )
    done = under_sitecustomize(code)
    # Only the guard's log lines for the forced self-connect; no "not active".
    assert "not active" not in done.stderr
    assert "re-entered True\ncaught active" == done.stdout.strip(), done.stderr


# Run with the bootstrap and with SELFGUARD=0 (no hook at all): the output must be the same.
PARITY_CASES = {
    "find_spec and the loader of socket": (
        "import importlib.util, inspect\n"
        "probe = importlib.util.find_spec('socket')\n"
        "print(type(probe.loader), probe.loader.get_source('socket') is not None)\n"
        "import socket\n"
        "spec = importlib.util.find_spec('socket')\n"
        "print(type(spec.loader), type(socket.__loader__), sorted(vars(socket.__loader__)))\n"
        "print(spec.loader is socket.__loader__, type(spec.loader).get_source(spec.loader, 'socket') is not None)\n"
        "print(inspect.getsource(socket.create_connection).splitlines()[0])\n"
    ),
    "the stand-ins' docs and errors before the first connect": (
        "import inspect, socket\n"
        "for name in ('connect', 'connect_ex', 'bind', 'sendto', 'sendmsg'):\n"
        "    print(name, getattr(socket.socket, name).__doc__ == getattr(socket._socket.socket, name).__doc__)\n"
        "    try:\n        print(inspect.signature(getattr(socket.socket, name)))\n"
        "    except ValueError as exc:\n        print(exc)\n"
        "for call in (lambda: socket.socket.sendto(None, b'x', ('127.0.0.1', 9)),\n"
        "             lambda: socket.socket.connect(None, ('127.0.0.1', 1)),\n"
        "             lambda: socket.socket.bind(1, ('127.0.0.1', 0))):\n"
        "    try:\n        call()\n"
        "    except TypeError as exc:\n        print(exc)\n"
    ),
    "pickling the stand-ins before the first connect": (
        "import pickle, socket\n"
        "for name in ('connect', 'connect_ex', 'bind', 'sendto', 'sendmsg'):\n"
        "    print(name, callable(pickle.loads(pickle.dumps(getattr(socket.socket, name)))))\n"
        "    try:\n        pickle.dumps(getattr(socket.socket(), name))\n"
        "    except TypeError as exc:\n        print(exc)\n"
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_before_the_first_connect_a_program_sees_what_it_sees_without_the_bootstrap(case):
    """What a program reads off socket before its first connect is the same with the bootstrap and without."""
    code = PARITY_CASES[case]
    guarded, bare = under_sitecustomize(code), under_sitecustomize(code, SELFGUARD="0")
    assert (bare.stdout, "") == (guarded.stdout, guarded.stderr)
    assert "" == bare.stderr


def test_jedi_completes_socket_as_without_the_bootstrap():
    """jedi reads source through the spec: its completions of socket and trio.socket are the same with the bootstrap."""
    pytest.importorskip("jedi")
    pytest.importorskip("trio")
    code = (
        "import socket, jedi\n"
        "for source in ('import socket\\nsocket.', 'import trio.socket\\ntrio.socket.'):\n"
        "    print(len(jedi.Script(source).complete(2, len(source.splitlines()[-1]))))\n"
    )
    guarded, bare = under_sitecustomize(code), under_sitecustomize(code, SELFGUARD="0")
    assert (bare.stdout, "") == (guarded.stdout, guarded.stderr)
    assert all(int(count) > 100 for count in bare.stdout.split()), bare.stdout


def test_a_loader_that_takes_no_attribute_still_gets_the_stand_ins():
    """A finder whose loader has __slots__ loads socket: the bootstrap wraps that loader instead, and is armed."""
    done = under_sitecustomize(
        "import importlib.machinery, sys\n"
        "class Slotted:\n"
        "    __slots__ = ('real',)\n"
        "    def __init__(self, real): self.real = real\n"
        "    def create_module(self, spec): return None\n"
        "    def exec_module(self, module): self.real.exec_module(module)\n"
        "class Finder:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name != 'socket': return None\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        spec.loader = Slotted(spec.loader)\n"
        "        return spec\n"
        "sys.meta_path.insert(1, Finder)\n"
        "import socket, selfguard\n"
        "print(type(socket.__loader__).__name__, selfguard.status())\n"
    )
    assert ("_SelfguardThenDefer armed", "") == (done.stdout.strip(), done.stderr)
