"""CPython 3.12+ isolated subinterpreters, where ctypes can't be loaded: the guard still resets a self-connect.

The test needs an interpreter of 3.12 or later (this one, or one pyenv built);
the subinterpreter is made with the private module those versions have
(_xxsubinterpreters in 3.12, _interpreters from 3.13 on).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wrapt

from helpers import require, require_forcing

ROOT = Path(__file__).resolve().parent.parent
WRAPT_PATH = str(Path(wrapt.__file__).resolve().parent.parent)

# Run by a 3.12+ interpreter: one isolated subinterpreter installs the guard and dials
# a socket forced to connect to itself. wrapt's C part, built for another version or
# refused in a subinterpreter, gives way to its pure-Python one.
SCRIPT = r"""
import sys, textwrap
try:
    import _interpreters as interpreters  # 3.13+
    create = lambda: interpreters.create()
except ImportError:
    import _xxsubinterpreters as interpreters  # 3.12
    create = lambda: interpreters.create(isolated=True)
code = textwrap.dedent('''
    import os, socket, sys
    sys.path[:0] = PATHS
    import selfguard
    from selfguard.testing import force_self_connect, free_port
    try:
        import ctypes
        ctypes_loads = "ctypes loads"
    except ImportError:
        ctypes_loads = "no ctypes"
    selfguard.install()
    port = free_port()
    sock = socket.socket()
    sock.settimeout(5)
    force_self_connect(sock, port)
    try:
        sock.connect(("127.0.0.1", port))
        outcome = "self-connected" if selfguard.is_self_connected(sock) else "connected"
    except selfguard.SelfConnectError:
        outcome = "SelfConnectError"
    sock.close()
    stats = selfguard.stats()
    wrappers = "C" if selfguard._accel.speedups is not None else "Python"
    fields = [outcome, ctypes_loads, selfguard.status(), stats['self_connects'], stats['faults'], wrappers]
    os.write(1, ("|".join(map(str, fields)) + "\\n").encode())
''').replace("PATHS", repr(sys.argv[1:]))
interpreter = create()
interpreters.run_string(interpreter, code)
interpreters.destroy(interpreter)
"""


def _python_with_subinterpreters() -> str | None:
    """This interpreter if it is 3.12 or later, else a 3.12+ one pyenv built."""
    if sys.version_info >= (3, 12):
        return sys.executable
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in ("3.12", "3.13", "3.14"):
        for candidate in sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python"))):
            if subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=60).returncode == 0:
                return candidate
    return None


@pytest.mark.parametrize("wrappers", ["C", "Python"])
def test_a_self_connect_in_an_isolated_subinterpreter_is_reset_without_ctypes(wrappers: str):
    """In a 3.12+ isolated subinterpreter (no ctypes there), enforce mode resets and refuses; no fault.

    With the C accelerator too: it loads there (multi-phase init, no global Python state).
    """
    require_forcing()
    if wrappers == "C":
        require(any(ROOT.glob("selfguard/_speedups*.so")), "needs the C accelerator built in the source tree")
    python = _python_with_subinterpreters()
    require(python is not None, "needs CPython 3.12 or later (this interpreter, or one pyenv built)")
    assert python is not None
    environment = dict(os.environ, SELFGUARD_SPEEDUPS="1" if wrappers == "C" else "0")
    done = subprocess.run(
        [python, "-c", SCRIPT, str(ROOT), WRAPT_PATH],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env=environment,
    )
    # Not the exit status: CPython 3.12.1 with wrapt 2.5 aborts at exit ("free(): invalid pointer")
    # once wrapt was imported in a subinterpreter, with or without selfguard.
    assert f"SelfConnectError|no ctypes|active|3|0|{wrappers}" == done.stdout.strip(), done.stdout + done.stderr[-2000:]
