"""Interpreter start-up cost of selfguard's sitecustomize, measured side by side in one run.

Run: python benchmarks/bench_startup.py [--runs N] [--clock cpu|wall]

Each round starts one interpreter per case, always in the same order; a
case's extra cost is its figure minus the plain interpreter's in the same
round. The table gives the median of those per-round differences and their
spread (first to third quartile, then min to max), so a noisy machine shows
as a wide spread rather than as a wrong figure.

- `python -c pass` (a process that never opens a socket) and `python -c
  "import socket"`, timed from outside (process start to exit), with no
  sitecustomize, with the sitecustomize's bytecode cached (a .pyc in
  __pycache__, as after the documented deployment), and uncached (read-only
  site-packages, PYTHONDONTWRITEBYTECODE: compiled at every start).
- The same `import socket`, with `-X importtime`: the interpreter's own
  account of importing the sitecustomize (finding, compiling or loading,
  running it) and socket (with the stand-ins going on), without the noise of
  process start-up.
- The first connect, where the sitecustomize installs the guard, timed from
  inside the process (around the statements, which keeps the noise of process
  start-up out): in all, then split into wrapt's part -- loading the compiled
  wrappers the guard takes from wrapt, done first and timed on its own by
  running selfguard/_wrapt.py as a module of its own (the only part of wrapt
  the guard loads; that file's few classes and functions count here too) --
  and selfguard's own part: its import and install(), measured as the first
  connect after that, minus an unguarded first connect after the same.
- For comparison, `import wrapt` (the whole package), which the first connect
  no longer runs: wrapt 2 imports asyncio, inspect and importlib.metadata.

--clock cpu (the default, as in bench_connect.py) counts CPU time: each
interpreter's user + system time from the kernel's accounting of the child
(wait4), and time.process_time() inside. On a machine others share, wall time
also counts the time a process waited for a CPU, which can drown a fraction of a
millisecond; CPU time mostly does not. --clock wall times process start to
exit, and perf_counter() inside. -X importtime reports wall time either way.

Run it with the interpreter of a regular install (`pip install .`), not an
editable one: an editable install's import finder loads pathlib and more at
every start-up, which hides part of wrapt's import cost. The header says which
it measured.

A benchmark, not a test: it fails only if it cannot run.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import wrapt

from selfguard._commands.run import BOOTSTRAP

TARGET_OWN_FIRST_CONNECT_MS = 3.0
# Timed from inside: each prints the seconds its steps took. Port 1 refuses at once.
FIRST_CONNECT = """
import time
import socket
t0 = time.{clock}()
socket.socket().connect_ex(("127.0.0.1", 1))
print(time.{clock}() - t0)
"""
# What selfguard loads of wrapt, loaded first: selfguard/_wrapt.py, run as a
# module of its own name (importlib's own machinery, already loaded: nothing
# else is imported before the clock starts). The guard's `import
# selfguard._wrapt` then finds wrapt's modules in sys.modules.
WRAPT_PART_THEN_FIRST_CONNECT = """
import time
import socket
import _frozen_importlib, _frozen_importlib_external
loader = _frozen_importlib_external.SourceFileLoader("selfguard_wrapt_part", {wrapt_part!r})
spec = _frozen_importlib.spec_from_loader(loader.name, loader)
t0 = time.{clock}()
loader.exec_module(_frozen_importlib.module_from_spec(spec))
t1 = time.{clock}()
socket.socket().connect_ex(("127.0.0.1", 1))
print(t1 - t0, time.{clock}() - t1)
"""
IMPORT_WRAPT = """
import time
t0 = time.{clock}()
import wrapt
print(time.{clock}() - t0)
"""
# The clock inside the interpreters, per --clock.
INSIDE_CLOCK = {"cpu": "process_time", "wall": "perf_counter"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(code: str, env: dict[str, str], clock: str, cwd: str) -> tuple[float, list[float]]:
    """Start an interpreter running *code*: its time (CPU or wall, per *clock*), and the figures it printed.

    With PYTHONPROFILEIMPORTTIME set, the figures are the cumulative import
    times (seconds) of sitecustomize and socket, from -X importtime's report.
    """
    # One child at a time, reaped by subprocess.run: the children's CPU time grows by exactly its own.
    started, cpu = time.perf_counter(), _children_cpu()
    # In *cwd*, not here: `-c` puts the current directory first on sys.path,
    # and from a clone that would be the clone's selfguard, not the installed one.
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - started if clock == "wall" else _children_cpu() - cpu
    if "PYTHONPROFILEIMPORTTIME" not in env:
        return elapsed, [float(field) for field in done.stdout.split()]
    # "import time: self [us] | cumulative | imported package"; a failed search is reported too.
    cumulative = {}
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            cumulative[fields[2].strip()] = int(fields[1]) / 1e6
    return elapsed, [cumulative.get("sitecustomize", 0.0), cumulative["socket"]]


def _spread(values: list[float]) -> str:
    """Median, quartiles and range of *values* (seconds), in ms."""
    ms = sorted(v * 1000 for v in values)
    q1, median, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0],) * 3
    return f"{median:+7.2f} ms   [{q1:+6.2f} .. {q3:+6.2f}]   [{ms[0]:+6.2f} .. {ms[-1]:+6.2f}]"


def _how_installed() -> str:
    """Where selfguard is imported from, and whether that is an editable install (which skews start-up)."""
    import json
    from importlib import metadata

    import selfguard

    try:
        direct = metadata.distribution("selfguard").read_text("direct_url.json")
        editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))
    except metadata.PackageNotFoundError:
        return f"selfguard from {os.path.dirname(selfguard.__file__)} (not installed: a clone on sys.path)"
    how = "EDITABLE install: its finder skews start-up, measure a `pip install .`" if editable else "regular install"
    return f"selfguard from {os.path.dirname(selfguard.__file__)} ({how})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="rounds (default: 30)")
    parser.add_argument(
        "--clock", choices=sorted(INSIDE_CLOCK), default="cpu", help="cpu: CPU time (default); wall: elapsed time"
    )
    args = parser.parse_args()
    first_connect = FIRST_CONNECT.format(clock=INSIDE_CLOCK[args.clock])
    wrapt_part = os.path.join(os.path.dirname(BOOTSTRAP), "_wrapt.py")
    wrapt_part_then_first_connect = WRAPT_PART_THEN_FIRST_CONNECT.format(
        clock=INSIDE_CLOCK[args.clock], wrapt_part=wrapt_part
    )
    import_wrapt = IMPORT_WRAPT.format(clock=INSIDE_CLOCK[args.clock])

    work = tempfile.mkdtemp(prefix="selfguard-bench-")
    try:
        # Two copies of the sitecustomize: one precompiled, one never compiled to a file.
        cached, uncached = os.path.join(work, "cached"), os.path.join(work, "uncached")
        for directory in (cached, uncached):
            os.mkdir(directory)
            shutil.copy(os.path.join(BOOTSTRAP, "sitecustomize.py"), directory)
        py_compile.compile(os.path.join(cached, "sitecustomize.py"), doraise=True)

        plain = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
        # PYTHONDONTWRITEBYTECODE on every case, so the plain ones pay the same
        # (nothing: their bytecode is cached already) and the uncached copy stays uncached.
        plain["PYTHONDONTWRITEBYTECODE"] = "1"
        with_cached = dict(plain, PYTHONPATH=cached)
        with_uncached = dict(plain, PYTHONPATH=uncached)
        cases = {
            "pass": ("pass", plain),
            "pass, cached": ("pass", with_cached),
            "pass, uncached": ("pass", with_uncached),
            "socket": ("import socket", plain),
            "socket, cached": ("import socket", with_cached),
            "socket, uncached": ("import socket", with_uncached),
            "importtime": ("import socket", dict(plain, PYTHONPROFILEIMPORTTIME="1")),
            "importtime, cached": ("import socket", dict(with_cached, PYTHONPROFILEIMPORTTIME="1")),
            "importtime, uncached": ("import socket", dict(with_uncached, PYTHONPROFILEIMPORTTIME="1")),
            "connect": (first_connect, plain),
            "connect, cached": (first_connect, with_cached),
            "wrapt part, connect": (wrapt_part_then_first_connect, plain),
            "wrapt part, connect, cached": (wrapt_part_then_first_connect, with_cached),
            "import wrapt": (import_wrapt, plain),
        }
        quiet = os.path.join(work, "cwd")  # an empty current directory for the interpreters
        os.mkdir(quiet)
        for code, env in cases.values():
            _run(code, env, args.clock, quiet)  # warm the page cache
        wall: dict[str, list[float]] = {name: [] for name in cases}
        inside: dict[str, list[list[float]]] = {name: [] for name in cases}
        order = list(cases)
        for _ in range(args.runs):
            random.shuffle(order)  # no case always runs just after another
            for name in order:
                code, env = cases[name]
                elapsed, printed = _run(code, env, args.clock, quiet)
                wall[name].append(elapsed)
                inside[name].append(printed)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def extra_wall(case: str, base: str) -> list[float]:
        return [a - b for a, b in zip(wall[case], wall[base])]

    def extra_inside(case: str, base: str, field: int = -1) -> list[float]:
        return [a[field] - b[field] for a, b in zip(inside[case], inside[base])]

    own = extra_inside("wrapt part, connect, cached", "wrapt part, connect")
    rows = [
        ("python -c pass, bytecode cached", extra_wall("pass, cached", "pass")),
        ("python -c pass, bytecode uncached", extra_wall("pass, uncached", "pass")),
        ("python -c 'import socket', cached", extra_wall("socket, cached", "socket")),
        ("python -c 'import socket', uncached", extra_wall("socket, uncached", "socket")),
        ("-X importtime: sitecustomize, cached", extra_inside("importtime, cached", "importtime", 0)),
        ("-X importtime: sitecustomize, uncached", extra_inside("importtime, uncached", "importtime", 0)),
        ("-X importtime: socket (stand-ins going on)", extra_inside("importtime, cached", "importtime", 1)),
        ("first connect, in all", extra_inside("connect, cached", "connect")),
        ("  wrapt's part: its compiled wrappers", [printed[0] for printed in inside["wrapt part, connect, cached"]]),
        ("  selfguard's own: import and install()", own),
        ("for comparison: `import wrapt`, all of it", [printed[0] for printed in inside["import wrapt"]]),
    ]
    what = "CPU time (user + system)" if args.clock == "cpu" else "wall-clock time"
    print(f"Python {sys.version.split()[0]}, wrapt {wrapt.__version__}, {args.runs} rounds, {what}")
    print(_how_installed())
    print(f"plain `python -c pass`: {statistics.median(wall['pass']) * 1000:.1f} ms (median)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'extra cost of the sitecustomize':<42} {'median':>10}   {'quartiles':<17}   min .. max")
    for label, values in rows:
        print(f"{label:<42} {_spread(values)}")
    own_ms = statistics.median(own) * 1000
    verdict = "met" if own_ms <= TARGET_OWN_FIRST_CONNECT_MS else "MISSED"
    print(
        f"\nselfguard's own first-connect cost, beyond wrapt's part: {own_ms:.2f} ms "
        f"(target <= {TARGET_OWN_FIRST_CONNECT_MS:g} ms): {verdict}"
    )


if __name__ == "__main__":
    main()
