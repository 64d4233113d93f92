"""Cost per connect of selfguard, side by side with no guard and with a bare wrapt passthrough (the floor).

Usage: python benchmarks/bench_connect.py [--rounds N] [--scale X] [--case NAME]... [--json]

  --rounds N   interleaved rounds (default 31; CI runs 9)
  --scale X    multiply every case's iterations per timed block (default 1.0)
  --case NAME  run only this case; repeat for several. Names: outside, inside,
               refused, refused_ex, udp, bound, asyncio, uvloop
  --json       print the results as one JSON object instead of tables

Three variants run each case's loop (benchmarks/connect_cases.py):
  unguarded  nothing patched;
  floor      a bare wrapt FunctionWrapper passthrough (a wrapper that returns
             wrapped(*args, **kwargs)) on exactly the methods that selfguard
             patches *and* that this case's loop calls -- found out at start-up
             by counting calls, and printed per case. It is what any wrapt-based
             guard on those methods pays;
  selfguard  selfguard.install() with its defaults.
Each round times the three back to back on each case, in an order that rotates
every round. Per variant the figure is the median over rounds of the time per
iteration; ratios are to the unguarded median, "above floor" is selfguard's
ratio minus the floor's (and the same in microseconds), and the spread is that
of the per-round paired difference (selfguard - floor) / unguarded. A figure
above its case's target is marked MISSED.

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
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
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


@dataclass
class Bench:
    case: Case
    floor: list[Method]  # what the floor variant wraps for this case
    calls: dict[Method, float]  # patched methods the loop calls, per iteration
    iterations: int
    times: dict[str, list[float]]  # variant -> microseconds per iteration, one per round


def variant_on(variant: str, bench: Bench) -> Callable[[], None]:
    """Put *variant* in place for *bench*; returns what takes it off."""
    if variant == "floor":
        return patch(bench.floor, passthrough)
    if variant == "selfguard":
        selfguard.install()
        return selfguard.uninstall
    return lambda: None


def time_block(variant: str, bench: Bench) -> float:
    """One timed block: *bench*'s loop, *iterations* times, under *variant*; microseconds per iteration."""
    off = variant_on(variant, bench)
    try:
        gc.collect()  # every block starts from the same heap; collections during it are part of the cost
        started = time.perf_counter_ns()
        bench.case.run(bench.iterations)
        return (time.perf_counter_ns() - started) / bench.iterations / 1000
    finally:
        off()


