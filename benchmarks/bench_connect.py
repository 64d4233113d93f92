"""Cost per connect of selfguard, side by side with no guard and with a bare wrapt passthrough (the floor).

Usage: python benchmarks/bench_connect.py [--rounds N] [--scale X] [--case NAME]... [--clock cpu|wall] [--json]

  --rounds N     interleaved rounds (default 31; CI runs 9)
  --scale X      multiply every case's iterations per slice (default 1.0)
  --case NAME    run only this case; repeat for several. Names: outside, inside,
                 refused, refused_ex, udp, bound, asyncio, uvloop
  --clock CLOCK  cpu (default): CPU time of this thread, user + system
                 (CLOCK_THREAD_CPUTIME_ID); wall: elapsed time (perf_counter)
  --json         print the results as one JSON object instead of tables

Three variants run each case's loop (benchmarks/connect_cases.py):
  unguarded  nothing patched;
  floor      a bare wrapt FunctionWrapper passthrough (a wrapper that returns
             wrapped(*args, **kwargs)) on exactly the methods that selfguard
             patches *and* that this case's loop calls -- found out at start-up
             by counting calls, and printed per case. It is what any wrapt-based
             guard on those methods pays;
  selfguard  selfguard.install() with its defaults.
Each round times the three on each case, finely interleaved: in 18 slices of
1 to 3 ms, each slice running the variants back to back in an order that
rotates. Per variant the figure is the median over rounds of the time per
iteration; ratios are to the unguarded median, "above floor" is selfguard's
ratio minus the floor's (and the same in microseconds), and the spread is that
of the per-round paired difference (selfguard - floor) / unguarded. A figure
above its case's target is marked MISSED.

Why CPU time by default: every loop here runs on this one thread and never
waits (loopback connects complete inside the syscall; the asyncio and uvloop
servers run on the same event loop), so on an idle machine CPU time and wall
time agree within a few percent. On a shared machine wall time also counts the
milliseconds this process waits while others run, which lands on whichever
variant is running and swamps differences of a few percent; CPU time does not.
Both clocks are recorded; --json gives both per round.

This is a benchmark, not a test: it exits 0 whatever the numbers, and fails
only when it cannot run. Figures from a busy machine are noisy; look at the
spread before believing a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.selector_events
import gc
import json
import os
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import wrapt
from connect_cases import CASE_KEYS, Case, Loop, build_cases

import selfguard
from selfguard._kernel import read_ephemeral_range

VARIANTS = ("unguarded", "floor", "selfguard")
Method = tuple[Any, str]  # (class or module, attribute name)


# ---------------------------------------------------------------- patching


def _owners() -> list[Any]:
    """Where selfguard's patches are looked for: the socket class and the event-loop classes, uvloop's too."""
    owners: list[Any] = [
        socket.socket,
        socket,
        asyncio.selector_events.BaseSelectorEventLoop,
        asyncio.base_events.BaseEventLoop,
        asyncio.SelectorEventLoop,  # _UnixSelectorEventLoop on Linux
        asyncio.streams,
    ]
    try:
        import uvloop

        owners.append(uvloop.Loop)
    except ImportError:
        pass
    return owners


def method_name(method: Method) -> str:
    owner, name = method
    prefix = owner.__name__ if isinstance(owner, type(socket)) else f"{owner.__module__}.{owner.__qualname__}"
    return f"{prefix}.{name}"


_ABSENT: Any = object()


def patch(methods: list[Method], wrapper: Callable[..., Any]) -> Callable[[], None]:
    """Put a wrapt FunctionWrapper with *wrapper* on each method; returns what takes them off exactly."""
    before = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in methods]
    for owner, name in methods:
        wrapt.wrap_function_wrapper(owner, name, wrapper)

    def unpatch() -> None:
        for owner, name, original in reversed(before):
            if original is _ABSENT:
                delattr(owner, name)  # inherited (socket.socket.connect): the original itself comes back
            else:
                setattr(owner, name, original)

    return unpatch


def passthrough(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    # On an async method (sock_connect) this hands back the coroutine unawaited:
    # the cheapest wrapper there is. A guard must await it to look at the result;
    # that extra coroutine (about 1.2k instructions per connect, by callgrind)
    # is counted as the guard's own cost, not the floor's.
    return wrapped(*args, **kwargs)


def methods_selfguard_patches(owners: list[Any]) -> list[Method]:
    """What selfguard.install() replaces on *owners*, found by comparing before and after (public API only)."""
    before = [dict(vars(owner)) for owner in owners]
    if not selfguard.install():
        raise SystemExit("selfguard.install() returned False (SELFGUARD is off in the environment?)")
    try:
        after = [dict(vars(owner)) for owner in owners]
    finally:
        selfguard.uninstall()
    for owner, old in zip(owners, before):
        if dict(vars(owner)) != old:
            raise SystemExit(f"selfguard.uninstall() did not restore {owner!r}: the variants would not be comparable")
    return [
        (owner, name)
        for owner, old, new in zip(owners, before, after)
        for name, value in new.items()
        if old.get(name, _ABSENT) is not value
    ]


def calls_per_iteration(run: Loop, patched: list[Method], n: int = 20) -> dict[Method, float]:
    """Which of the *patched* methods *run* calls, and how often per iteration (wrapped with counters)."""
    counts: Counter[Method] = Counter()

    def counter(method: Method) -> Callable[..., Any]:
        def count(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            counts[method] += 1
            return wrapped(*args, **kwargs)

        return count

    unpatches = [patch([method], counter(method)) for method in patched]
    try:
        run(n)
    finally:
        for unpatch in reversed(unpatches):
            unpatch()
    return {method: counts[method] / n for method in patched if counts[method]}


# ---------------------------------------------------------------- measuring


CLOCKS = ("cpu", "wall")


@dataclass
class Bench:
    case: Case
    floor: list[Method]  # what the floor variant wraps for this case
    calls: dict[Method, float]  # patched methods the loop calls, per iteration
    iterations: int  # per slice
    # clock -> variant -> microseconds per iteration, one figure per round
    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {clock: {v: [] for v in VARIANTS} for clock in CLOCKS}
    )


def variant_on(variant: str, bench: Bench) -> Callable[[], None]:
    """Put *variant* in place for *bench*; returns what takes it off."""
    if variant == "floor":
        return patch(bench.floor, passthrough)
    if variant == "selfguard":
        selfguard.install()
        return selfguard.uninstall
    return lambda: None


# Each round runs every case in SLICES slices; each slice runs the three
# variants back to back, a few milliseconds each. The machine's noise (other
# processes, a neighbour VM) drifts over tens of milliseconds: interleaved this
# finely, it hits all three variants of a round alike, and the round's figures
# stay comparable. (Measured on a busy 2-core VM, comparing the floor with
# itself: one 10 ms block per variant and round put the two anywhere within
# +-0.06 of the unguarded time; 6 slices of 2 ms, within +-0.03 (CPU time);
# 18 of 1 ms, within about +-0.03 still but with half the spread per round.)
SLICES = 18  # a multiple of len(VARIANTS), so each variant goes first equally often


def time_slice(variant: str, bench: Bench) -> tuple[int, int]:
    """Run *bench*'s loop *iterations* times under *variant*; (CPU, wall) nanoseconds taken."""
    off = variant_on(variant, bench)
    try:
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        bench.case.run(bench.iterations)
        return time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    finally:
        off()


