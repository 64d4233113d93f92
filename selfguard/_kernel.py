"""What the guard asks of Linux: the ephemeral port range, self-connect detection, in-place disconnect."""

from __future__ import annotations

import _socket
import os
import socket

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED_FILE = "/proc/sys/net/ipv4/ip_local_reserved_ports"

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def read_ephemeral_range(path: Optional[str] = None) -> tuple[int, int]:
    """Return the (low, high) ports the kernel picks source ports from.

    Raises OSError or ValueError when the range cannot be read (not Linux, a
    restricted /proc): the caller decides how to fail open.
    """
    path = path or RANGE_FILE
    with open(path, "rb") as f:
        low, high = (int(field) for field in f.read().split())
    if not 0 < low <= high <= 65535:
        raise ValueError(f"implausible ephemeral port range {low}-{high} in {path}")
    return low, high


def parse_port_list(text: str) -> list[tuple[int, int]]:
    """Parse the kernel's port list syntax ("8080,9000-9010", maybe empty) into (low, high) ranges."""
    ranges = []
    for item in text.split(","):
        if not item.strip():
            continue
        low, _, high = item.strip().partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges


def read_reserved_ports(path: Optional[str] = None) -> list[tuple[int, int]]:
    """Return net.ipv4.ip_local_reserved_ports as (low, high) ranges: ports the kernel never picks.

    An unreadable file (not Linux) counts as no reserved ports.
    """
    try:
        with open(path or RESERVED_FILE) as f:
            return parse_port_list(f.read())
    except OSError:
        return []


def is_self_connected(sock: Any) -> bool:
    """Tell whether a TCP socket -- or an asyncio transport's socket -- is connected to itself.

    Compares host and port of both ends only (IPv6 tuples also carry flowinfo
    and scope id). For connections the guard cannot see (uvloop's, made in C),
    pass the transport: its get_extra_info("socket") is checked. Anything that
    is not a connected AF_INET/AF_INET6 socket answers False; this never raises.
    """
    try:
        get_extra_info = getattr(sock, "get_extra_info", None)
        if get_extra_info is not None:
            sock = get_extra_info("socket")
        if sock.family not in _INET_FAMILIES:
            return False
        local = sock.getsockname()
        peer = sock.getpeername()
    except (OSError, AttributeError, ValueError):
        # ENOTCONN: not connected, so not connected to itself. A closed
        # socket (EBADF, or fileno -1) likewise.
        return False
    return bool(local[:2] == peer[:2])


_libc_connect: Optional[Callable[..., int]] = None
_unspec_address: Any = None


def disconnect(sock: socket.socket) -> None:
    """Reset a connected TCP socket to the unconnected state, keeping its fd and options.

    connect() with an AF_UNSPEC address makes Linux run tcp_disconnect(): it
    sends RST (so no TIME_WAIT keeps the port from a server that wants it),
    releases a kernel-picked port, and leaves the socket ready for another
    connect() with every socket option intact. Python's connect() cannot build
    an AF_UNSPEC address, so this goes through libc. ctypes is imported on the
    first call only: a self-connect is rare, and most processes never see one.
    """
    global _libc_connect, _unspec_address
    if _libc_connect is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
        libc.connect.restype = ctypes.c_int
        # struct sockaddr with sa_family == AF_UNSPEC (0): 16 zero bytes.
        _unspec_address = ctypes.create_string_buffer(16)
        _libc_connect = libc.connect
    if _libc_connect(sock.fileno(), _unspec_address, 16) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # The reset leaves ECONNRESET pending in SO_ERROR. A caller that reads
    # SO_ERROR before connecting again (gevent does) would take it for the
    # outcome of its next connect; reading it clears it.
    if isinstance(sock, _socket.socket):
        _socket.socket.getsockopt(sock, socket.SOL_SOCKET, socket.SO_ERROR)  # the C method: no wrapper sees it
    else:
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
