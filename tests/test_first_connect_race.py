"""The first connect under the sitecustomize: no connect in another thread passes unchecked while it installs the guard.

install() used to take the stand-ins off before putting the wrappers on: a
connect looked up in between went to the bare method, and a stand-in called
just then went there too. This hunts for that window with real threads and
real forced self-connects.
"""

from __future__ import annotations

import time

import pytest

from selfguard.testing import can_force_self_connect, free_port

from helpers import require, under_sitecustomize

RACERS = 4
MAX_RUNS = 4  # per way of hunting
MAX_SECONDS = 20.0

# Each racer forces self-connects on its own port (IP_LOCAL_PORT_RANGE,
# inlined: importing selfguard.testing would import selfguard before the
# first connect). It spins until the stand-in on socket.socket.connect
# changes -- the install is under way -- then connects at once: half of them
# through the stand-in bound before the install, half through the class. A
# connect that comes back self-connected went through unchecked. The thread
# switch interval is tiny so that racers run inside the install.
#
# Two ways: "as deployed", the first connect imports selfguard and wrapt
# (about half the runs of the old code let a connect through); "yielding",
# selfguard is imported beforehand and the installing thread hands the GIL on
# at every call it makes, so racers run at each step of the install (every
# run of the old code let connects through).
HUNT = """
import socket, struct, sys, threading, time
{preamble}
sys.setswitchinterval(1e-6)
PORTS = {ports}
LINGER = struct.pack("ii", 1, 0)
stand_in = vars(socket.socket)["connect"]
ready = threading.Barrier(len(PORTS) + 1)
outcomes = []

def forced(port):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", port | port << 16))
    return s

def attempt(s, connect, port):
    try:
        connect(("127.0.0.1", port))
        return "UNCHECKED" if s.getsockname() == s.getpeername() else "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
        s.close()

def racer(i, port):
    s = forced(port)
    bound_before = s.connect
    ready.wait()
    deadline = time.monotonic() + 15
    while vars(socket.socket).get("connect") is stand_in and time.monotonic() < deadline:
        pass
    outcomes.append(attempt(s, bound_before if i % 2 else s.connect, port))
    for _ in range(2):
        s = forced(port)
        outcomes.append(attempt(s, s.connect, port))

threads = [threading.Thread(target=racer, args=(i, p)) for i, p in enumerate(PORTS)]
for t in threads:
    t.start()
ready.wait()
time.sleep(0.01)
{before}
socket.socket().connect_ex(("127.0.0.1", 1))  # the first connect: installs the guard
sys.setprofile(None)
for t in threads:
    t.join()
print(" ".join(sorted(outcomes)))
"""


WAYS = {
    "as deployed": {"preamble": "", "before": ""},
    "yielding": {"preamble": "import selfguard", "before": "sys.setprofile(lambda *args: time.sleep(0))"},
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_no_connect_passes_unchecked_while_the_first_connect_installs_the_guard(way):
    """Racers connecting while the guard goes on all meet it: every forced self-connect ends in SelfConnectError."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    ports: list[int] = []
    for _ in range(RACERS):
        ports.append(free_port(avoid=ports))
    started = time.monotonic()
    runs = 0
    seen: dict[str, int] = {}
    while runs < MAX_RUNS and time.monotonic() - started < MAX_SECONDS:
        done = under_sitecustomize(HUNT.format(ports=ports, **WAYS[way]))
        assert 0 == done.returncode, done.stderr[-2000:]
        runs += 1
        for outcome in done.stdout.split():
            seen[outcome] = seen.get(outcome, 0) + 1
        assert "UNCHECKED" not in seen, (runs, seen)
    assert runs >= 2, f"only {runs} hunts in {MAX_SECONDS} s"
    # Every racer's connect was a forced self-connect that the guard refused.
    assert {"SelfConnectError": runs * RACERS * 3} == seen