def measure(benches: list[Bench], rounds: int) -> None:
    for bench in benches:  # warm-up, not recorded: caches, the allocator, wrapt's first bindings
        for variant in VARIANTS:
            time_slice(variant, bench)
    for round_number in range(rounds):
        for bench in benches:
            # A full collection now, not inside a slice; the young-generation
            # collections the loop's own allocations trigger stay in the timing.
            gc.collect()
            spent = {clock: dict.fromkeys(VARIANTS, 0) for clock in CLOCKS}
            for slice_number in range(SLICES):
                # Rotate who goes first: the first after a switch meets colder caches.
                shift = (round_number + slice_number) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    for clock, taken in zip(CLOCKS, time_slice(variant, bench)):
                        spent[clock][variant] += taken
            for clock in CLOCKS:
                for variant in VARIANTS:
                    bench.times[clock][variant].append(spent[clock][variant] / (SLICES * bench.iterations) / 1000)


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    micros: dict[str, float]  # variant -> median over rounds, us per iteration
    ratio: dict[str, float]  # variant -> median / unguarded median
    above: float  # selfguard ratio - floor ratio: the headline, which the target applies to
    above_us: float  # selfguard us - floor us
    paired: list[float]  # per round: (selfguard - floor) / unguarded, the same round's three
    missed: bool


