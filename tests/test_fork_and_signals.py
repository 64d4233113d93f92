"""fork, signals and timeouts: the guard in a forked child, EINTR as CPython handles it, retries inside the timeout."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

import selfguard
from selfguard.testing import set_port_range

from helpers import full_backlog_server, require_forcing

FORK = r"""
import json, os, socket, selfguard
from selfguard.testing import force_self_connect, free_port

def self_connect_once():
    port = free_port()
    sock = socket.socket()
    force_self_connect(sock, port)
    try:
        sock.connect(("127.0.0.1", port))
    except selfguard.SelfConnectError:
        return "SelfConnectError"
    finally:
        sock.close()
    return "no error"

selfguard.install()
parent_outcome = self_connect_once()
parent_before = selfguard.stats()
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    report = {"start": selfguard.stats(), "outcome": self_connect_once(), "end": selfguard.stats()}
    os.write(write_end, json.dumps(report).encode())
    os._exit(0)
os.close(write_end)
child = json.loads(os.read(read_end, 65536))
os.waitpid(pid, 0)
print(json.dumps({"parent_outcome": parent_outcome, "parent_before": parent_before,
                  "parent_after": selfguard.stats(), "child": child}))
"""


def test_a_forked_child_is_guarded_with_counters_of_its_own():
    """The guard works in a forked child; the child's counters start at zero and the parent's stay its own."""
    require_forcing()
    done = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    child = report["child"]
    assert ("SelfConnectError", "SelfConnectError") == (report["parent_outcome"], child["outcome"])
    assert all(0 == value for value in child["start"].values())
    assert (3, 1) == (child["end"]["self_connects"], child["end"]["gave_up"])
    assert report["parent_before"] == report["parent_after"]
    assert 3 == report["parent_after"]["self_connects"]


@pytest.mark.parametrize("guarded", [False, True])
def test_eintr_is_retried_as_cpython_does_and_the_timeout_still_holds(free_port, guarded):
    """A signal every 10 ms with a handler that returns: the connect keeps waiting and times out on time."""
    port = free_port()
    held = full_backlog_server(port)
    if guarded:
        selfguard.install()
    interrupts = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: interrupts.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    sock = socket.socket()
    sock.settimeout(0.5)
    started = time.monotonic()
    try:
        with pytest.raises(socket.timeout):  # TimeoutError from Python 3.10 on
            sock.connect(("127.0.0.1", port))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sock.close()
        for s in held:
            s.close()
    assert 0.5 <= time.monotonic() - started < 0.9
    assert len(interrupts) >= 10


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted


def test_a_signal_handler_that_raises_during_a_retry(forced, free_port):
    """The handler's exception comes out of connect() as it would unguarded, and the socket keeps its timeout."""
    selfguard.install()
    port = free_port()
    sock = forced(port, timeout=2.0)
    held = []

    def hang_the_retry(event):
        if event.kind == "retry":
            held.extend(full_backlog_server(port))
            set_port_range(sock, 0, 0)
            signal.setitimer(signal.ITIMER_REAL, 0.1)

    selfguard.add_listener(hang_the_retry)
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            sock.connect(("127.0.0.1", port))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for s in held:
            s.close()
    assert time.monotonic() - started < 1.0
    assert 2.0 == sock.gettimeout()
    assert 1 == selfguard.stats()["retries"]
