"""Side-by-side cost of selfguard: unguarded vs a bare wrapt passthrough (the floor) vs selfguard.

Run: python benchmarks/bench_connect.py [--rounds N] [--iterations N]

Each round times every variant on every case back to back, so machine noise
hits all of them alike; the table shows the median over rounds of each
variant's time relative to the unguarded time of the same round. This is a
benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.selector_events
import socket
import statistics
import struct
import sys
import time
from typing import Any, Callable

import wrapt

import selfguard
from selfguard._kernel import read_ephemeral_range
from selfguard.testing import free_port

LINGER_RST = struct.pack("ii", 1, 0)


def _listener(port: int) -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    return srv


def cycle_case(srv: socket.socket) -> Callable[[int], None]:
    """connect + accept + close, the client closing with RST so no TIME_WAIT piles up."""
    address = srv.getsockname()

    def run(n: int) -> None:
        for _ in range(n):
            c = socket.socket()
            c.connect(address)
            a, _ = srv.accept()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.close()
            a.close()

    return run


def refused_case(port: int) -> Callable[[int], None]:
    address = ("127.0.0.1", port)

    def run(n: int) -> None:
        for _ in range(n):
            c = socket.socket()
            try:
                c.connect(address)
            except ConnectionRefusedError:
                pass
            c.close()

    return run


def udp_case(port: int) -> Callable[[int], None]:
    address = ("127.0.0.1", port)

    def run(n: int) -> None:
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.connect(address)
            c.close()

    return run


def asyncio_case(loop: asyncio.AbstractEventLoop, port: int) -> Callable[[int], None]:
    """asyncio.open_connection + close, the client closing with RST (no TIME_WAIT pile-up)."""

    async def cycles(n: int) -> None:
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            writer.transport.abort()

    def run(n: int) -> None:
        loop.run_until_complete(cycles(n))

    return run


def _passthrough(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


async def _async_passthrough(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    return await wrapped(*args, **kwargs)


# The floor wraps what selfguard wraps, each with a bare passthrough.
PATCHED = ("connect", "connect_ex", "getsockopt", "bind")
_LOOP_CLASS = asyncio.selector_events.BaseSelectorEventLoop
_SOCK_CONNECT = vars(_LOOP_CLASS)["sock_connect"]


def _floor_on() -> None:
    for name in PATCHED:
        wrapt.wrap_function_wrapper(socket.socket, name, _passthrough)
    wrapt.wrap_function_wrapper(_LOOP_CLASS, "sock_connect", _async_passthrough)


def _floor_off() -> None:
    for name in PATCHED:
        delattr(socket.socket, name)
    _LOOP_CLASS.sock_connect = _SOCK_CONNECT


VARIANTS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "unguarded": (lambda: None, lambda: None),
    "wrapt floor": (_floor_on, _floor_off),
    "selfguard": (selfguard.install, selfguard.uninstall),
}


def measure(
    cases: dict[str, Callable[[int], None]], rounds: int, iterations: dict[str, int]
) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in VARIANTS} for c in cases}
    for case, run in cases.items():
        run(iterations[case] // 10)  # warm up caches and the allocator
    names = list(VARIANTS)
    for round_number in range(rounds):
        # Rotate the order each round: whichever variant runs first after a
        # case switch pays for cold caches, and that must not favour anyone.
        shift = round_number % len(names)
        order = names[shift:] + names[:shift]
        for case, run in cases.items():
            for variant in order:
                on, off = VARIANTS[variant]
                on()
                try:
                    started = time.perf_counter()
                    run(iterations[case])
                    times[case][variant].append((time.perf_counter() - started) / iterations[case])
                finally:
                    off()
    return times


def report(times: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'case':<40} {'unguarded':>10} {'floor':>7} {'guarded':>8} {'guarded-floor':>14}")
    for case, by_variant in times.items():
        base = by_variant["unguarded"]
        floor = statistics.median(f / b for f, b in zip(by_variant["wrapt floor"], base))
        guarded = statistics.median(g / b for g, b in zip(by_variant["selfguard"], base))
        micros = statistics.median(base) * 1e6
        print(f"{case:<40} {micros:>8.2f}us {floor:>6.3f}x {guarded:>7.3f}x {guarded - floor:>+13.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    args = parser.parse_args()

    low, high = read_ephemeral_range()
    inside = _listener(0)  # the kernel gives a listener on port 0 an ephemeral port
    outside = _listener(free_port(max(1024, low - 2000), low - 1))
    closed_port = free_port(low + (high - low) // 2, high - 1)
    # Of the parity bind() picks: connect() never picks it on an idle host, so
    # no run meets a real self-connect by chance and all three run alike.
    closed_port += 1 - (closed_port - low) % 2
    loop = asyncio.new_event_loop()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async_server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
    async_port = async_server.sockets[0].getsockname()[1]
    cases = {
        f"connect+accept, port outside range ({outside.getsockname()[1]})": cycle_case(outside),
        f"connect+accept, port inside range ({inside.getsockname()[1]})": cycle_case(inside),
        f"refused connect, port inside range ({closed_port})": refused_case(closed_port),
        f"UDP socket+connect+close, in range ({closed_port})": udp_case(closed_port),
        f"asyncio open_connection, inside range ({async_port})": asyncio_case(loop, async_port),
    }
    base_iterations = [1500, 1500, 3000, 6000, 500]
    iterations = {c: max(1, int(n * args.scale)) for c, n in zip(cases, base_iterations)}
    print(
        f"Python {sys.version.split()[0]}, wrapt {wrapt.__version__}, selfguard {selfguard.__version__}, "
        f"ephemeral range {low}-{high}, {args.rounds} rounds; ratios are medians over rounds\n"
    )
    report(measure(cases, args.rounds, iterations))
    stats = selfguard.stats()
    print(f"\nselfguard checked {stats['checked']} connects, saw {stats['self_connects']} self-connects")


if __name__ == "__main__":
    main()