def figures(bench: Bench, clock: str) -> Figures:
    t = bench.times[clock]
    micros = {v: statistics.median(t[v]) for v in VARIANTS}
    ratio = {v: micros[v] / micros["unguarded"] for v in VARIANTS}
    above = ratio["selfguard"] - ratio["floor"]
    paired = [(s - f) / u for u, f, s in zip(t["unguarded"], t["floor"], t["selfguard"])]
    # Compared unrounded: a miss by 0.0004 is a miss, even where it prints as the target.
    return Figures(micros, ratio, above, micros["selfguard"] - micros["floor"], paired, above > bench.case.target)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def verdict(f: Figures, target: float) -> str:
    """ok or MISSED, and how firmly: the paired per-round differences say whether noise could explain it."""
    q1, median, q3 = quartiles(f.paired)
    if not f.missed:
        return "ok" if q3 <= target else f"ok, but paired Q3 {q3:+.3f} is above the target"
    miss = f.above - target
    firmly = (
        "even at paired Q1"
        if q1 > target
        else f"paired median {median:+.3f}" + ("" if median > target else ", within target: maybe noise")
    )
    return f"MISSED by {miss:+.4f} ({miss * f.micros['unguarded']:+.3f} us; {firmly})"


# ---------------------------------------------------------------- reporting


def describe_floor(bench: Bench) -> str:
    if not bench.floor:
        return "nothing: selfguard patches nothing this loop calls, so its row times identical code (noise gauge)"
    return ", ".join(f"{method_name(m)} ({bench.calls[m]:g}/iteration)" for m in bench.floor)


def print_tables(benches: list[Bench], rounds: int, clock: str) -> None:
    print("Cases, and what the floor wraps in each (the methods selfguard patches that the loop calls):")
    for bench in benches:
        print(f"  {bench.case.key:<11} {bench.case.title}, {bench.iterations} iterations per slice")
        print(f"  {'':<11} floor wraps: {describe_floor(bench)}")
    what = "CPU time of this thread" if clock == "cpu" else "wall-clock time"
    print(
        f"\nMedians over {rounds} rounds, microseconds of {what} per iteration (ratio to unguarded);"
        "\nabove floor = selfguard - floor (ratio, us); paired = per-round (selfguard - floor) / unguarded:"
    )
    print(
        f"{'case':<11} {'unguarded':>9} {'floor':>16} {'selfguard':>16} {'above floor':>18}"
        f" {'paired Q1..median..Q3':>23} {'paired min..max':>16} {'target':>6}  verdict"
    )
    for bench in benches:
        f = figures(bench, clock)
        q1, median, q3 = quartiles(f.paired)
        print(
            f"{bench.case.key:<11} {f.micros['unguarded']:>6.2f} us"
            f" {f.micros['floor']:>6.2f} us {f.ratio['floor']:.3f}x"
            f" {f.micros['selfguard']:>6.2f} us {f.ratio['selfguard']:.3f}x"
            f" {f.above:>+6.3f} {f.above_us:>+6.2f} us"
            f" {q1:>+7.3f}..{median:+.3f}..{q3:+.3f} {min(f.paired):>+7.3f}..{max(f.paired):+.3f}"
            f" {bench.case.target:>+6.3f}  {verdict(f, bench.case.target)}"
        )


