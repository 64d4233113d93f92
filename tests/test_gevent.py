"""gevent: guarded whether selfguard is installed after gevent's monkey-patching or before it, or without it.

Each case runs in its own interpreter: monkey-patching cannot be undone, and
gevent's socket class, once imported, stays wrapped for the process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import require_forcing, under_sitecustomize
from native_helpers import require_namespaces

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


def run_in_gevent(code: str, *args: object) -> dict:
    """Run *code* in its own interpreter (monkey-patching cannot be undone); its last line is a JSON report."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60)
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


# gevent's own class used directly, with no monkey-patching (geventhttpclient and
# other gevent-native clients do): socket.socket stays the stdlib's, and gevent's
# class connects through a _socket.socket of its own, out of its wrappers' sight.
NATIVE = r"""
import json, sys
import gevent
from gevent import socket as gsocket
import selfguard
from selfguard.testing import force_self_connect

def reconnect(port, forced, how):
    sock = gsocket.socket()
    sock.settimeout(None if how == "no timeout" else 5)
    if forced:
        force_self_connect(sock, port)  # this socket only: every attempt self-connects
    try:
        if how == "connect_ex":
            code = sock.connect_ex(("127.0.0.1", port))
            if code:
                return code
        else:
            sock.connect(("127.0.0.1", port))
    except ConnectionRefusedError as exc:
        return type(exc).__name__
    finally:
        self_connected = selfguard.is_self_connected(sock)
        sock.close()
    return "self-connected" if self_connected else "connected"

def both(port, how):  # the unforced dial after it: refused, the port free again (no TIME_WAIT)
    return [reconnect(port, True, how), reconnect(port, False, how)]

port, other_port, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if how == "in greenlets":  # the cooperative path: two connects at once, each in its own greenlet
    jobs = [gevent.spawn(both, port, "timeout"), gevent.spawn(both, other_port, "timeout")]
    outcomes = [outcome for job in gevent.joinall(jobs, raise_error=True) for outcome in job.value]
else:
    outcomes = both(port, how)
report = {"class": gsocket.socket.__module__, "stdlib": __import__("socket").socket.__module__}
print(json.dumps({**report, "outcomes": outcomes, "stats": selfguard.stats()}))
"""

INSTALL_ORDERS = {
    "installed before gevent.socket is imported": "import selfguard; selfguard.install()\n" + NATIVE,
    "installed after": NATIVE.replace("\nport, other_port, how =", "\nselfguard.install()\nport, other_port, how =", 1),
}


@pytest.mark.parametrize("how", ["timeout", "no timeout", "connect_ex", "in greenlets"])
@pytest.mark.parametrize("order", sorted(INSTALL_ORDERS))
def test_gevents_own_socket_class_is_guarded_without_monkey_patching(order, how, free_port):
    """gevent.socket.socket used directly: forced self-connects are retried, then refused; the port stays free."""
    pytest.importorskip("gevent")
    require_forcing()
    report = run_in_gevent(INSTALL_ORDERS[order], free_port(), free_port(), how)
    assert "socket" == report["stdlib"]  # not monkey-patched
    refused = 111 if how == "connect_ex" else "SelfConnectError"
    dials = 2 if how == "in greenlets" else 1
    assert [refused, 111 if how == "connect_ex" else "ConnectionRefusedError"] * dials == report["outcomes"]
    assert {"self_connects": 3 * dials, "gave_up": dials, "retries": 2 * dials} == {
        k: report["stats"][k] for k in ("self_connects", "gave_up", "retries")
    }


NATIVE_NON_BLOCKING = NON_BLOCKING.replace(
    "import json, select, socket, sys", "import json, select, sys\nfrom gevent import socket"
).replace("import selfguard\n", "import selfguard\nselfguard.install()\n", 1)


def test_a_non_blocking_socket_of_gevents_own_class_gets_the_truth_from_so_error(free_port):
    """gevent.socket.socket made non-blocking, without monkey-patching: SO_ERROR reads ECONNREFUSED."""
    pytest.importorskip("gevent")
    require_forcing()
    report = run_in_gevent(NATIVE_NON_BLOCKING, free_port())
    assert (111, False) == (report["so_error"], report["self_connected"])


BOUND_ON_PURPOSE = r"""
import json, sys
import selfguard
selfguard.install()
from gevent import socket
port = int(sys.argv[1])
sock = socket.socket()
sock.settimeout(5)
sock.bind(("127.0.0.1", port))
sock.connect(("127.0.0.1", port))  # a deliberate self-connect: the user chose the port
report = {"class": type(sock).__module__, "self_connected": selfguard.is_self_connected(sock)}
print(json.dumps({**report, "stats": selfguard.stats()}))
"""


