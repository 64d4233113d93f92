"""User-space instructions per iteration of bench_connect.py's cases, per variant, counted with callgrind.

Usage: python benchmarks/count_instructions.py [--scale X] [--case NAME]... [--timeout S] [--json]

  --scale X    multiply every case's N (default 1.0: N is the case's iterations
               per slice in bench_connect.py, 8 to 600)
  --case NAME  count only this case; repeat for several (bench_connect.py's names)
  --timeout S  give up after S seconds in all (default 240), killing valgrind
  --json       print the counts as one JSON object instead of a table

Times on a machine others share move by more than the differences looked at
here; instruction counts repeat within about 1%. For each variant (unguarded,
floor, selfguard: the same loops and the same floor as bench_connect.py's), one
child interpreter runs under `valgrind --tool=callgrind`, the three at once. The
child sets up every case, then for each case puts the variant on, runs the loop
N times to warm up (caches, wrapt's first bindings), then N times, then 2N times.
It calls os.getppid() before each run, and callgrind (--dump-before=getppid)
writes the instructions counted since the previous call: (the 2N run's count -
the N run's) / N is one iteration's, without what a run costs once (asyncio's
run_until_complete, the calls around the loop). Start-up is in neither.

What the counts leave out: the kernel's work inside syscalls (for getsockname(),
only building its result in Python is counted, not the syscall), and the wait
for the CPU. Under valgrind a program runs about 50 times slower, so what
selfguard does once a second (re-reading the port range, outside the range
only) comes about 50 times as often per iteration: a few instructions more.
The children run with PYTHONHASHSEED=0, so that their dicts and sets are laid
out alike from run to run.

Fails with a clear message when valgrind is missing or a child fails; exits 0
whatever the counts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from bench_connect import VARIANTS, Counts, prepare, variant_on
from connect_cases import CASE_KEYS

MARK = "getppid"  # the libc function callgrind dumps before; nothing else here calls it
DEFAULT_TIMEOUT = 240.0


# ---------------------------------------------------------------- the child, under valgrind


def child(variant: str, only: Optional[list[str]], scale: float) -> None:
    """Run each case's loop N, then 2N times under *variant*, marking each run; print the marks' labels as JSON."""
    benches, _, _ = prepare(only, scale)
    labels: list[str] = []  # labels[k]: what runs after the k-th mark, up to the next

    def mark(label: str) -> None:
        labels.append(label)
        os.getppid()  # callgrind dumps the counts so far, before this call

    for bench in benches:
        n = bench.iterations
        gc.collect()
        off = variant_on(variant, bench)
        try:
            bench.case.run(n)  # warm-up
            mark(f"{bench.case.key} {n}")
            bench.case.run(n)
            mark(f"{bench.case.key} {2 * n}")
            bench.case.run(2 * n)
            mark("between")
        finally:
            off()
    json.dump(labels, sys.stdout)


# ---------------------------------------------------------------- the parent


def parts(out: Path) -> dict[int, int]:
    """Callgrind's dumps of one run: part number -> instructions collected in it."""
    found: dict[int, int] = {}
    for path in out.parent.glob(out.name + "*"):
        text = path.read_text(errors="replace")
        part = re.search(r"^part: (\d+)$", text, re.M)
        summary = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if part and summary:
            found[int(part.group(1))] = int(summary.group(1))
    return found


def per_iteration(labels: list[str], counts: dict[int, int], variant: str) -> dict[str, float]:
    """case -> thousands of instructions per iteration, from the child's labels and callgrind's parts."""
    # Part 1 runs from start-up to the first mark; part k + 2 follows mark k; the last part ends at exit.
    if len(counts) != len(labels) + 1:
        raise SystemExit(
            f"count_instructions: the {variant} child marked {len(labels)} times, but callgrind wrote "
            f"{len(counts)} parts instead of {len(labels) + 1}: something else called {MARK}()?"
        )
    runs: dict[str, dict[int, int]] = {}
    for k, label in enumerate(labels):
        if label != "between":
            case, iterations = label.split()
            runs.setdefault(case, {})[int(iterations)] = counts[k + 2]
    result = {}
    for case, by_n in runs.items():
        n, twice = sorted(by_n)
        result[case] = (by_n[twice] - by_n[n]) / n / 1000
    return result


def count(only: Optional[list[str]], scale: float, timeout: float = DEFAULT_TIMEOUT) -> Counts:
    """case -> variant -> thousands of user-space instructions per iteration; SystemExit if it can't count."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit(
            "count_instructions: valgrind is not on PATH; install it (Debian/Ubuntu: apt-get install valgrind)"
        )
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    cases = [arg for key in only or () for arg in ("--case", key)]
    deadline = time.monotonic() + timeout
    by_variant: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="count_instructions.") as tmp:
        children = {}
        for variant in VARIANTS:
            out = Path(tmp) / f"{variant}.callgrind"
            command = [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                f"--dump-before={MARK}",
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                variant,
                "--scale",
                repr(scale),
                *cases,
            ]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            children[variant] = (process, out)
        try:
            for variant, (process, out) in children.items():
                try:
                    stdout, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise SystemExit(
                        f"count_instructions: gave up after {timeout:g} s (--timeout); try a smaller --scale"
                    ) from None
                if process.returncode != 0:
                    tail = "\n".join(stderr.splitlines()[-15:])
                    raise SystemExit(f"count_instructions: the {variant} child failed ({process.returncode}):\n{tail}")
                by_variant[variant] = per_iteration(json.loads(stdout), parts(out), variant)
        finally:
            for process, _ in children.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return {case: {variant: by_variant[variant][case] for variant in VARIANTS} for case in by_variant["unguarded"]}


def print_table(counts: Counts) -> None:
    print("Thousands of user-space instructions per iteration (callgrind; the kernel's work in syscalls not counted):")
    print(
        f"{'case':<11} {'unguarded':>9} {'floor':>8} {'selfguard':>9}"
        f" {'floor - unguarded':>17} {'selfguard - floor':>17} {'selfguard - unguarded':>21}"
    )
    for case, k in counts.items():
        print(
            f"{case:<11} {k['unguarded']:>9.2f} {k['floor']:>8.2f} {k['selfguard']:>9.2f}"
            f" {k['floor'] - k['unguarded']:>+17.2f} {k['selfguard'] - k['floor']:>+17.2f}"
            f" {k['selfguard'] - k['unguarded']:>+21.2f}"
        )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every case's N (default 1.0)")
    parser.add_argument("--case", action="append", choices=CASE_KEYS, help="count only this case (repeatable)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds in all (default {DEFAULT_TIMEOUT:g})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.timeout <= 0:
        parser.error("--scale and --timeout must be positive")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.case, args.scale)
        return
    started = time.monotonic()
    counts = count(args.case, args.scale, args.timeout)
    header: dict[str, Any] = {"python": sys.version.split()[0], "scale": args.scale}
    header["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        json.dump(dict(header, k_instructions_per_iteration=counts), sys.stdout, indent=1)
        print()
        return
    print(f"Python {header['python']}, --scale {args.scale:g}, counted in {header['seconds']:g} s\n")
    print_table(counts)


if __name__ == "__main__":
    main()
