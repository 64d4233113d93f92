"""Differential: uvloop's connects have the same outcomes with and without the guard wherever it has nothing to do.

The guard sits in front of uvloop's create_connection (a gate protocol, and
TLS started after the check) and sock_connect. Every call here either cannot
self-connect or fails before it could: refused ports of the parity connect()
tries last, a real server, ports outside the range, bad hosts and ports,
arguments given twice, unknown or missing (uvloop binds and validates them,
at call time or when awaited: both must stay where they were), sock= and
local_addr=, TLS against a server that speaks no TLS, and TLS that works.
Each is run unguarded then guarded on a fresh uvloop loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Callable

import pytest

import selfguard
from selfguard._kernel import read_ephemeral_range

uvloop = pytest.importorskip("uvloop", reason="uvloop is in the test extra")
trustme = pytest.importorskip("trustme", reason="trustme is in the test extra")

LOW, HIGH = read_ephemeral_range()
CA = trustme.CA()
CLIENT_TLS = ssl.create_default_context()
CA.configure_trust(CLIENT_TLS)
SERVER_TLS = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
CA.issue_cert("localhost").configure_cert(SERVER_TLS)


def closed_port(n: int) -> int:
    """A closed port inside the range, of bind()'s parity: never a chance self-connect."""
    return LOW + 1 + 2 * n


class Quiet(asyncio.Protocol):
    pass


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HELLO")
    await writer.drain()
    writer.close()


async def _outcome(make_call: Callable[[Any, dict[str, int]], Any], ports: dict[str, int]) -> tuple[Any, ...]:
    loop = asyncio.get_running_loop()
    try:
        call = make_call(loop, ports)
    except BaseException as exc:  # when it raises matters too: binding errors come at call time
        return ("at call", type(exc).__name__, getattr(exc, "errno", None), str(exc))
    try:
        result = await asyncio.wait_for(call, 5)
    except BaseException as exc:
        return (type(exc).__name__, getattr(exc, "errno", None), str(exc).replace(str(ports.get("plain")), "P"))
    if isinstance(result, tuple) and len(result) == 2 and hasattr(result[0], "get_extra_info"):
        transport, protocol = result
        described = (
            "connected",
            type(protocol).__name__,
            transport.get_extra_info("peername")[1] in ports.values(),
            transport.get_extra_info("sslcontext") is not None,
        )
        transport.close()
        return described
    if isinstance(result, tuple) and len(result) == 2:  # open_connection's (reader, writer)
        reader, writer = result
        data = await asyncio.wait_for(reader.read(5), 5)
        writer.close()
        return ("opened", data)
    return ("returned", result)


def _sock_connect(address_of: Callable[[dict[str, int]], Any]) -> Callable[[Any, dict[str, int]], Any]:
    async def call(loop: Any, ports: dict[str, int]) -> Any:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            return await loop.sock_connect(sock, address_of(ports))
        finally:
            sock.close()

    return call


def _with_sock(loop: Any, ports: dict[str, int]) -> Any:
    sock = socket.create_connection(("127.0.0.1", ports["plain"]))
    sock.setblocking(False)
    return loop.create_connection(Quiet, sock=sock)


