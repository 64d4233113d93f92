"""Cost per connect of selfguard, beside no guard, a bare wrapt passthrough (the floor) and the syscalls a check needs.

Usage: python benchmarks/bench_connect.py [--rounds N] [--scale X] [--case NAME]... [--clock cpu|wall]
                                          [--instructions] [--json]

  --rounds N      interleaved rounds (default 31; CI runs 9)
  --scale X       multiply every case's iterations per slice (default 1.0)
  --case NAME     run only this case; repeat for several. Names: outside, inside,
                  refused, refused_ex, udp, bound, asyncio, uvloop
  --clock CLOCK   cpu (default): CPU time of this thread, user + system
                  (CLOCK_THREAD_CPUTIME_ID); wall: elapsed time (perf_counter)
  --instructions  after the timing, count each case's and variant's user-space
                  instructions per iteration under callgrind
                  (benchmarks/count_instructions.py; needs valgrind) and print
                  them beside the times
  --json          print the results as one JSON object instead of tables

Three variants run each case's loop (benchmarks/connect_cases.py):
  unguarded  nothing patched;
  floor      a bare wrapt FunctionWrapper passthrough (a wrapper that returns
             wrapped(*args, **kwargs)) on exactly the methods that selfguard
             patches *and* that this case's loop calls -- found out at start-up
             by counting calls, and printed per case. It is what any wrapt-based
             guard on those methods pays. It is built the way selfguard's
             wrappers are: where selfguard's wrapper function on a method is not
             a Python function (its C speedups are in use), the floor's is the C
             speedups.passthrough; elsewhere a Python function. The header says
             which;
  selfguard  selfguard.install() with its defaults.
Each round times the three on each case, finely interleaved: in 18 slices of
1 to 3 ms, each slice running the variants back to back in an order that
rotates.

The syscalls a check needs are timed in the same slices, on the same clock:
after the variants, each slice of a case calls each syscall that case's check
needs a few hundred times on a connected loopback TCP socket, and as often a
comparable call that makes no syscall; the difference per call is the
syscall's cost on this machine, now (it varies a lot between machines). With
selfguard's C speedups importable (selfguard._accel.speedups), the calls are
speedups.sockname_port(fd) and speedups.netns_cookie(fd), against abs(fd);
without, _socket.socket.getsockname(sock) (which builds the address tuple too,
as the guard does without speedups) and _socket.socket.getsockopt(sock,
SOL_SOCKET, SO_NETNS_COOKIE, 8), against _socket.socket.fileno(sock). The
header says which.

Per variant the figure is the median over rounds of the time per iteration,
in microseconds. The goals (issue 17), per case:
  outside, inside, refused, refused_ex, udp   selfguard <= floor + syscalls + 0.3 us
  bound                                       selfguard <= floor + syscalls + 0.5 us
  asyncio, uvloop                             selfguard <= unguarded + 4 us, + 2 us
where the syscalls are those the check needs: outside one SO_NETNS_COOKIE,
inside and bound one getsockname(), the others none. The table gives, per case:
unguarded, floor, selfguard; the limit (unguarded + the syscalls: no guard can
cost less); selfguard - base (the floor, or unguarded for the event loops);
allowed (syscalls + 0.3 or 0.5 above the floor; 4 or 2 above unguarded); the
spread of selfguard - base paired per round (Q1..Q3); the verdict, ok or
MISSED by how much, compared unrounded. The verdict also says whether the
paired per-round figures agree: a miss at the median that most rounds don't
show may be noise.

Why CPU time by default: every loop here runs on this one thread and never
waits (loopback connects complete inside the syscall; the asyncio and uvloop
servers run on the same event loop), so on an idle machine CPU time and wall
time agree within a few percent. On a shared machine wall time also counts the
milliseconds this process waits while others run, which lands on whichever
variant is running and swamps differences of a few percent; CPU time does not.
Both clocks are recorded; --json gives both per round. Instruction counts
(--instructions) don't depend on the machine's load at all, but leave out the
kernel's time in syscalls.

This is a benchmark, not a test: it exits 0 whatever the numbers, and fails
only when it cannot run. Figures from a busy machine are noisy; look at the
spread before believing a difference.
"""

