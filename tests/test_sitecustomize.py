"""The sitecustomize for legacy services, in real interpreters: guarding, costing nothing early, never harming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard._commands.run import BOOTSTRAP
from selfguard.testing import can_force_self_connect

from helpers import require, under_sitecustomize

EXAMPLE = Path(__file__).resolve().parent.parent / "sitecustomize_example" / "sitecustomize.py"
# The guard is installed at the first connect, connect_ex or bind: this is one (port 1: refused at once).
FIRST_CONNECT = "import socket; socket.socket().connect_ex(('127.0.0.1', 1))\n"
INSTALLED = "import selfguard; print(selfguard.is_installed())"


def test_the_example_is_the_sitecustomize_that_selfguard_run_uses():
    """sitecustomize_example/sitecustomize.py and the packaged one are one file."""
    assert (Path(BOOTSTRAP) / "sitecustomize.py").read_bytes() == EXAMPLE.read_bytes()


def test_a_process_that_imports_socket_is_guarded(free_port):
    """Deployed on PYTHONPATH, it guards an unmodified program: a forced self-connect raises SelfConnectError."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    port = free_port()
    done = under_sitecustomize(
        "import socket, selfguard\n"
        "from selfguard.testing import force_self_connect\n"
        "s = socket.socket()\n"
        f"force_self_connect(s, {port})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except selfguard.SelfConnectError as exc:\n"
        "    print('caught after', exc.attempts, 'attempts')\n"
    )
    assert "caught after 3 attempts" == done.stdout.strip()
    assert 1 == done.stderr.count("connected to itself")  # the guard's WARNING line, for the service's logs


def test_a_process_without_sockets_imports_nothing_of_selfguard():
    """Until socket is imported, neither selfguard nor wrapt is: short scripts pay nothing."""
    done = under_sitecustomize(
        "import sys, json; print(json.dumps(sorted(m for m in sys.modules if m.startswith(('selfguard', 'wrapt')))))"
    )
    assert 0 == done.returncode, done.stderr
    assert [] == json.loads(done.stdout)


def test_selfguard_off_leaves_no_trace():
    """SELFGUARD=0 means no import hook and no guard, even after socket is imported."""
    done = under_sitecustomize(
        "import sys, socket\n"
        "print(any(type(f).__name__ == '_SelfguardAfterSocket' for f in sys.meta_path), 'selfguard' in sys.modules)",
        SELFGUARD="off",
    )
    assert ("False False", "") == (done.stdout.strip(), done.stderr)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SELFGUARD_RETRIES", "lots"),
        ("SELFGUARD_MODE", "$(rm -rf /)"),
        ("SELFGUARD", "perhaps"),
        ("SELFGUARD_RETRY_ADDRNOTAVAIL", "x" * 100_000),
    ],
)
def test_a_bad_value_warns_once_naming_the_variable_and_the_guard_stays_on(variable, value):
    """The interpreter starts, warns once on stderr with the variable's name, and uses the default."""
    done = under_sitecustomize(FIRST_CONNECT + INSTALLED, **{variable: value})
    assert 0 == done.returncode
    assert "True" == done.stdout.strip()
    assert 1 == done.stderr.count("RuntimeWarning")
    assert f"for {variable} environment variable" in done.stderr


def test_an_internal_failure_is_reported_and_swallowed(tmp_path):
    """A broken installation (here: a wrapt that fails to import) cannot stop the program: one line on stderr."""
    broken = tmp_path / "wrapt"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    done = under_sitecustomize(
        FIRST_CONNECT + "print('program ran')", pythonpath=os.pathsep.join([BOOTSTRAP, str(tmp_path)])
    )
    assert 0 == done.returncode
    assert "program ran" == done.stdout.strip()
    assert "selfguard: not active in this process: RuntimeError: broken on purpose\n" == done.stderr


