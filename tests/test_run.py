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


def selfguard_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`selfguard run ARGS` as typed, without the `--` that run() puts first."""
    return subprocess.run([sys.executable, "-m", "selfguard", "run", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [[], ["--"]])
def test_nothing_to_run_is_a_usage_error(args):
    """`selfguard run` without a command exits 2 with run's own usage line and the form to write."""
    done = selfguard_run(*args)
    assert (2, "") == (done.returncode, done.stdout)
    usage, error = done.stderr.splitlines()
    assert "usage: selfguard run [-h] [--native | --require-native] [--strict] [--] CMD [ARGS...]" == usage
    assert "selfguard run: error: nothing to run: selfguard run -- CMD [ARGS...]" == error


@pytest.mark.parametrize("option", ["-x", "--verbose", "-x python"])
def test_an_option_before_the_command_is_a_usage_error_of_run(option):
    """`selfguard run -x` is ambiguous (an option of run? a command named -x?): run's own error, not the top level's."""
    done = selfguard_run(*option.split())
    assert (2, "") == (done.returncode, done.stdout)
    usage, error = done.stderr.splitlines()
    assert "usage: selfguard run [-h] [--native | --require-native] [--strict] [--] CMD [ARGS...]" == usage
    first = option.split()[0]
    assert f"selfguard run: error: selfguard run has no option {first}; to run a command, write: " in error
    assert error.endswith("selfguard run -- CMD [ARGS...]")


def test_everything_after_the_command_is_the_commands_own():
    """Options after CMD -- even -h and -- -- belong to CMD, with or without a leading --."""
    show = "import sys; print(sys.argv[1:])"
    for prefix in ([], ["--"]):
        done = selfguard_run(*prefix, sys.executable, "-c", show, "-x", "-h", "--", "--json")
        assert ("['-x', '-h', '--', '--json']\n", 0) == (done.stdout, done.returncode), done.stderr


def test_a_command_named_after_a_dash_runs_after_double_dash(tmp_path: Path):
    """`selfguard run -- -x` runs the command named -x (found on PATH), as the error message says to write it."""
    script = tmp_path / "-x"
    script.write_text("#!/bin/sh\necho ran -x\n")
    script.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "run", "--", "-x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
    )
    assert ("ran -x\n", 0) == (done.stdout, done.returncode), done.stderr


def test_run_help_tells_the_exit_statuses():
    """`selfguard run --help` is run's help, with CMD's status, 2, 126 and 127."""
    done = selfguard_run("--help")
    assert 0 == done.returncode
    usage = "usage: selfguard run [-h] [--native | --require-native] [--strict] [--] CMD [ARGS...]"
    assert done.stdout.startswith(usage)
    for status in ("CMD's own", "2    usage error", "126  CMD cannot be executed", "127  CMD not found"):
        assert status in done.stdout


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


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv's interpreter with neither selfguard nor wrapt, as a service's own venv under `selfguard run`."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


def run_in(cwd: Path, *words: str) -> subprocess.CompletedProcess[str]:
    # Not from the repository: `python -c` puts the working directory on sys.path, and selfguard is there.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    command = [sys.executable, "-m", "selfguard", "run", *words]
    return subprocess.run(command, env=base, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_strict_stops_an_interpreter_that_lacks_selfguard(bare_python: str, tmp_path: Path):
    """--strict: a Python without selfguard exits 3 before running anything, saying why; without it, it runs."""
    code = "import socket; socket.socket().connect_ex(('127.0.0.1', 1)); print('ran')"
    strict = run_in(tmp_path, "--strict", bare_python, "-c", code)
    assert (3, "") == (strict.returncode, strict.stdout)
    assert [
        "selfguard: not active in this process: no module named 'selfguard' in this interpreter; SELFGUARD_REQUIRE "
        f"is set (selfguard run --strict), so {bare_python} exits (status 3) instead of running unguarded"
    ] == strict.stderr.splitlines()
    lenient = run_in(tmp_path, bare_python, "-c", code)
    assert (0, "ran\n") == (lenient.returncode, lenient.stdout)
    assert lenient.stderr.startswith("selfguard: not active in this process: ModuleNotFoundError")


def test_strict_reaches_every_python_of_the_tree_and_lets_a_guarded_one_run(bare_python: str, tmp_path: Path):
    """Under --strict, a guarded interpreter runs guarded; a bare one that a shell starts stops, with status 3."""
    bare, guarded = shlex.quote(bare_python), shlex.quote(sys.executable)
    script = f"{bare} -c 'print(1)'; echo \"bare: $?\"; {guarded} -c {shlex.quote(CHECK)}"
    done = run_in(tmp_path, "--strict", "sh", "-c", script)
    assert (0, "bare: 3\nTrue\n") == (done.returncode, done.stdout), done.stderr
    assert 1 == len(done.stderr.splitlines()), done.stderr


def test_a_bad_require_value_warns_and_runs(bare_python: str, tmp_path: Path):
    """SELFGUARD_REQUIRE=maybe is a typo: one line naming it, and the interpreter runs (the default, off)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "run", bare_python, "-c", "print('ran')"],
        env={**base, "SELFGUARD_REQUIRE": "maybe"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "ran\n") == (done.returncode, done.stdout)
    assert [
        "selfguard: Invalid value 'maybe' for SELFGUARD_REQUIRE environment variable: "
        "expected one of 1/true/on/yes/0/false/off/no; using the default off"
    ] == done.stderr.splitlines()