from __future__ import annotations

import _socket
import argparse
import asyncio
import asyncio.selector_events
import functools
import gc
import json
import os
import socket
import statistics
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import wrapt
from connect_cases import CASE_KEYS, SYSCALLS, Case, Loop, build_cases

import selfguard
from selfguard._kernel import read_ephemeral_range

VARIANTS = ("unguarded", "floor", "selfguard")
Method = tuple[Any, str]  # (class or module, attribute name)
Wrapper = Callable[[Callable[..., Any], Any, Any, Any], Any]  # wrapt's (wrapped, instance, args, kwargs)


# ---------------------------------------------------------------- selfguard's C speedups


def load_speedups() -> tuple[Any, str]:
    """selfguard's C accelerator module, or None; and what was found, for the header.

    Being written beside this benchmark: until it is merged (and where it is
    not built, or is turned off), the import fails or gives None, and the
    benchmark falls back to what Python alone offers.
    """
    try:
        from selfguard._accel import speedups  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        return None, f"not importable ({exc})"
    if speedups is None:
        return None, "not in use (selfguard._accel.speedups is None)"
    return speedups, f"{getattr(speedups, '__name__', 'speedups')} in use"


SPEEDUPS, SPEEDUPS_STATUS = load_speedups()


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


def patch(wrappers: dict[Method, Wrapper]) -> Callable[[], None]:
    """Put a wrapt FunctionWrapper with its wrapper on each method; returns what takes them off exactly."""
    before = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in wrappers]
    for (owner, name), wrapper in wrappers.items():
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


def is_python_function(wrapper: Any) -> bool:
    """Whether *wrapper* (the function inside a wrapt FunctionWrapper) runs as Python bytecode."""
    return isinstance(wrapper, (types.FunctionType, types.MethodType))


def floor_wrapper(selfguards: Any) -> tuple[Wrapper, str]:
    """The floor's wrapper for a method on which selfguard's wrapper function is *selfguards*; and its name.

    Built the same way: a C passthrough where selfguard's wrapper is C (calling
    a C wrapper from wrapt's C FunctionWrapper skips a Python frame; a Python
    floor would then charge selfguard less than it costs), a Python one
    otherwise.
    """
    if selfguards is None or is_python_function(selfguards):
        return passthrough, "Python passthrough"
    c_passthrough = getattr(SPEEDUPS, "passthrough", None)
    if c_passthrough is None:
        # selfguard's wrapper is C, yet no C passthrough to match it: say so rather than guess.
        return passthrough, "Python passthrough (selfguard's wrapper is C, but speedups.passthrough is missing)"
    return c_passthrough, "C speedups.passthrough"


def methods_selfguard_patches(owners: list[Any]) -> dict[Method, Any]:
    """What selfguard.install() replaces on *owners*, found by comparing before and after (public API only).

    Each method maps to selfguard's wrapper function on it (wrapt's
    _self_wrapper), or None where what went on is not a FunctionWrapper.
    """
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
    return {
        (owner, name): getattr(value, "_self_wrapper", None)
        for owner, old, new in zip(owners, before, after)
        for name, value in new.items()
        if old.get(name, _ABSENT) is not value
    }


