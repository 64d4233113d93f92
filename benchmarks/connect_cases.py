"""The loops bench_connect.py times: one bounded loop per case, loopback only, each with its goal.

A case's loop is the same code for every variant (unguarded, floor, selfguard);
only what sits on socket.socket and the event-loop classes changes around it.
Clients close with SO_LINGER (1, 0), i.e. RST, so no TIME_WAIT piles up over
thousands of iterations and a bound port can be bound again at once.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional

from selfguard.testing import free_port

LINGER_RST = struct.pack("ii", 1, 0)

Loop = Callable[[int], None]  # runs the case n times

# The syscalls a guard's check may need, named as bench_connect.py measures them:
# getsockname() (is the socket's own port the dialled one?) and
# getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) (which namespace's port range applies?).
SYSCALLS = ("getsockname", "netns_cookie")


@dataclass
class Case:
    key: str  # the --case name
    title: str
    # The goal, in microseconds per iteration (issue 17): selfguard at most
    # `margin` above `base` ("floor" or "unguarded"); above the floor, the
    # syscalls in `needs` are allowed on top, since no guard can check without
    # them. `needs` also makes the printed limit, unguarded + those syscalls.
    needs: tuple[str, ...]
    margin: float
    base: str
    # Per slice at --scale 1: about 1 ms unguarded on a 2-core VM, 2-3 ms for the
    # UDP and bound cases, whose per-round spread halved with slices 3x longer.
    iterations: int
    run: Loop


def cycle_loop(srv: socket.socket, bind_to: Optional[tuple[str, int]] = None) -> Loop:
    """connect + accept + close to the listener *srv*; from an explicitly bound socket if *bind_to*."""
    address = srv.getsockname()

    def run(n: int) -> None:
        for _ in range(n):
            c = socket.socket()
            if bind_to is not None:
                c.bind(bind_to)
            c.connect(address)
            a, _ = srv.accept()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.close()
            a.close()

    return run


class PortTaken(RuntimeError):
    """The closed port was taken by another process meanwhile: the case no longer measures a refused connect."""


def refused_loop(port: int, api: str) -> Loop:
    """socket + connect (or connect_ex) to a closed port + close."""
    address = ("127.0.0.1", port)

    def run_connect(n: int) -> None:
        for _ in range(n):
            c = socket.socket()
            try:
                c.connect(address)
            except ConnectionRefusedError:
                pass
            else:
                raise PortTaken(f"port {port} now accepts connections")
            c.close()

    def run_connect_ex(n: int) -> None:
        for _ in range(n):
            c = socket.socket()
            if c.connect_ex(address) != errno.ECONNREFUSED:
                raise PortTaken(f"port {port} no longer refuses connections")
            c.close()

    return run_connect if api == "connect" else run_connect_ex


def udp_loop(port: int) -> Loop:
    address = ("127.0.0.1", port)

    def run(n: int) -> None:
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.connect(address)
            c.close()

    return run


def _reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    writer.transport.abort()


def open_connection_loop(loop: asyncio.AbstractEventLoop) -> tuple[Loop, int]:
    """asyncio.open_connection + RST on *loop*, to a server on the same loop; returns the loop and the port.

    Each run waits until the server has handled all of its connections, so
    no work of one timed slice spills over into the next (another variant's).
    """
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        _reset(writer)

    server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
    port: int = server.sockets[0].getsockname()[1]

    async def cycles(n: int) -> None:
        goal = served + n
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            _reset(writer)
        while served < goal:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the transports' connection_lost callbacks, scheduled by abort()

    def run(n: int) -> None:
        loop.run_until_complete(cycles(n))

    return run, port


def _listener(port: int) -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    return srv


def _outside_port(low: int, high: int, avoid: tuple[int, ...] = ()) -> int:
    if low > 2024:
        return free_port(max(1024, low - 2000), low - 1, avoid=avoid)
    return free_port(high + 1, min(65535, high + 2000), avoid=avoid)


def closed_port_in_range(low: int, high: int) -> int:
    """A free port inside low..high of the parity *other* than the low end's.

    Linux's connect() tries source ports of the low end's parity first (bind()
    prefers the other one; see DESIGN.md, "port parity"), so our own connects
    never pick a port of the other parity as their source on an idle host: no
    round meets a real self-connect by chance, which would cost the guard a
    retry and the other variants a corrupt iteration.
    """
    for _ in range(100):
        port = free_port(low, high)
        if (port - low) % 2 == 1:
            return port
    raise RuntimeError(f"no free port of the non-connect parity in {low}-{high}")


def build_cases(low: int, high: int) -> tuple[list[Case], list[str]]:
    """Set up listeners and loops for every case; returns the cases and notes on skipped ones."""
    inside = _listener(0)  # the kernel gives a listener on port 0 an ephemeral port
    outside = _listener(_outside_port(low, high))
    in_port, out_port = inside.getsockname()[1], outside.getsockname()[1]
    bound_port = _outside_port(low, high, avoid=(out_port,))  # a user's explicit source port
    closed = closed_port_in_range(low, high)
    aio_loop, aio_port = open_connection_loop(asyncio.new_event_loop())
    if not low <= in_port <= high or not low <= aio_port <= high:
        raise RuntimeError(f"listeners on port 0 got ports {in_port}, {aio_port} outside {low}-{high}")

    # Goals (issue 17), in us per iteration. Blocking paths: +0.3 above the floor
    # plus the syscalls the check needs -- a completed connect outside the range
    # one SO_NETNS_COOKIE (the socket's own namespace decides its range), inside
    # it one getsockname(); refused connects and UDP none. A bound socket: +0.5
    # and one getsockname(). The event loops: +4 (asyncio) and +2 (uvloop) above
    # unguarded, all included; their check needs a getsockname() too (the limit).
    name, cookie = ("getsockname",), ("netns_cookie",)
    cases = [
        Case(
            "outside", f"connect+accept, port outside range ({out_port})", cookie, 0.3, "floor", 60, cycle_loop(outside)
        ),
        Case("inside", f"connect+accept, port inside range ({in_port})", name, 0.3, "floor", 60, cycle_loop(inside)),
        Case(
            "refused",
            f"refused connect(), inside range ({closed})",
            (),
            0.3,
            "floor",
            130,
            refused_loop(closed, "connect"),
        ),
        Case(
            "refused_ex",
            f"refused connect_ex(), inside range ({closed})",
            (),
            0.3,
            "floor",
            150,
            refused_loop(closed, "ex"),
        ),
        Case("udp", f"UDP socket+connect+close, inside range ({closed})", (), 0.3, "floor", 600, udp_loop(closed)),
        Case(
            "bound",
            f"bound to {bound_port} (outside range), connect+accept inside range ({in_port})",
            name,
            0.5,
            "floor",
            150,
            cycle_loop(inside, bind_to=("127.0.0.1", bound_port)),
        ),
        Case("asyncio", f"asyncio open_connection, inside range ({aio_port})", name, 4.0, "unguarded", 8, aio_loop),
    ]
    notes = []
    uv_loop = new_uvloop()
    if isinstance(uv_loop, str):
        notes.append(f"uvloop case skipped: {uv_loop}")
    else:
        uv_run, uv_port = open_connection_loop(uv_loop)
        cases.append(
            Case("uvloop", f"uvloop open_connection, inside range ({uv_port})", name, 2.0, "unguarded", 20, uv_run)
        )
    return cases, notes


def new_uvloop() -> Any:
    """A new uvloop event loop, or why there is none."""
    try:
        import uvloop
    except ImportError as exc:
        return f"uvloop is not importable ({exc})"
    return uvloop.new_event_loop()


CASE_KEYS = ("outside", "inside", "refused", "refused_ex", "udp", "bound", "asyncio", "uvloop")
