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


# Another thread is inside `import ctypes` (its module lock held) when the main thread
# forks: a child that imports ctypes then waits for a thread it does not have, for ever.
FORK_DURING_AN_IMPORT = r"""
import importlib.util, os, sys, threading, time
import selfguard

selfguard.install()
assert "ctypes" not in sys.modules
inside, release = threading.Event(), threading.Event()

class Slow:  # runs ctypes' own code slowly (find_spec itself runs under the global import lock)
    def find_spec(self, name, path=None, target=None):
        if name != "ctypes":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("ctypes")
        real = spec.loader

        class Loader:
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                inside.set()
                release.wait(30)
                real.exec_module(module)

        spec.loader = Loader()
        return spec

sys.meta_path.insert(0, Slow())
importer = threading.Thread(target=lambda: __import__("ctypes"))
importer.start()
assert inside.wait(10)
pid = os.fork()
if pid == 0:
    os._exit(0)
deadline = time.monotonic() + 10
while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
    time.sleep(0.01)
hung = time.monotonic() >= deadline
if hung:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
release.set()
importer.join()
print("hung" if hung else "exited")
"""


def test_a_child_forked_during_another_threads_import_does_not_hang():
    """The at-fork hook imports nothing: a fork while another thread imports ctypes gives a child that runs."""
    done = subprocess.run([sys.executable, "-c", FORK_DURING_AN_IMPORT], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    assert "exited" == done.stdout.strip()
