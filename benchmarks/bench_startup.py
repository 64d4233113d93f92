"""Interpreter start-up cost of selfguard's sitecustomize, measured side by side in one run.

Run: python benchmarks/bench_startup.py [--runs N]

For `python -c pass` (a process that never opens a socket), for `import
socket`, and for a process that makes one connect (where the sitecustomize
installs the guard), it times interleaved runs with and without the
sitecustomize on PYTHONPATH, plus the same connect after `import wrapt` as
the reference for what wrapt alone costs, and prints medians. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import wrapt

from selfguard._run import BOOTSTRAP


def _time(code: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()

    plain = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    guarded = dict(plain, PYTHONPATH=BOOTSTRAP)
    connect = "import socket; socket.socket().connect_ex(('127.0.0.1', 1))"  # port 1: refused at once
    cases = {
        "python -c pass": ("pass", plain),
        "python -c pass, with sitecustomize": ("pass", guarded),
        "python -c 'import socket'": ("import socket", plain),
        "python -c 'import socket', with sitecustomize": ("import socket", guarded),
        "one connect": (connect, plain),
        "one connect, importing wrapt (reference)": ("import wrapt; " + connect, plain),
        "one connect, with sitecustomize": (connect, guarded),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for code, env in cases.values():
        _time(code, env)  # warm the page cache
    for _ in range(args.runs):
        for name, (code, env) in cases.items():
            times[name].append(_time(code, env))
    ms = [statistics.median(values) * 1000 for values in times.values()]

    print(f"Python {sys.version.split()[0]}, wrapt {wrapt.__version__}, {args.runs} interleaved runs, medians\n")
    for name, value in zip(cases, ms):
        print(f"{name:<48} {value:7.1f} ms")
    print()
    print(f"sitecustomize, process without sockets:      {ms[1] - ms[0]:+6.1f} ms  (target <= +3 ms)")
    print(f"sitecustomize, process importing socket:     {ms[3] - ms[2]:+6.1f} ms  (the guard waits for a connect)")
    print(f"sitecustomize, process that connects:        {ms[6] - ms[4]:+6.1f} ms in all,")
    print(f"  of which importing wrapt:                  {ms[5] - ms[4]:+6.1f} ms")
    print(f"  selfguard's own (import + install):        {ms[6] - ms[5]:+6.1f} ms  (target <= 3 ms)")


if __name__ == "__main__":
    main()
