"""Interpreter start-up cost of selfguard's sitecustomize, measured side by side in one run.

Run: python benchmarks/bench_startup.py [--runs N]

For `python -c pass` (a process that never opens a socket) and for
`python -c "import socket"`, it times interleaved runs with and without the
sitecustomize on PYTHONPATH, plus `import socket, wrapt` as the reference for
what wrapt alone costs, and prints medians. A benchmark, not a test.
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
    cases = {
        "python -c pass": ("pass", plain),
        "python -c pass, with sitecustomize": ("pass", guarded),
        "python -c 'import socket'": ("import socket", plain),
        "python -c 'import socket, wrapt' (reference)": ("import socket, wrapt", plain),
        "python -c 'import socket', with sitecustomize": ("import socket", guarded),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for code, env in cases.values():
        _time(code, env)  # warm the page cache
    for _ in range(args.runs):
        for name, (code, env) in cases.items():
            times[name].append(_time(code, env))
    ms = {name: statistics.median(values) * 1000 for name, values in times.items()}

    print(f"Python {sys.version.split()[0]}, wrapt {wrapt.__version__}, {args.runs} interleaved runs, medians\n")
    for name, value in ms.items():
        print(f"{name:<48} {value:7.1f} ms")
    names = list(ms)
    print()
    print(f"sitecustomize, process without sockets:   {ms[names[1]] - ms[names[0]]:+6.1f} ms  (target <= +3 ms)")
    print(f"sitecustomize, process importing socket:  {ms[names[4]] - ms[names[2]]:+6.1f} ms in all,")
    print(f"  of which importing wrapt:               {ms[names[3]] - ms[names[2]]:+6.1f} ms")
    print(f"  selfguard's own (import + install):     {ms[names[4]] - ms[names[3]]:+6.1f} ms  (target <= 3 ms)")


if __name__ == "__main__":
    main()
