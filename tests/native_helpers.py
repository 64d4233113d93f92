"""What the native guard's tests share: the built library, the test's C programs, network namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from selfguard import _native

from helpers import clean_environ, require

SOURCES = Path(__file__).parent / "native"
# `selfguard run --native -- CMD`, as a user types it.
GUARDED = [sys.executable, "-m", "selfguard", "run", "--native", "--"]


def require_library() -> str:
    """The built library's path; skip (fail on CI) when it was not built."""
    if not os.path.isfile(_native.LIBRARY):
        require(False, _native.missing_reason())
    return _native.LIBRARY


def require_namespaces() -> None:
    """Skip (fail on CI) unless this process can make network namespaces (Linux, root, unshare and ip)."""
    require(sys.platform.startswith("linux"), "needs Linux network namespaces")
    require(os.geteuid() == 0, "needs root for a network namespace (CI runs as root)")
    require(shutil.which("unshare") is not None and shutil.which("ip") is not None, "needs unshare and ip")


def compile_c(name: str, out_dir: Path, *flags: str) -> Path:
    """Compile tests/native/NAME.c into out_dir/NAME; skip (fail on CI) without a C compiler."""
    compiler = shutil.which(os.environ.get("CC", "") or "cc") or shutil.which("gcc")
    require(compiler is not None, "needs a C compiler (cc or gcc)")
    assert compiler is not None
    binary = out_dir / name
    if not binary.exists():
        subprocess.run(
            [compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCES / f"{name}.c"), *flags],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return binary


# Runs inside a fresh network namespace: loopback up, the ephemeral range and the reserved
# ports set, then CMD; then a server binds the port CMD dialled at once, as a restarting
# one would (with SO_REUSEADDR, which does not help against TIME_WAIT left by a
# self-connect). Prints one JSON object.
DRIVER = r"""
import json, socket, subprocess, sys
spec = json.loads(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("%d %d" % tuple(spec["range"]))
with open("/proc/sys/net/ipv4/ip_local_reserved_ports", "w") as f:
    f.write(spec["reserved"])
done = subprocess.run(spec["argv"], env=spec["env"], capture_output=True, text=True, timeout=spec["timeout"])
server = socket.socket(socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    server.bind((spec["host"], spec["port"]))
    server.listen(16)
    bound = "bound"
except OSError as exc:
    bound = "errno %d" % exc.errno
server.close()
print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "server": bound}))
"""


def in_namespace(
    argv: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 40000,
    port_range: tuple[int, int] = (40000, 40001),
    reserved: str = "",
    env: Optional[dict[str, str]] = None,
    timeout: float = 180,
) -> dict[str, Any]:
    """Run *argv* in a fresh network namespace (see DRIVER); returns rc, stdout, stderr and the server's bind.

    The server binds *host*:*port* after *argv* exits.
    """
    spec = {
        "argv": list(argv),
        "env": env if env is not None else clean_environ(),
        "host": host,
        "port": port,
        "range": list(port_range),
        "reserved": reserved,
        "timeout": timeout,
    }
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", DRIVER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    assert 0 == done.returncode, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def report_lines(path: Path) -> list[dict[str, int]]:
    """The lines SELFGUARD_NATIVE_REPORT=path collected, one per process that counted something."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def total(lines: list[dict[str, int]], counter: str) -> int:
    return sum(line[counter] for line in lines)
