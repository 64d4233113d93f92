"""Interpreters too old for selfguard that inherit PYTHONPATH from `selfguard run`: one line, and the rest still runs.

A service run under `selfguard run` may start a Python 3.6 or 3.7 of its own.
The sitecustomize is on its path too: it must say, in one line on stderr,
that the guard is not active there, and still run the sitecustomize it hides.
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard._commands.run import BOOTSTRAP

from conftest import require

SITECUSTOMIZE = Path(BOOTSTRAP) / "sitecustomize.py"
PROGRAM = (
    "import json, socket, urllib.request\n"
    "s = socket.socket()\n"
    "print('connect_ex ->', 'refused' if s.connect_ex(('127.0.0.1', 1)) else 'connected')\n"
    "s.close()\n"
)


@functools.cache
def old_python(version: str) -> str | None:
    """A working Python *version* interpreter: one pyenv built, or pythonX.Y on PATH (not a pyenv shim that fails)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
    candidates += [found for found in [shutil.which(f"python{version}")] if found]
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


@pytest.fixture(params=["3.6", "3.7", "3.8"])
def interpreter(request: pytest.FixtureRequest) -> tuple[str, str]:
    found = old_python(request.param)
    require(found is not None, f"no Python {request.param} interpreter (python{request.param} on PATH, or pyenv's)")
    assert found is not None
    return request.param, found


@pytest.fixture
def users(tmp_path: Path) -> str:
    """A directory with the user's own sitecustomize, which prints a line."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stdout.write('theirs ran\\n')\n")
    return str(tmp_path)


def clean_env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}, **env}


def test_the_file_has_no_syntax_newer_than_python_3_6():
    """Checked by the parser of this interpreter, told to accept only Python 3.6 grammar."""
    ast.parse(SITECUSTOMIZE.read_text(), filename=str(SITECUSTOMIZE), feature_version=(3, 6))


@pytest.mark.parametrize("copies", [1, 2])
def test_an_old_interpreter_says_so_in_one_line_and_runs_the_next_sitecustomize(interpreter, users, copies, tmp_path):
    """On PYTHONPATH of Python 3.6/3.7/3.8: one line on stderr, the user's sitecustomize once, the program as usual."""
    version, python = interpreter
    path = [BOOTSTRAP, users]
    if copies == 2:  # a second copy in between says nothing more
        (tmp_path / "copy").mkdir()
        shutil.copy(SITECUSTOMIZE, tmp_path / "copy" / "sitecustomize.py")
        path.insert(1, str(tmp_path / "copy"))
    done = subprocess.run(
        [python, "-c", PROGRAM],
        env=clean_env(PYTHONPATH=os.pathsep.join(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "theirs ran\nconnect_ex -> refused\n") == (done.returncode, done.stdout), done.stderr
    assert 1 == len(done.stderr.splitlines()), done.stderr
    assert done.stderr.startswith(f"selfguard: not active in this process: Python {version}."), done.stderr
    assert "which selfguard needs" in done.stderr


def test_an_old_interpreter_under_selfguard_run(interpreter, users):
    """`selfguard run -- python3.X` over a service with its own PYTHONPATH: the same one line, the same program."""
    version, python = interpreter
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "run", "--", python, "-c", PROGRAM],
        env=clean_env(PYTHONPATH=users),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # `theirs ran` once in this interpreter running `selfguard run`, once in the old one.
    assert (0, "theirs ran\ntheirs ran\nconnect_ex -> refused\n") == (done.returncode, done.stdout), done.stderr
    assert 1 == len(done.stderr.splitlines()), done.stderr
    assert done.stderr.startswith(f"selfguard: not active in this process: Python {version}."), done.stderr


def test_an_old_interpreter_with_selfguard_off_says_nothing(interpreter, users):
    """SELFGUARD=0 silences it: the operator has said they know."""
    _, python = interpreter
    done = subprocess.run(
        [python, "-c", PROGRAM],
        env=clean_env(PYTHONPATH=os.pathsep.join([BOOTSTRAP, users]), SELFGUARD="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "theirs ran\nconnect_ex -> refused\n", "") == (done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize("version", ["3.6", "3.12"])
def test_with_stderr_closed_an_interpreter_that_cannot_run_the_guard_still_starts_and_connects(version):
    """`2>&-`: an old interpreter, or one without selfguard installed, starts, connects and exits 0 all the same."""
    found = old_python(version)
    require(found is not None, f"no Python {version} interpreter (python{version} on PATH, or pyenv's)")
    assert found is not None
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -c "$1" 2>&-', found, PROGRAM],
        env={**clean_env(), "PYTHONPATH": BOOTSTRAP},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "connect_ex -> refused") == (done.returncode, done.stdout.strip())
