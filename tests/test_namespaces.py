"""Threads in other network namespaces: the range one of them reads never blinds the guard in another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from helpers import require, require_forcing

# The main thread learns this namespace's range; a thread setns()s into a
# namespace whose range is 40000-40001 and, after the cache is due for a
# refresh, connects there to a port outside the cache, so it re-reads the
# range -- its namespace's. Then the main thread dials a port of its own
# range (forced to self-connect) that lies outside the other namespace's.
SCRIPT = r"""
import ctypes, json, os, socket, sys, threading, time
import selfguard
from selfguard.testing import force_self_connect, free_port

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
selfguard.install()
port = free_port(50000, 60000)
with socket.socket() as first:  # the main namespace's range goes into the cache
    first.settimeout(5)
    first.connect_ex(("127.0.0.1", port + 1))

def in_other_namespace():
    fd = os.open(sys.argv[1], os.O_RDONLY)
    assert libc.setns(fd, CLONE_NEWNET) == 0, ctypes.get_errno()
    time.sleep(1.2)  # the cache is due for a refresh
    with socket.socket() as s:
        s.settimeout(5)
        s.connect_ex(("127.0.0.1", 1000))  # outside the cache: re-reads the range, this namespace's

thread = threading.Thread(target=in_other_namespace)
thread.start()
thread.join()
sock = socket.socket()
force_self_connect(sock, port)
try:
    sock.connect(("127.0.0.1", port))
    outcome = "self-connected" if selfguard.is_self_connected(sock) else "connected"
except selfguard.SelfConnectError:
    outcome = "SelfConnectError"
print(json.dumps({"outcome": outcome, "stats": selfguard.stats()}))
"""


@pytest.fixture
def other_namespace():
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "needs root and iproute2 (ip netns)")
    name = f"selfguard-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40001"], check=True
        )
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_a_thread_in_another_namespace_does_not_narrow_the_guards_range(other_namespace):
    """After a thread reads a narrower range elsewhere, a self-connect in this namespace is still caught."""
    require_forcing()
    done = subprocess.run([sys.executable, "-c", SCRIPT, other_namespace], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr[-2000:]
    assert '"SelfConnectError"' in done.stdout, done.stdout


# A namespace whose range is 20000-20001: connect() tries the port of the low end's
# parity first, so a dial to 20000 with nothing listening there connects to itself.
# Both cases dial at once, within the second the main thread's range stays fresh.
SOCKETS_OF_ANOTHER_NAMESPACE = r"""
import ctypes, json, os, socket, sys, threading
import selfguard
from selfguard.testing import free_port

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
namespace, case = sys.argv[1], sys.argv[2]
selfguard.install()
with socket.socket() as first:  # this namespace's range goes into the cache, fresh for a second
    first.settimeout(5)
    first.connect_ex(("127.0.0.1", free_port()))

def dial(sock):
    try:
        sock.connect(("127.0.0.1", 20000))
        return "self-connected" if selfguard.is_self_connected(sock) else "connected"
    except selfguard.SelfConnectError:
        return "SelfConnectError"
    except OSError as exc:
        return f"errno {exc.errno}"

made = {}
def in_other_namespace():
    fd = os.open(namespace, os.O_RDONLY)
    assert libc.setns(fd, CLONE_NEWNET) == 0, ctypes.get_errno()
    os.close(fd)
    sock = made["sock"] = socket.socket()
    sock.settimeout(5)
    if case == "thread":
        made["outcome"] = dial(sock)

thread = threading.Thread(target=in_other_namespace)
thread.start()
thread.join()
if case == "socket":  # made there, dialled from a thread in this namespace
    made["outcome"] = dial(made["sock"])
# A port of this namespace outside its range: not checked.
with socket.create_server(("127.0.0.1", free_port(10000, 19999))) as server:
    before = selfguard.stats()["checked"]
    socket.create_connection(server.getsockname(), timeout=5).close()
    outside = selfguard.stats()["checked"] - before
print(json.dumps({"outcome": made["outcome"], "outside_checked": outside, "stats": selfguard.stats()}))
"""


@pytest.fixture
def narrow_namespace():
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "needs root and iproute2 (ip netns)")
    name = f"selfguard-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        commands = (["ip", "link", "set", "lo", "up"], ["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20001"])
        for command in commands:
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.parametrize("case", ["thread", "socket"])
def test_a_socket_is_judged_by_the_range_of_its_own_namespace(narrow_namespace, case):
    """A thread that setns()'d and dials at once, or a socket made there dialled from here: caught."""
    done = subprocess.run(
        [sys.executable, "-c", SOCKETS_OF_ANOTHER_NAMESPACE, narrow_namespace, case],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "SelfConnectError" == report["outcome"], report
    assert 3 == report["stats"]["self_connects"]
    assert 0 == report["outside_checked"]  # this namespace's ports outside its range still cost no check