CASES: dict[str, Callable[[Any, dict[str, int]], Any]] = {
    "refused": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", closed_port(1)),
    "refused, ::1": lambda loop, p: loop.create_connection(Quiet, "::1", closed_port(2)),
    "refused, port as text": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", str(closed_port(3))),
    "refused, keywords": lambda loop, p: loop.create_connection(Quiet, host="127.0.0.1", port=closed_port(4)),
    "refused, TLS": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", closed_port(5), ssl=CLIENT_TLS),
    "refused, ssl=True": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", closed_port(6), ssl=True),
    "refused outside the range": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", 1),
    "served": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"]),
    "served, streams": lambda loop, p: asyncio.open_connection("127.0.0.1", p["plain"]),
    "served, TLS": lambda loop, p: asyncio.open_connection(
        "127.0.0.1", p["tls"], ssl=CLIENT_TLS, server_hostname="localhost"
    ),
    "TLS, wrong name": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["tls"], ssl=CLIENT_TLS),
    "TLS to a plain server": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", p["plain"], ssl=CLIENT_TLS, server_hostname="localhost", ssl_handshake_timeout=0.5
    ),
    "local_addr port 0": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", p["plain"], local_addr=("127.0.0.1", 0)
    ),
    "sock=": _with_sock,
    "server_hostname without ssl": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", p["plain"], server_hostname="x"
    ),
    "handshake timeout without ssl": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", p["plain"], ssl_handshake_timeout=1
    ),
    "port 70000": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", 70000),
    "port -1": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", -1),
    "no host": lambda loop, p: loop.create_connection(Quiet, None, p["plain"]),
    "host too long": lambda loop, p: loop.create_connection(Quiet, "a" * 300, p["plain"]),
    "factory raises": lambda loop, p: loop.create_connection(lambda: 1 / 0, "127.0.0.1", p["plain"]),
    "factory returns None": lambda loop, p: loop.create_connection(lambda: None, "127.0.0.1", p["plain"]),
    "factory returns None, keywords": lambda loop, p: loop.create_connection(
        lambda: None, host="127.0.0.1", port=p["plain"]
    ),
    "too many arguments": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"], None),
    # uvloop binds and validates its own arguments, with or without the guard.
    "port '²'": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", "\u00b2"),
    "port '²', keywords": lambda loop, p: loop.create_connection(Quiet, host="127.0.0.1", port="\u00b2"),
    "port in Arabic-Indic digits": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", str(closed_port(8)).translate({ord("0") + i: 0x660 + i for i in range(10)})
    ),
    "port of 5000 digits": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", "1" * 5000),
    "host twice": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"], host="127.0.0.1"),
    "port twice": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"], port=p["plain"]),
    "port twice, TLS": lambda loop, p: loop.create_connection(
        Quiet, "127.0.0.1", p["tls"], port=p["tls"], ssl=CLIENT_TLS, server_hostname="localhost"
    ),
    "factory twice": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"], protocol_factory=Quiet),
    "no factory": lambda loop, p: loop.create_connection(host="127.0.0.1", port=p["plain"]),
    "unknown keyword": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1", p["plain"], timeout=1),
    "TLS without a host": lambda loop, p: loop.create_connection(Quiet, None, p["tls"], ssl=CLIENT_TLS),
    "TLS, empty host": lambda loop, p: loop.create_connection(Quiet, "", p["tls"], ssl=CLIENT_TLS),
    "no port": lambda loop, p: loop.create_connection(Quiet, "127.0.0.1"),
    "sock_connect refused": _sock_connect(lambda p: ("127.0.0.1", closed_port(7))),
    "sock_connect served": _sock_connect(lambda p: ("127.0.0.1", p["plain"])),
    "sock_connect bad address": _sock_connect(lambda p: ("127.0.0.1",)),
}


# Cases that connect to a port inside the range: the guard's gate checks them.
CHECKED = {
    "served", "served, streams", "served, TLS", "TLS, wrong name", "TLS to a plain server", "sock_connect served",
    "local_addr port 0",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_uvloop_connects_the_guard_does_not_handle_behave_the_same(case):
    """Each uvloop call: identical outcome (type, errno, message; or what was connected) with and without the guard."""

    async def both() -> list[tuple[Any, ...]]:
        plain = await asyncio.start_server(_greet, "127.0.0.1", 0)
        tls = await asyncio.start_server(_greet, "127.0.0.1", 0, ssl=SERVER_TLS)
        ports = {"plain": plain.sockets[0].getsockname()[1], "tls": tls.sockets[0].getsockname()[1]}
        results = []
        try:
            for guarded in (False, True):
                if guarded:
                    selfguard.install()
                results.append(await _outcome(CASES[case], ports))
        finally:
            selfguard.uninstall()
            plain.close()
            tls.close()
        return results

    unguarded, guarded = uvloop.run(both())
    assert unguarded == guarded
    assert 0 == selfguard.stats()["self_connects"]
    if case in CHECKED:  # the guard really stood in the way, and changed nothing
        assert selfguard.stats()["checked"] >= 1
