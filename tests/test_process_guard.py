"""`selfguard doctor --pid PID` for Python processes: guarded (and in which mode), not guarded, no such process.

Real processes: interpreters that install the guard, run under the sitecustomize, uninstall
it, fork; a program that is not Python; a PID that does not exist; and doctor run as a
user who may not read the process's /proc/PID/maps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import wrapt

import selfguard

from helpers import clean_environ, require

# Waits for a line on stdin before each step, and says "ready" after it.
STEPS = """
import os, socket, sys
import selfguard
def ready():
    print("ready", flush=True)
    sys.stdin.readline()
{steps}
"""


@contextmanager
def process(steps: str, *prefix: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process running *steps* (each calls ready() and waits for a line on stdin); killed at the end."""
    child = subprocess.Popen(
        [*prefix, sys.executable, "-c", STEPS.format(steps=steps)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_environ(**env),
        cwd="/",
    )
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=30)


def step(child: subprocess.Popen[str]) -> None:
    """Let *child* go on to its next ready()."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert "ready\n" == child.stdout.readline()


def wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    assert "ready\n" == child.stdout.readline()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(selfguard.__file__)))
IMPORTS = os.pathsep.join([ROOT, os.path.dirname(os.path.dirname(os.path.abspath(wrapt.__file__)))])


def doctor(*pids: int, user: Any = None, python: str = sys.executable) -> dict[str, Any]:
    args = [arg for pid in pids for arg in ("--pid", str(pid))]
    done = subprocess.run(
        [python, "-m", "selfguard", "doctor", "--json", *args],
        env=clean_environ(PYTHONPATH=IMPORTS),
        capture_output=True,
        text=True,
        timeout=120,
        user=user,
        cwd="/",
    )
    assert done.returncode in (0, 1), done.stderr
    found: dict[str, Any] = {entry["pid"]: entry for entry in json.loads(done.stdout)["processes"]}
    return found


def python_for(user: int) -> str:
    """An interpreter *user* may run, with selfguard and wrapt importable from where this test run has them."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [python, "-c", "import selfguard"], env=clean_environ(PYTHONPATH=IMPORTS), user=user, cwd="/",
                capture_output=True, timeout=60,
            )  # fmt: skip
        except OSError:
            continue
        if done.returncode == 0:
            return python
    require(False, f"needs a Python that user {user} may run, with this selfguard importable")
    return ""


def test_a_python_process_is_guarded_in_its_mode_until_it_uninstalls():
    """install() shows it, with the mode; install(mode=) again changes it; uninstall() takes it away."""
    steps = (
        "ready()\nselfguard.install()\nready()\nselfguard.install(mode='observe')\nready()\n"
        "selfguard.uninstall()\nready()"
    )
    with process(steps) as child:
        wait_ready(child)
        before = doctor(child.pid)[child.pid]
        assert ("not guarded", None, False) == (before["state"], before["python"], before["native"])
        step(child)
        assert ("guarded", "enforce") == (doctor(child.pid)[child.pid]["state"], doctor(child.pid)[child.pid]["python"])
        step(child)
        assert "observe" == doctor(child.pid)[child.pid]["python"]
        step(child)
        assert "not guarded" == doctor(child.pid)[child.pid]["state"]


def test_under_the_sitecustomize_the_guard_shows_from_the_first_connect():
    """Armed (stand-ins, nothing installed) is not yet guarded; after the first connect it is; a fork keeps it."""
    from selfguard._commands.run import BOOTSTRAP

    steps = (
        "ready()\n"
        "socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "ready()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import time; time.sleep(60); os._exit(0)\n"
        "print(pid, flush=True)\n"
        "ready()\n"
    )
    with process(steps, PYTHONPATH=BOOTSTRAP) as child:
        wait_ready(child)
        assert "not guarded" == doctor(child.pid)[child.pid]["state"]
        step(child)
        assert "guarded" == doctor(child.pid)[child.pid]["state"]
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.flush()
        forked = int(child.stdout.readline())
        assert "ready\n" == child.stdout.readline()
        try:
            seen = doctor(child.pid, forked)
            assert ("guarded", "enforce") == (seen[forked]["state"], seen[forked]["python"])
        finally:
            os.kill(forked, 9)


def test_no_such_process_is_not_the_same_as_not_guarded():
    """A PID nobody has, and a program that is not Python: two different answers; the text says each."""
    with open("/proc/sys/kernel/pid_max") as f:
        nobody = int(f.read()) + 1  # above the largest PID the kernel hands out
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        seen = doctor(nobody, sleeper.pid)
        assert "no such process" == seen[nobody]["state"]
        assert ("not guarded", "sleep") == (seen[sleeper.pid]["state"], seen[sleeper.pid]["command"])
        done = subprocess.run(
            [sys.executable, "-m", "selfguard", "doctor", "--pid", str(nobody), "--pid", str(sleeper.pid)],
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert f"Process {nobody}: no such process: " in done.stdout
        assert f"Process {sleeper.pid} (sleep): not guarded: neither guard is active" in done.stdout
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_doctor_may_not_inspect_is_cannot_tell():
    """Run as nobody, doctor may not read a root process's /proc/PID/maps: "cannot tell", not "not guarded"."""
    require(os.geteuid() == 0, "needs root (to run doctor as another user)")
    with process("selfguard.install()\nready()") as child:
        wait_ready(child)
        seen = doctor(child.pid, user=65534, python=python_for(65534))[child.pid]
        assert "cannot tell" == seen["state"], seen
        assert "run as root or as the process's user" in seen["detail"]
