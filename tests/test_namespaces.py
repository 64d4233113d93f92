"""Threads in other network namespaces: the range one of them reads never blinds the guard in another."""

from __future__ import annotations

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