def test_a_gevent_socket_bound_on_purpose_is_left_alone(free_port):
    """gevent.socket.socket bound to an explicit port and connected to it: the guard does not touch it."""
    pytest.importorskip("gevent")
    report = run_in_gevent(BOUND_ON_PURPOSE, free_port())
    assert (True, 0) == (report["self_connected"], report["stats"]["self_connects"])


FIRST_CONNECT = r"""
import json
from gevent import socket
import selfguard
from selfguard.testing import force_self_connect
before = selfguard.status()
sock = socket.socket()  # the process's first connect: through gevent's class, not socket.socket
sock.settimeout(5)
force_self_connect(sock, PORT)
try:
    sock.connect(("127.0.0.1", PORT))
    outcome = "self-connected" if selfguard.is_self_connected(sock) else "connected"
except OSError as exc:
    outcome = type(exc).__name__
print(json.dumps({"before": before, "outcome": outcome, "after": selfguard.status()}))
"""


def test_under_the_sitecustomize_the_first_connect_can_be_through_gevents_own_class(free_port):
    """Under the sitecustomize, a first connect made by gevent.socket.socket installs the guard and is guarded."""
    pytest.importorskip("gevent")
    require_forcing()
    done = under_sitecustomize(FIRST_CONNECT.replace("PORT", str(free_port())))
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert {"before": "armed", "outcome": "SelfConnectError", "after": "active"} == report


# geventhttpclient makes gevent.socket.socket objects itself: IP_LOCAL_PORT_RANGE
# cannot reach them, so the kernel is made to self-connect in a network namespace
# whose ephemeral range is two ports: connect() tries the even one first.
HTTP_CLIENT = r"""
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
PORT = 40000
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write(f"{PORT} {PORT + 1}")
import selfguard
if sys.argv[1] == "guarded":
    selfguard.install()
from geventhttpclient import HTTPClient
symptoms, refused = [], 0
for _ in range(10):
    client = HTTPClient("127.0.0.1", PORT, connection_timeout=2, network_timeout=2, concurrency=1)
    try:
        symptoms.append(f"HTTP {client.get('/').status_code}")
    except ConnectionRefusedError:
        refused += 1
    except Exception as exc:  # a self-connect: the client parses its own request as the response
        symptoms.append(repr(exc)[:200])
    client.close()
with socket.socket() as server:
    try:
        server.bind(("127.0.0.1", PORT))
        server_can_bind = True
    except OSError:
        server_can_bind = False
report = {"class": "gevent", "symptoms": symptoms, "refused": refused, "server_can_bind": server_can_bind}
print(json.dumps({**report, "stats": selfguard.stats()}))
"""


def _http_client_in_namespace(mode: str) -> dict:
    pytest.importorskip("geventhttpclient")
    require_namespaces()
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", HTTP_CLIENT, mode], capture_output=True, text=True, timeout=120
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_without_the_guard_geventhttpclient_reads_its_own_request():
    """The control: unguarded, geventhttpclient parses its own request and the server cannot bind its port."""
    report = _http_client_in_namespace("unguarded")
    assert report["symptoms"], report
    assert not report["server_can_bind"], report


def test_geventhttpclient_meets_only_refusals_and_the_server_binds():
    """Guarded (no monkey-patching): 10 requests to a down server are refused, none reads itself; the port is free."""
    report = _http_client_in_namespace("guarded")
    assert ([], 10, True) == (report["symptoms"], report["refused"], report["server_can_bind"]), report
    assert report["stats"]["self_connects"] >= 1, report


UNINSTALL = r"""
import json
import selfguard
from gevent import socket
from selfguard import _install
methods = tuple(_install._WRAPPERS)
before = {name: vars(socket.socket).get(name) for name in methods}
selfguard.install()
wrapped = sorted(name for name in methods if vars(socket.socket).get(name) is not before[name])
selfguard.uninstall()
changed = sorted(name for name in methods if vars(socket.socket).get(name) is not before[name])
print(json.dumps({"class": socket.socket.__module__, "wrapped": wrapped, "changed": changed}))
"""


def test_gevents_own_class_gets_every_wrapper_of_socket_socket_and_loses_them_at_uninstall():
    """Without monkey-patching, gevent's class is wrapped as socket.socket is; uninstall() restores it exactly."""
    pytest.importorskip("gevent")
    from selfguard import _install

    report = run_in_gevent(UNINSTALL)
    assert (sorted(_install._WRAPPERS), []) == (report["wrapped"], report["changed"])