def measure(benches: list[Bench], rounds: int) -> None:
    for bench in benches:  # warm-up, not recorded: caches, the allocator, wrapt's first bindings
        for variant in VARIANTS:
            time_block(variant, Bench(bench.case, bench.floor, {}, max(1, bench.iterations // 5), {}))
    for round_number in range(rounds):
        # Whichever variant runs first after a case switch meets colder caches:
        # rotating the order every round spreads that over all three.
        shift = round_number % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for bench in benches:
            for variant in order:
                bench.times[variant].append(time_block(variant, bench))


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    micros: dict[str, float]  # variant -> median over rounds, us per iteration
    ratio: dict[str, float]  # variant -> median / unguarded median
    above: float  # selfguard ratio - floor ratio
    above_us: float  # selfguard us - floor us
    paired: list[float]  # per round: (selfguard - floor) / unguarded
    missed: bool


def figures(bench: Bench) -> Figures:
    micros = {v: statistics.median(bench.times[v]) for v in VARIANTS}
    ratio = {v: micros[v] / micros["unguarded"] for v in VARIANTS}
    above = ratio["selfguard"] - ratio["floor"]
    t = bench.times
    paired = [(s - f) / u for u, f, s in zip(t["unguarded"], t["floor"], t["selfguard"])]
    # Compared unrounded: a miss by 0.0004 is a miss, even where it prints as the target.
    return Figures(micros, ratio, above, micros["selfguard"] - micros["floor"], paired, above > bench.case.target)


def quartiles(values: list[float]) -> tuple[float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


# ---------------------------------------------------------------- reporting


def describe_floor(bench: Bench) -> str:
    if not bench.floor:
        return "nothing (selfguard patches nothing this loop calls)"
    return ", ".join(f"{method_name(m)} ({bench.calls[m]:g}/iteration)" for m in bench.floor)


def print_tables(benches: list[Bench], rounds: int) -> None:
    print("Cases, and what the floor wraps in each (the methods selfguard patches that the loop calls):")
    for bench in benches:
        print(f"  {bench.case.key:<11} {bench.case.title}, {bench.iterations} iterations per block")
        print(f"  {'':<11} floor wraps: {describe_floor(bench)}")
    print(f"\nMedians over {rounds} rounds, microseconds per iteration (ratio to unguarded):")
    print(
        f"{'case':<11} {'unguarded':>9} {'floor':>16} {'selfguard':>16} {'above floor':>19}"
        f" {'IQR of above':>16} {'min..max':>16} {'target':>7}  verdict"
    )
    for bench in benches:
        f = figures(bench)
        q1, q3 = quartiles(f.paired)
        verdict = "ok"
        if f.missed:
            miss = f.above - bench.case.target
            verdict = f"MISSED by {miss:+.4f} ({miss * f.micros['unguarded']:+.2f} us)"
        print(
            f"{bench.case.key:<11} {f.micros['unguarded']:>6.2f} us"
            f" {f.micros['floor']:>6.2f} us {f.ratio['floor']:.3f}x"
            f" {f.micros['selfguard']:>6.2f} us {f.ratio['selfguard']:.3f}x"
            f" {f.above:>+7.3f} ({f.above_us:+.2f} us)"
            f" {q1:>+7.3f}..{q3:+.3f} {min(f.paired):>+7.3f}..{max(f.paired):+.3f}"
            f" {bench.case.target:>+7.3f}  {verdict}"
        )


def as_json(benches: list[Bench]) -> list[dict[str, Any]]:
    results = []
    for bench in benches:
        f = figures(bench)
        q1, q3 = quartiles(f.paired)
        results.append(
            {
                "case": bench.case.key,
                "title": bench.case.title,
                "floor_wraps": [method_name(m) for m in bench.floor],
                "calls_per_iteration": {method_name(m): c for m, c in bench.calls.items()},
                "iterations_per_block": bench.iterations,
                "median_us": f.micros,
                "ratio": f.ratio,
                "above_floor": f.above,
                "above_floor_us": f.above_us,
                "above_floor_paired": {"q1": q1, "median": statistics.median(f.paired), "q3": q3},
                "above_floor_min_max": [min(f.paired), max(f.paired)],
                "target": bench.case.target,
                "missed": f.missed,
                "us_per_round": bench.times,
            }
        )
    return results


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="See the module docstring for what each figure means."
    )
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds (default 31; at least 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iterations per timed block (default 1.0)")
    parser.add_argument("--case", action="append", choices=CASE_KEYS, help="run only this case (repeatable)")
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
        benches.append(Bench(case, floor, calls, iterations, {v: [] for v in VARIANTS}))
    if not benches:
        raise SystemExit(f"nothing to run: {'; '.join(notes)}")

    selfguard.reset_stats()
    started = time.monotonic()
    measure(benches, args.rounds)
    elapsed = time.monotonic() - started
    stats = selfguard.stats()
    header = {
        "python": sys.version.split()[0],
        "wrapt": wrapt.__version__,
        "selfguard": selfguard.__version__,
        "ephemeral_range": [low, high],
        "rounds": args.rounds,
        "scale": args.scale,
        "seconds": round(elapsed, 1),
        "selfguard_patches": [method_name(m) for m in patched],
        "selfguard_stats": stats,
        "notes": notes,
    }
    if args.json:
        json.dump(dict(header, cases=as_json(benches)), sys.stdout, indent=1)
        print()
        return
    print(
        f"Python {header['python']}, wrapt {header['wrapt']}, selfguard {header['selfguard']}, ephemeral range "
        f"{low}-{high}, {args.rounds} rounds in {elapsed:.0f} s\nselfguard.install() patches: "
        + ", ".join(header["selfguard_patches"])
    )
    for note in notes:
        print(note)
    print()
    print_tables(benches, args.rounds)
    print(f"\nselfguard checked {stats['checked']} connects and saw {stats['self_connects']} self-connects.")


if __name__ == "__main__":
    main()
