"""What the guard asks of Linux: the ephemeral port range, self-connect detection, in-place disconnect."""

from __future__ import annotations

import _socket
import errno
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


# The kernel hands a sysctl's text over in one read: a read at a non-zero offset
# returns end-of-file, so a reader that reads in pieces (Python's f.read() asks
# 8 KiB at a time) gets a long port list cut short, maybe in the middle of a
# port. One read of 1 MiB holds any port list (every other port of 1-65535
# written out is about 190 KB); the kernel refuses a 4 MiB read with ENOMEM.
_SYSCTL_READ_SIZE = 1 << 20


def read_sysctl_text(path: str) -> str:
    """The whole text of a /proc/sys file, in one read; raises OSError, or ValueError if it cannot be whole."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _SYSCTL_READ_SIZE)
    finally:
        os.close(fd)
    if len(data) >= _SYSCTL_READ_SIZE:
        raise ValueError(f"{path} holds more than {_SYSCTL_READ_SIZE} bytes")
    return data.decode("ascii")


def write_port_list(fd: int, text: str, restore: Optional[str] = None) -> None:
    """Write the port list *text* ("8080,9000-9010") whole to a port-list sysctl opened as *fd*.

    The kernel takes at most 4095 bytes a write, and only up to the last whole
    item: a write at offset 0 replaces the set with what it parsed, and writes at
    a later offset add to it. So the rest is written at the offset the last
    write reached, until all of it is taken. The newline makes an empty list
    clear the set (an empty write changes nothing). When the kernel refuses a
    piece after the first replaced the set, *restore* (the list as it was) is
    written back before the error is raised: a half-written list would drop
    reservations.
    """
    try:
        _write_whole(fd, text)
    except OSError:
        if restore is not None:
            try:
                _write_whole(fd, restore)
            except OSError:
                pass  # the first error is the one to report
        raise


def _write_whole(fd: int, text: str) -> None:
    data = (text + "\n").encode("ascii")
    done = 0
    while done < len(data):  # bounded: every pass takes at least one byte
        taken = os.pwrite(fd, data[done:], done)
        if taken <= 0:
            raise OSError(errno.EIO, f"the kernel took {done} of {len(data)} bytes of the port list")
        done += taken


def read_reserved_ports(path: Optional[str] = None) -> list[tuple[int, int]]:
    """Return net.ipv4.ip_local_reserved_ports as (low, high) ranges: ports the kernel never picks.

    An unreadable file (not Linux) counts as no reserved ports.
    """
    try:
        return parse_port_list(read_sysctl_text(path or RESERVED_FILE))
    except (OSError, ValueError):
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
