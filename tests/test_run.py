"""`selfguard run -- CMD`: the guard in CMD and in every Python process it starts, CMD's exit status passed through."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SELFGUARD = [sys.executable, "-m", "selfguard", "run", "--"]


def run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    return subprocess.run([*SELFGUARD, *command], env={**base, **env}, capture_output=True, text=True, timeout=60)


# The sitecustomize installs the guard at the first connect; port 1 refuses at once.
CHECK = "import socket, selfguard; socket.socket().connect_ex(('127.0.0.1', 1)); print(selfguard.is_installed())"


def test_the_command_and_its_python_children_are_guarded():
    """The guard is active in CMD and in a Python grandchild it starts."""
    code = f"import subprocess, sys; {CHECK}; sys.stdout.flush(); subprocess.run([sys.executable, '-c', {CHECK!r}])"
    done = run(sys.executable, "-c", code)
    assert ("True\nTrue\n", 0) == (done.stdout, done.returncode)


def test_the_exit_status_is_passed_through():
    """CMD's own exit status is the exit status of selfguard run."""
    assert 7 == run(sys.executable, "-c", "raise SystemExit(7)").returncode


def test_an_existing_pythonpath_and_the_users_sitecustomize_keep_working(tmp_path: Path):
    """The user's PYTHONPATH stays on the path, and the sitecustomize in it still runs."""
    (tmp_path / "sitecustomize.py").write_text("import sys; sys.stdout.write('theirs ran\\n')\n")
    (tmp_path / "mymodule.py").write_text("VALUE = 42\n")
    done = run(sys.executable, "-c", f"import mymodule; print(mymodule.VALUE); {CHECK}", PYTHONPATH=str(tmp_path))
    # Once in the interpreter running `selfguard run` itself, once in CMD.
    assert ("theirs ran\ntheirs ran\n42\nTrue\n", "") == (done.stdout, done.stderr)


def test_non_python_commands_run_too():
    """Any command runs; a shell in between passes the environment on to Python."""
    done = run("sh", "-c", f"{sys.executable} -c {shlex.quote(CHECK)}; exit 3")
    assert ("True\n", 3) == (done.stdout, done.returncode)


def test_a_missing_command_exits_127_and_says_so():
    """As a shell does: 127 and the name of what was not found."""
    done = run("selfguard-no-such-command")
    assert 127 == done.returncode
    assert "selfguard-no-such-command: command not found" in done.stderr


def test_nothing_to_run_is_a_usage_error():
    """`selfguard run` without a command exits 2 with a usage line."""
    done = subprocess.run([sys.executable, "-m", "selfguard", "run"], capture_output=True, text=True, timeout=60)
    assert 2 == done.returncode
    assert "usage: selfguard run -- CMD" in done.stderr


def test_selfguard_off_reaches_the_children():
    """SELFGUARD=0 in the environment turns the guard off in every process below."""
    done = run(sys.executable, "-c", CHECK, SELFGUARD="0")
    assert "False\n" == done.stdout


def test_gevent_programs_are_guarded_too(free_port):
    """A program that monkey-patches with gevent first gets its gevent sockets guarded from the first connect."""
    pytest.importorskip("gevent")
    port = free_port()
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import socket, selfguard\n"
        "from selfguard.testing import force_self_connect\n"
        f"s = socket.socket(); s.settimeout(5); force_self_connect(s, {port})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except selfguard.SelfConnectError:\n"
        "    print('caught', type(s).__module__)\n"
    )
    done = run(sys.executable, "-c", code)
    assert "caught gevent._socket3" == done.stdout.strip(), done.stderr