def test_a_sitecustomize_further_along_the_path_still_runs(tmp_path):
    """The sitecustomize it hides (a distribution's, or the user's own) runs too, once."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stdout.write('theirs ran\\n')\n")
    done = under_sitecustomize(FIRST_CONNECT + INSTALLED, pythonpath=os.pathsep.join([BOOTSTRAP, str(tmp_path)]))
    assert ("theirs ran\nTrue\n", "") == (done.stdout, done.stderr)


def test_socket_imported_before_the_sitecustomize_runs_is_guarded_too():
    """If something imported socket earlier (a .pth file, say), the stand-ins go on at once."""
    import sysconfig

    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [
            sys.executable,
            "-S",  # no automatic site: the code below imports socket first, then runs the sitecustomize
            "-c",
            "import socket, runpy, sys\n"
            "runpy.run_path(sys.argv[1], run_name='sitecustomize')\n" + FIRST_CONNECT + INSTALLED,
            str(Path(BOOTSTRAP) / "sitecustomize.py"),
        ],
        env={"PYTHONPATH": os.pathsep.join([repo, sysconfig.get_paths()["purelib"]])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ("True", "") == (done.stdout.strip(), done.stderr)


@pytest.mark.parametrize(
    "first_import",
    ["urllib.request", "http.client", "xmlrpc.client", "selfguard", "asyncio", "email.message, socket"],
)
def test_whatever_imports_socket_first_the_guard_comes_up(first_import):
    """Installing is left to the first connect, so no import chain is cut in the middle (urllib.request was)."""
    done = under_sitecustomize(f"import {first_import}\n" + FIRST_CONNECT + INSTALLED)
    assert ("True", "") == (done.stdout.strip(), done.stderr)


def test_until_the_first_connect_nothing_heavy_is_imported():
    """import socket alone puts small stand-ins in place; selfguard and wrapt wait for a connect."""
    done = under_sitecustomize(
        "import socket, sys\n"
        "print(sorted(n for n in ('connect', 'connect_ex', 'bind') if n in vars(socket.socket)),"
        " 'wrapt' in sys.modules, 'selfguard' in sys.modules)"
    )
    assert ("['bind', 'connect', 'connect_ex'] False False", "") == (done.stdout.strip(), done.stderr)


def test_an_explicit_install_takes_over_from_the_stand_ins():
    """A program that calls install() itself gets one guard, and uninstall() leaves socket.socket bare."""
    done = under_sitecustomize(
        "import socket, selfguard, wrapt\n"
        "selfguard.install(); selfguard.install()\n"
        "print(isinstance(vars(socket.socket)['connect'], wrapt.FunctionWrapper))\n"
        "selfguard.uninstall()\n"
        "print(sorted(n for n in ('connect', 'connect_ex', 'bind', 'getsockopt') if n in vars(socket.socket)))\n"
        + FIRST_CONNECT
        + INSTALLED
    )
    assert ("True\n[]\nFalse", "") == (done.stdout.strip(), done.stderr)


def test_threads_racing_to_the_first_connect_install_once():
    """Eight threads' first connects at once: one install, every thread guarded, nothing printed."""
    done = under_sitecustomize(
        "import socket, threading, selfguard, wrapt\n"
        "barrier = threading.Barrier(8)\n"
        "def first():\n"
        "    barrier.wait(); socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "threads = [threading.Thread(target=first) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(selfguard.is_installed(), isinstance(vars(socket.socket)['connect'], wrapt.FunctionWrapper))"
    )
    assert ("True True", "") == (done.stdout.strip(), done.stderr)


def test_a_wrapt_patch_put_on_top_of_a_stand_in_survives_the_first_connect():
    """Someone's wrapt wrapper around a stand-in is theirs: the first connect does not take it off with the stand-in."""
    done = under_sitecustomize(
        "import socket, wrapt, selfguard\n"
        "calls = []\n"
        "def theirs(wrapped, instance, args, kwargs):\n"
        "    calls.append(args[0]); return wrapped(*args, **kwargs)\n"
        "wrapt.wrap_function_wrapper(socket.socket, 'connect', theirs)\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        socket.socket().connect(('127.0.0.1', 1))\n"
        "    except ConnectionRefusedError:\n"
        "        pass\n"
        "print(len(calls), selfguard.is_installed())"
    )
    assert ("2 True", "") == (done.stdout.strip(), done.stderr)
