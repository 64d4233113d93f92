"""`selfguard sitecustomize install|status|remove`: deploys the bootstrap into real venvs of real interpreters.

Never into an interpreter of the system: each test makes its own venvs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import wrapt
from test_old_interpreters import old_python

import selfguard
from selfguard._commands import deploy as _deploy

from helpers import clean_environ, require

ROOT = Path(selfguard.__file__).resolve().parent.parent
SELFGUARD = [sys.executable, "-m", "selfguard", "sitecustomize"]
CONNECT = "import socket, selfguard\nsocket.socket().connect_ex(('127.0.0.1', 1))\nprint(selfguard.status())\n"
DEBIAN_PYTHON = "/usr/bin/python3"


def venv(tmp_path: Path, name: str = "venv", python: str = sys.executable, with_selfguard: bool = True) -> Path:
    """A venv without pip; with_selfguard: this clone and wrapt importable there (a .pth, as an editable install)."""
    where = tmp_path / name
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    if with_selfguard:
        (site,) = where.glob("lib/python3.*/site-packages")
        wrapt_dir = Path(wrapt.__file__).resolve().parent.parent
        (site / "selfguard-clone.pth").write_text(f"{ROOT}\n{wrapt_dir}\n")
    return where


def site_of(env: Path) -> Path:
    (site,) = env.glob("lib/python3.*/site-packages")
    return site


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SELFGUARD, *args], env=clean_environ(), cwd="/", capture_output=True, text=True, timeout=120
    )


def python_in(env: Path, code: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin" / "python"), "-c", code],
        env=clean_environ(**variables),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_status_and_remove_keep_the_users_own_sitecustomize(tmp_path: Path):
    """Deployed and compiled, run at start before the user's sitecustomize (which still runs), removed cleanly."""
    env = venv(tmp_path)
    site = site_of(env)
    (site / "sitecustomize.py").write_text("print('the user sitecustomize ran')\n")
    python = str(env / "bin" / "python")
    assert 1 == deploy("status", "--python", python).returncode  # not deployed yet

    done = deploy("install", "--python", python)
    assert 0 == done.returncode, done.stderr
    deployed = site / "selfguard-bootstrap" / "sitecustomize.py"
    assert deployed.read_bytes() == Path(_deploy.BOOTSTRAP).read_bytes()
    assert list((deployed.parent / "__pycache__").glob("sitecustomize.cpython-3*.pyc"))  # compiled for that Python
    ran = python_in(env, CONNECT)
    assert ("the user sitecustomize ran\nactive\n", "") == (ran.stdout, ran.stderr)
    shown = deploy("status", "--python", python)
    assert 0 == shown.returncode, shown.stdout + shown.stderr
    assert f"deployed: {deployed}\n" in shown.stdout and "runs at start: yes\n" in shown.stdout
    assert "compiled: " + str(deployed.parent / "__pycache__") in shown.stdout

    done = deploy("remove", "--python", python)
    assert 0 == done.returncode, done.stderr
    assert not (site / "selfguard-bootstrap").exists() and not (site / _deploy.PTH).exists()
    assert "print('the user sitecustomize ran')\n" == (site / "sitecustomize.py").read_text()
    ran = python_in(env, CONNECT)
    assert ("the user sitecustomize ran\noff\n", "") == (ran.stdout, ran.stderr)
    assert 1 == deploy("status", "--python", python).returncode


def test_it_runs_in_a_debian_venv_whose_own_sitecustomize_comes_first(tmp_path: Path):
    """Debian's /usr/lib/python3.X/sitecustomize.py precedes site-packages: the deployed bootstrap runs anyway."""
    require(os.path.exists(DEBIAN_PYTHON), f"needs {DEBIAN_PYTHON}")
    version = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.strip()
    debian = f"/usr/lib/python{version}/sitecustomize.py"
    require(os.path.exists(debian), f"needs a Debian Python with {debian}")
    env = venv(tmp_path, python=DEBIAN_PYTHON)
    python = str(env / "bin" / "python")
    done = deploy("install", "--python", python)
    assert 0 == done.returncode, done.stderr
    ran = python_in(env, CONNECT + "import sitecustomize; print(sitecustomize.__file__)")
    assert (f"active\n{debian}\n", "") == (ran.stdout, ran.stderr)  # both ran: ours, then Debian's
    assert "runs at start: yes\n" in deploy("status", "--python", python).stdout


