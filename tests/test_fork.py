"""fork(): the guard works in a forked child, whose counters start at zero and stay its own."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import require_forcing

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
