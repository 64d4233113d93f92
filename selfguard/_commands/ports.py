"""Ports for the command line: a free port to dial, port lists in the kernel's syntax, and connect()'s parity."""

from __future__ import annotations

import argparse
import random
import re
import socket
from typing import Container, Iterable, Optional

from .._kernel import read_ephemeral_range, read_reserved_ports
from .cli import CannotRun

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range() -> tuple[int, int]:
    """The (low, high) ports the kernel picks source ports from, or CannotRun saying why not."""
    try:
        return read_ephemeral_range(RANGE_FILE)
    except (OSError, ValueError) as exc:
        # read_ephemeral_range's own errors ("not enough values to unpack")
        # do not say what was being read.
        raise CannotRun(f"cannot read the ephemeral port range from {RANGE_FILE}: {exc}") from exc


def free_port(
    low: Optional[int] = None, high: Optional[int] = None, *, connect_parity: bool = False, avoid: Container[int] = ()
) -> int:
    """Return a port in low..high (default: the ephemeral range) that nothing holds and that is not reserved.

    connect_parity=True keeps to ports of the range's low end's parity: Linux's
    connect() tries source ports of that parity first (bind() the others), so
    only those ever self-connect in a brute-force reconnect loop on an idle host.
    """
    if low is None or high is None:
        low, high = read_ephemeral_range()
    reserved = read_reserved_ports()
    for _ in range(1000):
        port = random.randint(low, high)
        if connect_parity:
            port -= (port - low) % 2
        if port in avoid or covers(reserved, port):
            continue
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def format_port_list(ranges: Iterable[tuple[int, int]]) -> str:
    """Merge overlapping and adjacent ranges and write them as the kernel does ("8080,9000-9010")."""
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in merged)


def covers(ranges: Iterable[tuple[int, int]], port: int) -> bool:
    """Tell whether *port* lies in one of the (low, high) *ranges*."""
    return any(low <= port <= high for low, high in ranges)


def parity(port: int) -> str:
    """ "even" or "odd"."""
    return "odd" if port % 2 else "even"


def connect_tries_first(port: int, low: int) -> bool:
    """Tell whether connect() tries *port* in its first pass over a range starting at *low*.

    Linux's __inet_hash_connect scans source ports of the low end's parity
    first and the others only when those are all taken; inet_csk_find_open_port
    (bind to port 0) prefers the other parity, "to not pollute connect() users".
    """
    return (port - low) % 2 == 0


def port_number(text: str) -> int:
    """argparse type for a TCP port: a whole number from 1 to 65535."""
    # int() would also take " 42", "+42" and "4_2".
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a whole number from 1 to 65535")
    return int(text)


def port_list(text: str) -> list[int]:
    """argparse type for ports written one by one or comma-separated ("6379,8080"), each as port_number takes it."""
    return [port_number(part) for part in text.split(",")]


def without(ranges: Iterable[tuple[int, int]], ports: Container[int]) -> list[tuple[int, int]]:
    """*ranges* with the single *ports* taken out (a range split around each one)."""
    out: list[tuple[int, int]] = []
    for low, high in ranges:
        start = low
        for port in range(low, high + 1):
            if port in ports:
                if start < port:
                    out.append((start, port - 1))
                start = port + 1
        if start <= high:
            out.append((start, high))
    return out
