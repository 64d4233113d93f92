"""The listening TCP sockets of this network namespace (/proc/net/tcp*) and the processes holding them."""

from __future__ import annotations

import os
import socket
import struct
from typing import Optional, Sequence

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h, as /proc/net/tcp prints it


def _address(hex_address: str) -> str:
    # /proc/net/tcp prints each 32-bit word of the address as a host-order
    # integer, so packing the words natively gives the network-order bytes.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_sockets(tables: Sequence[str] = TCP_TABLES) -> list[tuple[int, str, int]]:
    """Return (port, address, inode) for each listening TCP socket of this network namespace."""
    found = []
    for path in tables:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:  # tcp6 is missing when IPv6 is disabled
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            found.append((int(hex_port, 16), _address(hex_address), int(fields[9])))
    return found


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, list[tuple[str, int]]]:
    """Map socket inodes to the processes holding them, (name, pid), as far as this user may look."""
    owners: dict[int, list[tuple[str, int]]] = {}
    if not inodes:
        return owners
    for pid in filter(str.isdigit, os.listdir(proc)):
        held = set()
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:  # another user's process (root only may look), or one that just exited
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile (listdir's own fd, for one)
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
        held &= inodes
        if not held:
            continue
        try:
            with open(f"{proc}/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        for inode in held:
            owners.setdefault(inode, []).append((name, int(pid)))
    return owners


def process_age(pid: int, proc: str = "/proc") -> Optional[float]:
    """Seconds since process *pid* started, or None if it is gone or unreadable.

    proc(5): field 22 of /proc/PID/stat is the start time in clock ticks after
    boot; /proc/uptime is now, in seconds after boot (both in this time namespace).
    """
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{proc}/uptime") as f:
            uptime = float(f.read().split()[0])
        # The command name (field 2, in parentheses) may hold spaces and ")": split after its last ")".
        started = int(stat.rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)
