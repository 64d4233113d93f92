"""selfguard.status(): "active", "armed" (the sitecustomize waits for the first connect) or "off"; and is_installed().

Under the sitecustomize every connect is guarded from the start -- the
first one installs the guard on its way through -- so is_installed() is True
then too, not only once the first connect has happened.
"""

from __future__ import annotations

import _socket
import os
import socket
import subprocess
import sys

import pytest
from test_sitecustomize import FIRST_CONNECT

import selfguard
from selfguard.testing import can_force_self_connect

from helpers import require, under_sitecustomize

SELFGUARD_RUN = [sys.executable, "-m", "selfguard", "run", "--"]
STATUS = "import selfguard; print(selfguard.status(), selfguard.is_installed())\n"


def test_in_this_process_status_follows_install_and_uninstall():
    """Without the sitecustomize: off, then active after install(), off again after uninstall()."""
    seen = [(selfguard.status(), selfguard.is_installed())]
    selfguard.install()
    seen.append((selfguard.status(), selfguard.is_installed()))
    selfguard.uninstall()
    seen.append((selfguard.status(), selfguard.is_installed()))
    assert [("off", False), ("active", True), ("off", False)] == seen


def test_status_is_public():
    assert "status" in selfguard.__all__


@pytest.mark.parametrize(
    ("program", "env", "expected"),
    [
        ("import socket\n" + STATUS + FIRST_CONNECT + STATUS, {}, "armed True\nactive True"),
        ("import socket\n" + STATUS + FIRST_CONNECT + STATUS, {"SELFGUARD": "0"}, "off False\noff False"),
        (
            "import socket, selfguard\nselfguard.uninstall()\n" + STATUS + FIRST_CONNECT + STATUS,
            {},
            "off False\noff False",
        ),
        (
            "import os, socket\nos.environ['SELFGUARD'] = 'off'\n" + STATUS + FIRST_CONNECT + STATUS,
            {},
            "off False\noff False",
        ),
        ("import socket, selfguard\nselfguard.install()\n" + STATUS, {}, "active True"),
    ],
    ids=["armed, then active", "SELFGUARD=0", "uninstall() first", "switched off after start-up", "install() first"],
)
def test_under_the_sitecustomize(program, env, expected):
    """Armed until the first connect, active after it; off when switched off or uninstalled."""
    done = under_sitecustomize(program, **env)
    assert (expected, "") == (done.stdout.strip(), done.stderr)


def test_armed_means_the_first_connect_is_guarded(free_port):
    """What "armed" promises: the very first connect of the process, a forced self-connect, is refused."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    port = free_port()
    done = under_sitecustomize(
        "import socket, selfguard\n"
        "from selfguard.testing import force_self_connect\n"
        "print(selfguard.status())\n"
        f"s = socket.socket(); force_self_connect(s, {port})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except selfguard.SelfConnectError:\n"
        "    print('caught', selfguard.status())\n"
    )
    assert "armed\ncaught active" == done.stdout.strip(), done.stderr


PLUGIN_TEST = """
import socket, selfguard
from selfguard.testing import force_self_connect

def test_guarded_from_the_first_connect():
    assert selfguard.is_installed()
    s = socket.socket()
    force_self_connect(s, {port})
    try:
        s.connect(("127.0.0.1", {port}))
        raise AssertionError("unguarded")
    except selfguard.SelfConnectError:
        pass
    finally:
        s.close()
    assert "active" == selfguard.status()
"""


def test_the_pytest_plugin_under_selfguard_run(tmp_path, free_port):
    """pytest --selfguard under `selfguard run`: the guard armed by the sitecustomize is reported and does its work."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    (tmp_path / "test_it.py").write_text(PLUGIN_TEST.format(port=free_port()))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    done = subprocess.run(
        [*SELFGUARD_RUN, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--selfguard", "test_it.py"],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stdout[-3000:] + done.stderr[-2000:]
    assert "selfguard: installed for the session" in done.stdout
    assert "selfguard: 3 self-connect(s) caught, 2 retried, 1 given up" in done.stdout


def test_forcing_self_connects_keeps_an_armed_guard(free_port):
    """force_self_connects() under the sitecustomize, before any connect: the guard must stay on and catch them."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    port = free_port()
    done = under_sitecustomize(
        "import socket, selfguard\n"
        "from selfguard.testing import force_self_connects\n"
        f"with force_self_connects({port}, times=3):\n"
        "    s = socket.socket()\n"
        "    try:\n"
        f"        s.connect(('127.0.0.1', {port})); print('UNGUARDED')\n"
        "    except selfguard.SelfConnectError:\n"
        "        print('caught')\n"
        "print(selfguard.status())\n"
    )
    assert "caught\nactive" == done.stdout.strip(), done.stderr


def test_a_bare_method_put_back_on_the_class_is_reported_as_displaced():
    """The guard on, but socket.socket.connect is a saved bare method again (as pytest-socket does): "displaced"."""
    selfguard.install()
    try:
        socket.socket.connect = _socket.socket.connect  # what pytest-socket saved, put back
        seen = [(selfguard.status(), selfguard.is_installed())]
        selfguard.install()  # puts the wrapper back, with the options in force
        seen.append((selfguard.status(), selfguard.is_installed()))
    finally:
        selfguard.uninstall()
        if vars(socket.socket).get("connect") is _socket.socket.connect:
            del socket.socket.connect
    assert [("displaced", False), ("active", True)] == seen


def test_reloading_socket_is_reported_as_displaced_and_install_guards_the_new_class(free_port):
    """importlib.reload(socket) makes a new, bare class: "displaced", until install() guards it (a real self-connect)"""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, socket, selfguard\n"
            "from selfguard.testing import force_self_connect\n"
            "selfguard.install()\n"
            "importlib.reload(socket)\n"
            "print(selfguard.status(), selfguard.is_installed())\n"
            "selfguard.install()\n"
            "print(selfguard.status(), selfguard.is_installed())\n"
            f"s = socket.socket(); force_self_connect(s, {port})\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port})); print('UNGUARDED')\n"
            "except selfguard.SelfConnectError:\n"
            "    print('caught')\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "displaced False\nactive True\ncaught" == done.stdout.strip(), done.stderr


def test_a_stand_in_put_back_after_the_first_connect_still_counts_as_guarded():
    """Under the sitecustomize, a plugin that saved the stand-in and puts it back leaves the guard active."""
    done = under_sitecustomize(
        "import socket, selfguard\n"
        "saved = socket.socket.connect\n" + FIRST_CONNECT + "socket.socket.connect = saved\n" + STATUS
    )
    assert ("active True", "") == (done.stdout.strip(), done.stderr)