def as_json(benches: list[Bench], clock: str) -> list[dict[str, Any]]:
    results = []
    for bench in benches:
        f = figures(bench, clock)
        q1, median, q3 = quartiles(f.paired)
        results.append(
            {
                "case": bench.case.key,
                "title": bench.case.title,
                "floor_wraps": [method_name(m) for m in bench.floor],
                "calls_per_iteration": {method_name(m): c for m, c in bench.calls.items()},
                "iterations_per_slice": bench.iterations,
                "slices_per_round": SLICES,
                "median_us": f.micros,
                "ratio": f.ratio,
                "above_floor": f.above,
                "above_floor_us": f.above_us,
                "above_floor_paired": {"q1": q1, "median": median, "q3": q3},
                "above_floor_min_max": [min(f.paired), max(f.paired)],
                "target": bench.case.target,
                "missed": f.missed,
                "verdict": verdict(f, bench.case.target),
                "us_per_round": bench.times,  # both clocks
            }
        )
    return results


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="See the module docstring for what each figure means."
    )
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds (default 31; at least 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iterations per slice (default 1.0)")
    parser.add_argument("--case", action="append", choices=CASE_KEYS, help="run only this case (repeatable)")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu", help="cpu: this thread's CPU time (default); wall: elapsed time"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.scale <= 0:
        parser.error("--rounds must be at least 2 and --scale positive")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    low, high = read_ephemeral_range()
    cases, notes = build_cases(low, high)
    patched = methods_selfguard_patches(_owners())
    benches = []
    for case in cases:
        if args.case and case.key not in args.case:
            continue
        calls = calls_per_iteration(case.run, patched)
        floor = [m for m in patched if m in calls]
        iterations = max(1, round(case.iterations * args.scale))
        benches.append(Bench(case, floor, calls, iterations))
    if not benches:
        raise SystemExit(f"nothing to run: {'; '.join(notes)}")

    selfguard.reset_stats()
    load_before = os.getloadavg()[0]  # other processes' demand for the CPUs: how far to trust the figures
    started = time.monotonic()
    measure(benches, args.rounds)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]
    stats = selfguard.stats()
    header = {
        "python": sys.version.split()[0],
        "wrapt": wrapt.__version__,
        "selfguard": selfguard.__version__,
        "ephemeral_range": [low, high],
        "rounds": args.rounds,
        "scale": args.scale,
        "clock": args.clock,
        "seconds": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "load_average_1min": [load_before, load_after],
        "selfguard_patches": [method_name(m) for m in patched],
        "selfguard_stats": stats,
        "notes": notes,
    }
    if args.json:
        json.dump(dict(header, cases=as_json(benches, args.clock)), sys.stdout, indent=1)
        print()
        return
    print(
        f"Python {header['python']}, wrapt {header['wrapt']}, selfguard {header['selfguard']}, ephemeral range "
        f"{low}-{high}, {args.rounds} rounds in {elapsed:.0f} s\n{os.cpu_count()} CPUs, 1-minute load average "
        f"{load_before:.2f} before and {load_after:.2f} after (other processes compete with the benchmark)\n"
        "selfguard.install() patches: " + ", ".join(header["selfguard_patches"])
    )
    for note in notes:
        print(note)
    print()
    print_tables(benches, args.rounds, args.clock)
    print(f"\nselfguard checked {stats['checked']} connects and saw {stats['self_connects']} self-connects.")


if __name__ == "__main__":
    main()