def test_an_upgrade_keeps_the_bootstrap_and_an_uninstall_leaves_it_silent(tmp_path: Path):
    """A reinstall (pip uninstalls the old version first) keeps it deployed; after pip uninstall it says nothing."""
    where = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    pip = [str(where / "bin" / "python"), "-m", "pip"]
    done = subprocess.run([*pip, "install", str(ROOT)], env=clean_environ(), capture_output=True, text=True, timeout=600)
    assert 0 == done.returncode, done.stderr
    python = str(where / "bin" / "python")
    assert 0 == deploy("install", "--python", python).returncode
    site = site_of(where)
    reinstall = [*pip, "install", "--no-deps", "--force-reinstall", str(ROOT)]
    done = subprocess.run(reinstall, env=clean_environ(), capture_output=True, text=True, timeout=600)
    assert 0 == done.returncode, done.stderr
    assert (site / _deploy.PTH).exists()
    assert "runs at start: yes\n" in deploy("status", "--python", python).stdout
    ran = python_in(where, CONNECT + "print('ran')")
    assert ("active\nran\n", "") == (ran.stdout, ran.stderr)
    done = subprocess.run([*pip, "uninstall", "-y", "selfguard"], capture_output=True, text=True, timeout=300)
    assert 0 == done.returncode, done.stderr
    ran = python_in(where, "import socket; socket.socket().connect_ex(('127.0.0.1', 1)); print('ran')")
    assert ("ran\n", "") == (ran.stdout, ran.stderr)


def test_a_bootstrap_left_behind_is_quiet_unless_selfguard_is_asked_for(tmp_path: Path):
    """--dir deploy, then selfguard gone from that interpreter: silent; SELFGUARD=1 says it is not active."""
    env = venv(tmp_path, with_selfguard=False)
    directory = tmp_path / "opt-selfguard"
    done = deploy("install", "--python", str(env / "bin" / "python"), "--dir", str(directory), "--force")
    assert 0 == done.returncode, done.stderr
    assert f"PYTHONPATH={directory}" in done.stdout
    code = "import socket; socket.socket().connect_ex(('127.0.0.1', 1)); print('ran')"
    quiet = python_in(env, code, PYTHONPATH=str(directory))
    assert ("ran\n", "") == (quiet.stdout, quiet.stderr)
    asked = python_in(env, code, PYTHONPATH=str(directory), SELFGUARD="1")
    assert "ran\n" == asked.stdout
    assert "selfguard: not active in this process: ModuleNotFoundError: No module named 'selfguard'\n" == asked.stderr


def test_it_refuses_what_would_not_work_or_would_overwrite(tmp_path: Path):
    """No selfguard in PY (the hint installs it there), a foreign sitecustomize in DIR, a Python before 3.9."""
    env = venv(tmp_path, with_selfguard=False)
    python = str(env / "bin" / "python")
    done = deploy("install", "--python", python)
    assert 3 == done.returncode
    assert f"selfguard is not installed for {python}" in done.stderr and f"{python} -m pip install" in done.stderr
    assert not (site_of(env) / _deploy.PTH).exists()

    directory = tmp_path / "theirs"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text("print('theirs')\n")
    done = deploy("install", "--python", python, "--dir", str(directory), "--force")
    assert 3 == done.returncode and "is not selfguard's sitecustomize" in done.stderr
    assert "print('theirs')\n" == (directory / "sitecustomize.py").read_text()
    assert 3 == deploy("remove", "--python", python, "--dir", str(directory)).returncode
    assert (directory / "sitecustomize.py").exists()

    old = old_python("3.8")
    if old is not None:
        done = deploy("install", "--python", old, "--dir", str(tmp_path / "old"), "--force")
        assert 3 == done.returncode and "selfguard needs 3.9 or later" in done.stderr
    missing = deploy("status", "--python", str(tmp_path / "no-such-python"))
    assert 3 == missing.returncode and "cannot ask" in missing.stderr


def test_selfguard_run_with_an_interpreter_without_selfguard_still_says_so(tmp_path: Path):
    """The packaged copy (selfguard run's) is not a copy left behind: the wrong interpreter is reported."""
    from selfguard._commands.run import BOOTSTRAP

    env = venv(tmp_path, with_selfguard=False)
    ran = python_in(env, "import socket; socket.socket().connect_ex(('127.0.0.1', 1))", PYTHONPATH=BOOTSTRAP)
    assert "selfguard: not active in this process: ModuleNotFoundError: No module named 'selfguard'\n" == ran.stderr
