"""gevent: guarded whether selfguard is installed after gevent's monkey-patching or before it.

Each case runs in its own interpreter: monkey-patching cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import require_forcing

SCENARIO = r"""
import json, socket, sys
import selfguard
from selfguard.testing import force_self_connect

def reconnect(port, forced):
    sock = socket.socket()
    sock.settimeout(5)
    if forced:
        force_self_connect(sock, port)  # this socket only: every attempt self-connects
    try:
        sock.connect(("127.0.0.1", port))
    except ConnectionRefusedError as exc:
        return type(exc).__name__
    finally:
        self_connected = selfguard.is_self_connected(sock)
        sock.close()
    return "self-connected" if self_connected else "connected"

port = int(sys.argv[1])
outcomes = [reconnect(port, forced=True), reconnect(port, forced=False)]
print(json.dumps({"class": socket.socket.__module__, "outcomes": outcomes, "stats": selfguard.stats()}))
"""

PATCH_ALL = "from gevent import monkey; monkey.patch_all()\n"
INSTALL = "import selfguard; selfguard.install()\n"
ORDERS = {"install after patch_all": PATCH_ALL + INSTALL, "install before patch_all": INSTALL + PATCH_ALL}


def run_in_gevent(code: str, port: int) -> dict:
    """Run *code* in its own interpreter (monkey-patching cannot be undone); its last line is a JSON report."""
    done = subprocess.run([sys.executable, "-c", code, str(port)], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["class"].startswith("gevent")
    return report


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_gevent_sockets_are_guarded(order, free_port):
    """A gevent socket's reconnects meet forced self-connects and only ever see refusals."""
    pytest.importorskip("gevent")
    require_forcing()
    report = run_in_gevent(ORDERS[order] + SCENARIO, free_port())
    assert ["SelfConnectError", "ConnectionRefusedError"] == report["outcomes"]
    assert {"self_connects": 3, "gave_up": 1, "retries": 2} == {
        k: report["stats"][k] for k in ("self_connects", "gave_up", "retries")
    }


NON_BLOCKING = r"""
import json, select, socket, sys
import selfguard
from selfguard.testing import force_self_connect

port = int(sys.argv[1])
sock = socket.socket()
force_self_connect(sock, port)
sock.setblocking(False)
sock.connect_ex(("127.0.0.1", port))
select.select([], [sock], [], 5)
err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
report = {"class": socket.socket.__module__, "so_error": err, "self_connected": selfguard.is_self_connected(sock)}
print(json.dumps(report))
"""


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_a_non_blocking_gevent_socket_gets_the_truth_from_so_error(order, free_port):
    """A gevent socket the user made non-blocking: SO_ERROR reads ECONNREFUSED, the socket is reset."""
    pytest.importorskip("gevent")
    require_forcing()
    report = run_in_gevent(ORDERS[order] + NON_BLOCKING, free_port())
    assert (111, False) == (report["so_error"], report["self_connected"])
