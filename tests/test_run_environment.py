"""`selfguard run` hands CMD its environment as Python would read it: empty PYTHONPATH entries stay the cwd."""

from __future__ import annotations

import os
import subprocess
import sys

from selfguard._commands.run import BOOTSTRAP

from helpers import clean_environ, require


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


def _run(tmp_path, pythonpath: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfguard", "run", "--", sys.executable, "-c", code],
        env=clean_environ(PYTHONPATH=pythonpath),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_users_own_sitecustomize_package_runs_and_is_the_one_imported(tmp_path):
    """A sitecustomize package further along PYTHONPATH runs once, and `import sitecustomize` gives the user's."""
    package = tmp_path / "site" / "sitecustomize"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import os\nprint('user sitecustomize', os.getpid())\nVALUE = 1\n")
    done = _run(
        tmp_path,
        str(tmp_path / "site"),
        "import os, socket, sitecustomize, selfguard\n"
        "print('child', os.getpid(), getattr(sitecustomize, 'VALUE', 'no VALUE'), selfguard.status())\n",
    )
    assert 0 == done.returncode, done.stderr
    # Once in `selfguard run` itself, once in CMD (the same pid: run execs CMD); CMD imports the user's module.
    lines = done.stdout.splitlines()
    pid = lines[-1].split()[1]
    assert [f"user sitecustomize {pid}"] * 2 == lines[:-1], done.stdout
    assert ["child", pid, "1", "armed"] == lines[-1].split()


def test_a_selfguard_of_another_version_than_the_bootstrap_never_breaks_the_first_connect(tmp_path):
    """A bootstrap newer than the selfguard it finds (an old venv under selfguard run): one line, and connects work."""
    old = tmp_path / "old" / "selfguard"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("")
    (old / "_install.py").write_text("def install(**options):\n    return True\n")  # no lock, no is_installed
    # Another interpreter, without this selfguard, as `selfguard run` would start a service's own venv.
    other = "/root/.pyenv/versions/3.12.1/bin/python"
    require(os.access(other, os.X_OK), "needs a second interpreter without selfguard (pyenv's 3.12)")
    code = "import socket\ndial = lambda: socket.socket().connect_ex(('127.0.0.1', 1))\nprint(dial(), dial())"
    done = subprocess.run(
        [other, "-c", code],
        env=clean_environ(PYTHONPATH=os.pathsep.join([BOOTSTRAP, str(tmp_path / "old")])),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "111 111") == (done.returncode, done.stdout.strip()), done.stderr
    assert 1 == len(done.stderr.splitlines()), done.stderr
    assert done.stderr.startswith("selfguard: not active in this process: AttributeError"), done.stderr
