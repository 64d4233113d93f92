"""What the guard asks of Linux: the ephemeral port range, self-connect detection, in-place disconnect."""

from __future__ import annotations

import _socket
import errno
import os
import socket

from ._accel import speedups

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED_FILE = "/proc/sys/net/ipv4/ip_local_reserved_ports"

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# Bound now, not looked up at each read: a connect made from a __del__ during
# interpreter shutdown finds builtins.open gone (the builtins are put back as
# they were before io added it), and the module attributes may be patched by
# tools such as blockbuster meanwhile. O_NONBLOCK: a sysctl file is served
# from memory and never waits for a device; saying so lets a checker of
# event-loop blocking (blockbuster's os.read) see it as the non-blocking read
# it is.
_os_open, _os_read, _os_close = os.open, os.read, os.close
_RANGE_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

# getsockopt(SOL_SOCKET, SO_NETNS_COOKIE): a 64-bit number naming the network
# namespace a socket was created in (Linux >= 5.14). One syscall, no fd.
SO_NETNS_COOKIE = 71
_getsockopt = _socket.socket.getsockopt
_UNIX = getattr(_socket, "AF_UNIX", None)


def read_ephemeral_range(path: Optional[str] = None) -> tuple[int, int]:
    """Return the (low, high) ports the kernel picks source ports from, in the calling thread's network namespace.

    Raises OSError or ValueError when the range cannot be read (not Linux, a
    restricted /proc): the caller decides how to fail open.
    """
    path = path or RANGE_FILE
    fd = _os_open(path, _RANGE_FLAGS)
    try:
        text = _os_read(fd, 64)
    finally:
        _os_close(fd)
    low, high = (int(field) for field in text.split())
    if not 0 < low <= high <= 65535:
        raise ValueError(f"implausible ephemeral port range {low}-{high} in {path}")
    return low, high


def netns_cookie(sock: Any) -> bytes:
    """The cookie of the network namespace *sock* was created in (8 bytes); OSError where the kernel can't say."""
    if isinstance(sock, _socket.socket):
        return bytes(_getsockopt(sock, socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))
    return bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))


def thread_netns_cookie() -> bytes:
    """The cookie of the calling thread's network namespace, asked of a throwaway socket made there."""
    probe = _socket.socket(_UNIX if _UNIX is not None else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return netns_cookie(probe)
    finally:
        probe.close()


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
    an AF_UNSPEC address: the C accelerator makes the call where it is loaded,
    libc through ctypes otherwise (imported on the first call only: a
    self-connect is rare, and most processes never see one). Where neither
    can (a CPython 3.12 isolated subinterpreter without the accelerator, an
    interpreter built without _ctypes), the socket is replaced in place instead.
    """
    global _libc_connect, _unspec_address
    if speedups is not None:
        speedups.disconnect(sock.fileno())
    else:
        if _libc_connect is None:
            try:
                import ctypes
            except ImportError:
                replace_in_place(sock)
                return
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


def _options() -> tuple[tuple[int, int, int], ...]:
    """(level, option, buffer length) of the options replace_in_place() carries over, where Linux has them."""
    sol, tcp, ip, ip6 = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IP, getattr(socket, "IPPROTO_IPV6", 41)
    named = [
        (sol, "SO_REUSEADDR", 4), (sol, "SO_REUSEPORT", 4), (sol, "SO_KEEPALIVE", 4), (sol, "SO_SNDBUF", 4),
        (sol, "SO_RCVBUF", 4), (sol, "SO_OOBINLINE", 4), (sol, "SO_PRIORITY", 4), (sol, "SO_MARK", 4),
        (sol, "SO_LINGER", 8), (sol, "SO_RCVTIMEO", 16), (sol, "SO_SNDTIMEO", 16), (sol, "SO_RCVLOWAT", 4),
        (sol, "SO_BINDTODEVICE", 16),
        (tcp, "TCP_NODELAY", 4), (tcp, "TCP_MAXSEG", 4), (tcp, "TCP_KEEPIDLE", 4), (tcp, "TCP_KEEPINTVL", 4),
        (tcp, "TCP_KEEPCNT", 4), (tcp, "TCP_SYNCNT", 4), (tcp, "TCP_LINGER2", 4), (tcp, "TCP_WINDOW_CLAMP", 4),
        (tcp, "TCP_QUICKACK", 4), (tcp, "TCP_CONGESTION", 16), (tcp, "TCP_USER_TIMEOUT", 4),
        (tcp, "TCP_NOTSENT_LOWAT", 4), (tcp, "TCP_FASTOPEN_CONNECT", 4),
        (ip, "IP_TOS", 4), (ip, "IP_TTL", 4), (ip, "IP_FREEBIND", 4), (ip, "IP_TRANSPARENT", 4),
        (ip, "IP_BIND_ADDRESS_NO_PORT", 4), (ip, "IP_MTU_DISCOVER", 4),
        (ip6, "IPV6_V6ONLY", 4), (ip6, "IPV6_TCLASS", 4), (ip6, "IPV6_UNICAST_HOPS", 4),
    ]  # fmt: skip
    found = [(level, getattr(socket, name, None), size) for level, name, size in named]
    # Constants Python lacks (Linux numbers): IP_FREEBIND 15, IP_TRANSPARENT 19,
    # IP_BIND_ADDRESS_NO_PORT 24, IP_LOCAL_PORT_RANGE 51 (>= 6.3), TCP_FASTOPEN_CONNECT 30.
    found += [(ip, 15, 4), (ip, 19, 4), (ip, 24, 4), (ip, 51, 4), (tcp, 30, 4)]
    return tuple(dict.fromkeys((level, name, size) for level, name, size in found if name is not None))


_CARRIED: Optional[tuple[tuple[int, int, int], ...]] = None
_DOUBLED = {(socket.SOL_SOCKET, socket.SO_SNDBUF), (socket.SOL_SOCKET, socket.SO_RCVBUF)}


def replace_in_place(sock: Any) -> None:
    """Reset a self-connected socket without libc's AF_UNSPEC connect: a fresh socket takes over its fd number.

    The old socket is closed with SO_LINGER 0 (RST: its port is free at once,
    no TIME_WAIT) by dup2() putting a new socket of the same family, type and
    protocol on the same fd, so the Python object, its fd and its timeout are
    kept. The options a caller sets (those of _options(): SO_KEEPALIVE,
    TCP_NODELAY, SO_BINDTODEVICE, IP_LOCAL_PORT_RANGE, ...) and O_NONBLOCK are
    carried over where they differ from a fresh socket's; others, a bind() to
    port 0, and copies of the fd made with dup() are not.
    """
    global _CARRIED
    import struct

    if _CARRIED is None:
        _CARRIED = _options()
    fd = sock.fileno()
    fresh = _socket.socket(int(sock.family), int(sock.type), sock.proto)
    try:
        for level, name, size in _CARRIED:
            try:
                value = _getsockopt(sock, level, name, size)
                if value == _getsockopt(fresh, level, name, size):
                    continue
                if (level, name) in _DOUBLED:  # the kernel doubles what it is given; give back half
                    value = struct.pack("i", struct.unpack("i", value)[0] // 2)
                fresh.setsockopt(level, name, value)
            except OSError:
                continue  # not this family's, not this kernel's, or not allowed here: left as a fresh socket has it
        os.set_blocking(fresh.fileno(), os.get_blocking(fd))
        _socket.socket.setsockopt(sock, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.dup2(fresh.fileno(), fd, inheritable=os.get_inheritable(fd))
    finally:
        fresh.close()