def calls_per_iteration(run: Loop, patched: list[Method], n: int = 20) -> dict[Method, float]:
    """Which of the *patched* methods *run* calls, and how often per iteration (wrapped with counters)."""
    counts: Counter[Method] = Counter()

    def counter(method: Method) -> Wrapper:
        def count(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            counts[method] += 1
            return wrapped(*args, **kwargs)

        return count

    unpatches = [patch({method: counter(method)}) for method in patched]
    try:
        run(n)
    finally:
        for unpatch in reversed(unpatches):
            unpatch()
    return {method: counts[method] / n for method in patched if counts[method]}


# ---------------------------------------------------------------- the syscalls


BASELINE = "baseline"  # the no-syscall call each syscall's calls are compared with
PROBE_CALLS = 300  # per slice and call: about 0.1-0.4 ms each


class Probe:
    """A connected loopback TCP socket, and the calls that time the syscalls of a check on it.

    Each call is a zero-argument functools.partial of a C function, so the
    syscall's call and the baseline's differ only in what the C function does.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.sock = socket.socket()
        self.sock.connect(self.listener.getsockname())  # selfguard is not installed yet: a plain connect
        self.peer, _ = self.listener.accept()
        fd = self.sock.fileno()
        sockname_port = getattr(SPEEDUPS, "sockname_port", None)
        netns_cookie = getattr(SPEEDUPS, "netns_cookie", None)
        self.calls: dict[str, Callable[[], Any]]
        if sockname_port is not None and netns_cookie is not None:
            self.how = "speedups.sockname_port(fd), speedups.netns_cookie(fd), each minus abs(fd)"
            self.calls = {
                BASELINE: functools.partial(abs, fd),
                "getsockname": functools.partial(sockname_port, fd),
                "netns_cookie": functools.partial(netns_cookie, fd),
            }
        else:
            self.how = (
                "_socket.socket.getsockname(sock), _socket.socket.getsockopt(sock, 1, 71, 8), "
                "each minus _socket.socket.fileno(sock) (no C speedups)"
            )
            self.calls = {
                BASELINE: functools.partial(_socket.socket.fileno, self.sock),
                "getsockname": functools.partial(_socket.socket.getsockname, self.sock),
                "netns_cookie": functools.partial(_socket.socket.getsockopt, self.sock, socket.SOL_SOCKET, 71, 8),
            }
        self.missing: dict[str, str] = {}  # syscall -> why it costs nothing here
        try:
            self.calls["netns_cookie"]()
        except OSError as exc:
            # A kernel before 6.1 has no SO_NETNS_COOKIE: the guard can't ask either, so nothing to allow.
            self.missing["netns_cookie"] = f"SO_NETNS_COOKIE unsupported ({exc}): counted as 0"
            self.calls["netns_cookie"] = self.calls[BASELINE]

    def time(self, name: str, n: int) -> tuple[int, int]:
        """(CPU, wall) nanoseconds that *n* calls of *name* took."""
        call = self.calls[name]
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        for _ in range(n):
            call()
        return time.thread_time_ns() - cpu, time.perf_counter_ns() - wall

    def close(self) -> None:
        for s in (self.peer, self.sock, self.listener):
            s.close()


# ---------------------------------------------------------------- measuring


CLOCKS = ("cpu", "wall")


@dataclass
class Bench:
    case: Case
    floor: dict[Method, Wrapper]  # what the floor variant wraps for this case, and with what
    floor_kind: dict[Method, str]  # which passthrough, for the report
    calls: dict[Method, float]  # patched methods the loop calls, per iteration
    iterations: int  # per slice
    # clock -> variant -> microseconds per iteration, one figure per round
    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {clock: {v: [] for v in VARIANTS} for clock in CLOCKS}
    )
    # clock -> syscall -> microseconds per call (baseline subtracted), one figure per round
    syscalls: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {clock: {} for clock in CLOCKS})


def variant_on(variant: str, bench: Bench) -> Callable[[], None]:
    """Put *variant* in place for *bench*; returns what takes it off."""
    if variant == "floor":
        return patch(bench.floor)
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


def measure(benches: list[Bench], rounds: int, probe: Probe) -> None:
    for bench in benches:  # warm-up, not recorded: caches, the allocator, wrapt's first bindings
        for variant in VARIANTS:
            time_slice(variant, bench)
        for name in (BASELINE, *bench.case.needs) if bench.case.needs else ():
            probe.time(name, PROBE_CALLS)
    for round_number in range(rounds):
        for bench in benches:
            # A full collection now, not inside a slice; the young-generation
            # collections the loop's own allocations trigger stay in the timing.
            gc.collect()
            probes = (BASELINE, *bench.case.needs) if bench.case.needs else ()
            spent = {clock: dict.fromkeys((*VARIANTS, *probes), 0) for clock in CLOCKS}
            for slice_number in range(SLICES):
                # Rotate who goes first: the first after a switch meets colder caches.
                shift = (round_number + slice_number) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    for clock, taken in zip(CLOCKS, time_slice(variant, bench)):
                        spent[clock][variant] += taken
                # The syscalls, in the same slice: the same moment's machine, the same clock.
                turn = slice_number % len(probes) if probes else 0
                for name in probes[turn:] + probes[:turn]:
                    for clock, taken in zip(CLOCKS, probe.time(name, PROBE_CALLS)):
                        spent[clock][name] += taken
            for clock in CLOCKS:
                for variant in VARIANTS:
                    bench.times[clock][variant].append(spent[clock][variant] / (SLICES * bench.iterations) / 1000)
                for name in bench.case.needs:
                    per_call = (spent[clock][name] - spent[clock][BASELINE]) / (SLICES * PROBE_CALLS) / 1000
                    bench.syscalls[clock].setdefault(name, []).append(per_call)


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    micros: dict[str, float]  # variant -> median over rounds, us per iteration
    syscall_us: dict[str, float]  # syscall the check needs -> median over rounds, us per call
    syscalls: float  # their sum: what the check can't do without
    limit: float  # unguarded + syscalls: no guard can cost less
    base: str  # "floor" or "unguarded": what the goal is measured from
    over: float  # selfguard - base, medians
    allowed: float  # the goal for `over`
    paired: list[float]  # per round: selfguard - base, the same round's
    excess: list[float]  # per round: selfguard - base - that round's allowance (> 0: over the goal)
    missed: bool


def figures(bench: Bench, clock: str) -> Figures:
    case, t = bench.case, bench.times[clock]
    micros = {v: statistics.median(t[v]) for v in VARIANTS}
    per_round = bench.syscalls[clock]
    syscall_us = {name: statistics.median(per_round[name]) for name in case.needs}
    syscalls = sum(syscall_us.values())
    rounds = len(t["unguarded"])
    syscalls_by_round = [sum(per_round[name][r] for name in case.needs) for r in range(rounds)]
    on_top = case.base == "floor"  # above the floor, the syscalls are allowed on top of the margin
    paired = [s - b for s, b in zip(t["selfguard"], t[case.base])]
    excess = [p - case.margin - (sys_r if on_top else 0.0) for p, sys_r in zip(paired, syscalls_by_round)]
    over = micros["selfguard"] - micros[case.base]
    allowed = case.margin + (syscalls if on_top else 0.0)
    # Compared unrounded: a miss by 0.0004 us is a miss, even where it prints as the goal.
    return Figures(
        micros,
        syscall_us,
        syscalls,
        micros["unguarded"] + syscalls,
        case.base,
        over,
        allowed,
        paired,
        excess,
        over > allowed,
    )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def signed(value: float) -> str:
    """+0.123, but never +0.000 for a value above 0 (nor -0.000 below): a miss must not print as a hit."""
    text = f"{value:+.3f}"
    if value != 0 and float(text) == 0:
        text = f"{value:+.1e}"
    return text


def verdict(f: Figures) -> str:
    """ok or MISSED, by how much, and how firmly: the paired per-round figures say whether noise could explain it."""
    q1, median, q3 = quartiles(f.excess)
    if not f.missed:
        if median > 0:  # the medians of the variants agree less than the rounds do
            return f"ok by the medians, but MISSED by the paired median ({signed(median)} us)"
        return "ok" if q3 <= 0 else f"ok, but over at paired Q3 by {signed(q3)} us"
    firmly = (
        "over even at paired Q1"
        if q1 > 0
        else f"paired median {signed(median)} us" + (" over" if median > 0 else ", within: maybe noise")
    )
    return f"MISSED by {signed(f.over - f.allowed)} us ({firmly})"


# ---------------------------------------------------------------- reporting


def describe_floor(bench: Bench) -> str:
    if not bench.floor:
        return "nothing: selfguard patches nothing this loop calls, so its row times identical code (noise gauge)"
    return ", ".join(f"{method_name(m)} ({bench.calls[m]:g}/iteration, {bench.floor_kind[m]})" for m in bench.floor)


def describe_needs(case: Case) -> str:
    if not case.needs:
        return "no syscall"
    return ", ".join({"getsockname": "one getsockname()", "netns_cookie": "one SO_NETNS_COOKIE"}[n] for n in case.needs)


def describe_goal(case: Case) -> str:
    if case.base == "floor":
        return f"selfguard <= floor + syscalls + {case.margin:g} us"
    return f"selfguard <= unguarded + {case.margin:g} us"


Counts = dict[str, dict[str, float]]  # case -> variant -> thousands of instructions per iteration


def print_syscalls(benches: list[Bench], clock: str, probe: Probe) -> None:
    """The syscalls' cost over all cases' probes: what each case's limit and allowance add."""
    if not any(bench.case.needs for bench in benches):
        print("Syscalls: the checks of these cases need none, so none were timed.")
        return
    print(f"Syscalls a check needs, measured in each slice as {probe.how}:")
    for name in SYSCALLS:
        values = [v for bench in benches for v in bench.syscalls[clock].get(name, [])]
        if not values:
            continue
        q1, median, q3 = quartiles(values)
        note = f"; {probe.missing[name]}" if name in probe.missing else ""
        print(f"  {name:<12} {median:.3f} us per call (per-round Q1..Q3 {q1:.3f}..{q3:.3f}){note}")


def print_tables(benches: list[Bench], rounds: int, clock: str, counts: Optional[Counts]) -> None:
    print("Cases, what the floor wraps in each (the methods selfguard patches that the loop calls), and the goals:")
    for bench in benches:
        print(f"  {bench.case.key:<11} {bench.case.title}, {bench.iterations} iterations per slice")
        print(f"  {'':<11} floor wraps: {describe_floor(bench)}")
        print(f"  {'':<11} the check needs {describe_needs(bench.case)}; goal: {describe_goal(bench.case)}")
    what = "CPU time of this thread" if clock == "cpu" else "wall-clock time"
    print(
        f"\nMedians over {rounds} rounds, microseconds of {what} per iteration. limit = unguarded + syscalls;"
        "\nselfguard - base (the floor, or unguarded for the event loops) against what the goal allows;"
        "\nspread = selfguard - base paired per round, Q1..Q3:"
    )
    header = (
        f"{'case':<11} {'unguarded':>9} {'floor':>8} {'selfguard':>9} {'limit':>8} {'selfguard - base':>21}"
        f" {'allowed':>16} {'spread Q1..Q3':>17}"
    )
    if counts is not None:
        header += f"  {'k instr: unguarded':>18} {'floor':>7} {'selfguard':>9} {'- base':>7}"
    print(header + "  verdict")
    for bench in benches:
        f = figures(bench, clock)
        q1, _, q3 = quartiles(f.paired)
        how_allowed = f"{f.syscalls:.3f}+{bench.case.margin:g}" if f.base == "floor" else "vs unguarded"
        line = (
            f"{bench.case.key:<11} {f.micros['unguarded']:>9.2f} {f.micros['floor']:>8.2f}"
            f" {f.micros['selfguard']:>9.2f} {f.limit:>8.2f} {signed(f.over):>8} {f.base:<12}"
            f" {f.allowed:>5.3f} {'(' + how_allowed + ')':<10} {signed(q1):>8}..{signed(q3):<7}"
        )
        if counts is not None:
            k = counts.get(bench.case.key)
            if k:
                line += (
                    f"  {k['unguarded']:>18.2f} {k['floor']:>7.2f} {k['selfguard']:>9.2f}"
                    f" {k['selfguard'] - k[f.base]:>+7.2f}"
                )
            else:
                line += f"  {'not counted':>45}"
        print(f"{line}  {verdict(f)}")


def as_json(benches: list[Bench], clock: str, counts: Optional[Counts]) -> list[dict[str, Any]]:
    results = []
    for bench in benches:
        f = figures(bench, clock)
        q1, median, q3 = quartiles(f.paired)
        e1, emedian, e3 = quartiles(f.excess)
        results.append(
            {
                "case": bench.case.key,
                "title": bench.case.title,
                "floor_wraps": {method_name(m): bench.floor_kind[m] for m in bench.floor},
                "calls_per_iteration": {method_name(m): c for m, c in bench.calls.items()},
                "iterations_per_slice": bench.iterations,
                "slices_per_round": SLICES,
                "median_us": f.micros,
                "needs": list(bench.case.needs),
                "syscall_us": f.syscall_us,
                "syscalls_us": f.syscalls,
                "limit_us": f.limit,
                "base": f.base,
                "margin_us": bench.case.margin,
                "over_base_us": f.over,
                "allowed_us": f.allowed,
                "over_base_paired_us": {"q1": q1, "median": median, "q3": q3},
                "over_allowed_paired_us": {"q1": e1, "median": emedian, "q3": e3},
                "missed": f.missed,
                "verdict": verdict(f),
                "k_instructions_per_iteration": None if counts is None else counts.get(bench.case.key),
                "us_per_round": bench.times,  # both clocks
                "syscall_us_per_round": bench.syscalls,  # both clocks
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
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="after the timing, count instructions per iteration under callgrind (needs valgrind)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.scale <= 0:
        parser.error("--rounds must be at least 2 and --scale positive")
    return args


def prepare(only: Optional[list[str]], scale: float) -> tuple[list[Bench], dict[Method, Any], list[str]]:
    """The benches of the cases *only* (all if None), what selfguard patches, and notes on skipped cases."""
    low, high = read_ephemeral_range()
    cases, notes = build_cases(low, high)
    patched = methods_selfguard_patches(_owners())
    benches = []
    for case in cases:
        if only and case.key not in only:
            continue
        calls = calls_per_iteration(case.run, list(patched))
        floor, kind = {}, {}
        for method in patched:
            if method in calls:
                floor[method], kind[method] = floor_wrapper(patched[method])
        iterations = max(1, round(case.iterations * scale))
        benches.append(Bench(case, floor, kind, calls, iterations))
    if not benches:
        raise SystemExit(f"nothing to run: {'; '.join(notes)}")
    return benches, patched, notes


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    low, high = read_ephemeral_range()
    benches, patched, notes = prepare(args.case, args.scale)
    probe = Probe()

    selfguard.reset_stats()
    load_before = os.getloadavg()[0]  # other processes' demand for the CPUs: how far to trust the figures
    started = time.monotonic()
    measure(benches, args.rounds, probe)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]
    stats = selfguard.stats()
    probe.close()
    counts: Optional[Counts] = None
    failed: Optional[SystemExit] = None
    if args.instructions:
        # After the timing, never beside it: valgrind's children would take the CPU the timing needs.
        import count_instructions

        try:
            counts = count_instructions.count([bench.case.key for bench in benches], args.scale)
        except SystemExit as exc:
            failed = exc  # the times are printed all the same; the failure ends the run
    wrappers = {
        "C" if w is not None and not is_python_function(w) else "Python" for w in patched.values() if w is not None
    }
    header = {
        "python": sys.version.split()[0],
        "wrapt": wrapt.__version__,
        "selfguard": selfguard.__version__,
        "speedups": SPEEDUPS_STATUS,
        "selfguard_wrappers": sorted(wrappers),
        "syscall_probe": probe.how,
        "syscall_probe_notes": list(probe.missing.values()),
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
        json.dump(dict(header, cases=as_json(benches, args.clock, counts)), sys.stdout, indent=1)
        print()
        if failed is not None:
            raise failed
        return
    floors = sorted({kind for bench in benches for kind in bench.floor_kind.values()})
    print(
        f"Python {header['python']}, wrapt {header['wrapt']}, selfguard {header['selfguard']}, ephemeral range "
        f"{low}-{high}, {args.rounds} rounds in {elapsed:.0f} s\n{os.cpu_count()} CPUs, 1-minute load average "
        f"{load_before:.2f} before and {load_after:.2f} after (other processes compete with the benchmark)\n"
        "selfguard.install() patches: " + ", ".join(header["selfguard_patches"]) + "\n"
        f"selfguard's C speedups: {SPEEDUPS_STATUS}; selfguard's wrapper functions: {' and '.join(sorted(wrappers))};"
        f" the floor's: {' and '.join(floors) or 'none'}"
    )
    for note in notes:
        print(note)
    print()
    print_tables(benches, args.rounds, args.clock, counts)
    print()
    print_syscalls(benches, args.clock, probe)
    if counts is not None:
        print(
            "Instructions: user-space only (a syscall's kernel time is not in them), thousands per iteration;"
            " see count_instructions.py."
        )
    print(f"\nselfguard checked {stats['checked']} connects and saw {stats['self_connects']} self-connects.")
    if failed is not None:
        raise failed


if __name__ == "__main__":
    main()
