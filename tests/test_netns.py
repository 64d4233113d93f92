"""A network namespace with a narrowed ephemeral range: sockets no hook pre-configures meet real self-connects.

Needs root and unshare(1) (CI has both): `unshare -n` gives a private
loopback whose net.ipv4.ip_local_port_range can be narrowed to four ports, so
that the kernel itself picks the destination port as source port for about
half of all connects -- the real bug, at a rate a test can see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import require

CHILD = r"""
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
low = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write(f"{low} {low + 3}")  # connect() tries low and low + 2 first
import selfguard

def can_bind(port):
    with socket.socket() as srv:
        try:
            srv.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

def reconnect_loop(port, dials):
    seen = {"self_connected": 0, "refused": 0, "other": 0}
    for _ in range(dials):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except ConnectionRefusedError:
            seen["refused"] += 1
            continue
        except OSError as exc:
            seen["other"] += 1
            continue
        seen["self_connected"] += selfguard.is_self_connected(sock)
        sock.close()
    seen["server_can_bind"] = can_bind(port)
    return seen

report = {"unguarded": reconnect_loop(low, 200)}
selfguard.install()
report["guarded"] = reconnect_loop(low + 2, 200)
report["stats"] = selfguard.stats()
print(json.dumps(report))
"""


def test_a_reconnect_loop_in_a_namespace_never_gets_a_self_connection():
    """Unguarded the loop gets self-connections and blocks the server; guarded it gets only refusals."""
    require(sys.platform.startswith("linux"), "needs Linux network namespaces")
    require(os.geteuid() == 0, "needs root for a network namespace (CI runs as root)")
    require(shutil.which("unshare") is not None and shutil.which("ip") is not None, "needs unshare and ip")
    low = 40000  # any even port: inside the namespace the range is ours alone
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CHILD, str(low)], capture_output=True, text=True, timeout=120
    )
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)

    unguarded, guarded, stats = report["unguarded"], report["guarded"], report["stats"]
    assert unguarded["self_connected"] >= 1  # the bug, in a process nobody configured
    assert not unguarded["server_can_bind"]  # its TIME_WAIT keeps the server out

    assert 0 == guarded["self_connected"]
    assert 0 == guarded["other"]
    assert 200 == guarded["refused"]
    assert guarded["server_can_bind"]
    assert stats["self_connects"] >= 20  # about half of the attempts, on a range of four ports
    assert stats["retries"] >= stats["self_connects"] - stats["gave_up"]
