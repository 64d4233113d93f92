"""The C accelerator (selfguard/_speedups.c): built, in use, switchable, and counted like the Python code.

Its outcomes are checked where the Python wrappers' are: the differential and
the connect-path tests run with both (the both_wrappers fixture). Here: what
is only the accelerator's own.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

import selfguard
from selfguard import _accel

from helpers import require, require_speedups

ROOT = Path(__file__).resolve().parent.parent


def wrapper_on(name: str) -> object:
    return vars(socket.socket)[name]._self_wrapper


def test_install_puts_the_c_wrappers_on():
    """Built by the README's install (CI fails without it) and the wrappers on socket.socket are C ones."""
    require_speedups()
    selfguard.install()
    assert {"Wrapper"} == {type(wrapper_on(name)).__name__ for name in ("connect", "connect_ex", "bind", "getsockopt")}


def test_the_c_wrappers_count_the_connects_they_check():
    """A connect inside the range checked in C counts in stats()["checked"]; reset_stats() and a fork zero it."""
    require_speedups()
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as srv:  # a port 0 server: inside the range
        for expected in (1, 2):
            with socket.create_connection(srv.getsockname(), timeout=5):
                srv.accept()[0].close()
            assert expected == selfguard.stats()["checked"]
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os.write(write, str(selfguard.stats()["checked"]).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        assert b"0" == os.read(read, 16)
        os.close(read)
    selfguard.reset_stats()
    assert 0 == selfguard.stats()["checked"]


def run_python(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUARD")}
    return subprocess.run(
        [sys.executable, "-c", code], env=dict(env, **environ), capture_output=True, text=True, timeout=60
    )


SHOW = (
    "import socket, selfguard; selfguard.install()\n"
    "print(type(vars(socket.socket)['connect']._self_wrapper).__name__)\n"
    "print(socket.socket().connect_ex(('127.0.0.1', 1)))"
)


def test_selfguard_speedups_0_runs_the_pure_python_wrappers():
    """SELFGUARD_SPEEDUPS=0: Python functions on socket.socket, with the same outcome."""
    done = run_python(SHOW, SELFGUARD_SPEEDUPS="0")
    assert ["function", "111"] == done.stdout.split(), done.stderr
    assert "" == done.stderr


def test_a_bad_selfguard_speedups_warns_naming_it_and_uses_the_default():
    """A value that is no on/off word: one warning naming the variable, and the accelerator as by default."""
    require_speedups()
    done = run_python(SHOW, SELFGUARD_SPEEDUPS="fast")
    assert ["Wrapper", "111"] == done.stdout.split(), done.stderr
    assert "Invalid value 'fast' for SELFGUARD_SPEEDUPS environment variable" in done.stderr
    assert 1 == done.stderr.count("SELFGUARD_SPEEDUPS")


def _cpythons() -> list[str]:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = [sys.executable]
    for minor in range(9, 15):
        found += sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin", "python")))[-1:]
    return found


LOAD = """
import importlib.util, socket, sys
spec = importlib.util.spec_from_file_location("selfguard._speedups", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
with socket.create_server(("127.0.0.1", 0)) as srv:
    print(module.sockname_port(srv.fileno()) == srv.getsockname()[1], module.netns_cookie(srv.fileno()) > 0)
"""


def test_one_build_loads_in_every_cpython_from_3_9():
    """The stable ABI: the library this interpreter built loads in 3.9 to 3.14 (those pyenv has here)."""
    require_speedups()
    library = _accel.speedups.__file__
    assert library.endswith(".abi3.so")
    pythons = _cpythons()
    require(len(pythons) > 1, "needs another CPython (pyenv's) to load the library in")
    for python in pythons:
        done = subprocess.run([python, "-c", LOAD, library], capture_output=True, text=True, timeout=60)
        assert "True True" == done.stdout.strip(), (python, done.stderr)


def test_a_wrapper_takes_only_the_four_arguments_wrapt_gives():
    """Misused directly, a C wrapper raises TypeError like a Python function would; it never crashes."""
    require_speedups()
    wrapper = wrapper_on("connect") if selfguard.install() else None
    assert isinstance(wrapper, _accel.speedups.Wrapper)
    with pytest.raises(TypeError):
        wrapper(1, 2, 3)  # type: ignore[operator]
    with pytest.raises(TypeError):
        wrapper(1, 2, 3, 4, extra=5)  # type: ignore[operator]
    with pytest.raises(TypeError):
        _accel.speedups.Wrapper(types.SimpleNamespace(), _accel.speedups.CONNECT, print, print)
    # Arguments wrapt never gives go to the Python wrapper, which fails as Python does.
    with pytest.raises(TypeError):
        wrapper(socket.socket.connect, socket.socket(), "not a tuple", {})  # type: ignore[operator]
    with pytest.raises(TypeError):
        _accel.speedups.passthrough(print, None, [1], {})
