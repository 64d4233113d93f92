"""Run a test body as root in a fresh network namespace, with helpers for sysctls, `selfguard doctor` and dials.

The sysctls written there belong to that namespace alone: the host's are never
touched. Every loop is bounded in count and time; traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from conftest import require

PRELUDE = r'''
import json, os, socket, struct, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
params = json.loads(sys.argv[1])
PROC = "/proc/sys/net/ipv4/"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def sysctl(name, value=None):
    """Read (or first write) net.ipv4.NAME in this namespace."""
    if value is not None:
        with open(PROC + name, "w") as f:
            f.write(value)
    # One large read: the kernel answers a read at a non-zero offset with end-of-file,
    # so f.read()'s 8 KiB pieces would cut a long list short.
    fd = os.open(PROC + name, os.O_RDONLY)
    try:
        return " ".join(os.read(fd, 1 << 20).decode().split())
    finally:
        os.close(fd)


def doctor(*args, as_nobody=False):
    """Run the real command line, `python -m selfguard doctor ARGS`, and return what it did."""
    command = [sys.executable, "-m", "selfguard", "doctor", *args]
    done = subprocess.run((NOBODY if as_nobody else []) + command, capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


LINGER_RST = struct.pack("ii", 1, 0)


def self_connects(port, dials, seconds=20.0, bind_first=False):
    """An unguarded reconnect loop to 127.0.0.1:PORT: how many of its dials connected to themselves.

    bind_first: each socket binds to port 0 before connecting (source_address=(host, 0)).
    """
    met = 0
    deadline = time.monotonic() + seconds
    for _ in range(dials):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dials} dials took more than {seconds} s")
        sock = socket.socket()
        sock.settimeout(2)
        try:
            if bind_first:
                sock.bind(("127.0.0.1", 0))
            sock.connect(("127.0.0.1", port))
            met += sock.getsockname() == sock.getpeername()
        except OSError:
            pass
        # RST instead of TIME_WAIT: a self-connect must not skew the next dials.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sock.close()
    return met

'''


def require_netns() -> None:
    require(sys.platform.startswith("linux"), "needs Linux network namespaces")
    require(os.geteuid() == 0, "needs root for a network namespace (CI runs as root)")
    for tool in ("unshare", "ip", "setpriv"):
        require(shutil.which(tool) is not None, f"needs {tool}")


def require_nobody_can_run_python() -> None:
    """The no-root tests run this interpreter as nobody: it and selfguard must be readable by that user."""
    require_netns()
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "import selfguard"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    require(0 == done.returncode, f"user nobody cannot run {sys.executable} with selfguard: {done.stderr.strip()}")


def in_netns(body: str, **params: Any) -> Any:
    """Run *body* (Python, after PRELUDE) in a new network namespace; return the JSON of its `result`."""
    require_netns()
    code = PRELUDE + body + "\nprint(json.dumps(result))\n"
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert 0 == done.returncode, done.stderr
    return json.loads(done.stdout.splitlines()[-1])
