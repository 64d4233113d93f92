"""sock_diag in another network namespace: find a self-connected TCP socket there and end it, as `ss -K` does.

A netlink socket belongs to the network namespace its creator was in: this
thread enters the target namespace only to create one, and comes back at once.
SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY) aborts the socket with an RST: its
program reads ECONNABORTED and the port is free at once, with no TIME_WAIT.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator, Optional

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
CLONE_NEWNET = 0x40000000
TCP_ESTABLISHED = 1
NO_COOKIE = 0xFFFFFFFF
SIOCGSKNS = 0x894C  # a socket's own network namespace, as an fd (Linux >= 4.9)
SYS_PIDFD_GETFD = 438  # the same number on every architecture (Linux >= 5.6)

# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid:
# sport, dport (big-endian), src[4], dst[4] (network order), if, cookie[2].
REQUEST = struct.Struct("=BBBxI")
SOCKID = struct.Struct(">HH16s16s")
SOCKID_TAIL = struct.Struct("=III")
HEADER = struct.Struct("=IHHII")
# struct inet_diag_msg after the sockid: expires, rqueue, wqueue, uid, inode.
MSG_HEAD = struct.Struct("=BBBB")
MSG_TAIL = struct.Struct("=IIIII")


@dataclass(frozen=True)
class Found:
    """A self-connected socket seen through sock_diag."""

    address: str
    port: int
    inode: int
    cookie: tuple[int, int]
    peer: str = ""


@dataclass(frozen=True)
class Held:
    """A socket a process holds, connected from a port to the same port: its inode, addresses, own namespace.

    netns_fd (an fd to the socket's namespace, the caller's to close) is -1 unless asked for.
    """

    inode: int
    netns_fd: int
    address: str
    peer: str


def held_by(pid: int, family: int, port: int, namespaces: bool = True) -> list[Held]:
    """The TCP sockets of *family* process *pid* holds that are connected from *port* to *port* (any addresses).

    Each socket is asked for its own namespace (SIOCGSKNS on a duplicate
    pidfd_getfd takes): a process's threads, or the process itself after a
    setns(), may be in another namespace than the one its socket was made in.
    Raises OSError if the process is gone or its fds cannot be read.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found: list[Held] = []
    seen: set[int] = set()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            inode = int(link[8:-1])
            if inode in seen:
                continue
            seen.add(inode)
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            with socket.socket(fileno=fd) as sock:
                if sock.family != family or sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    local, peer = sock.getsockname(), sock.getpeername()
                except OSError:
                    continue
                if local[1] != port or peer[1] != port:
                    continue
                netns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS) if namespaces else -1
                found.append(Held(inode, netns_fd, local[0], peer[0]))
    except BaseException:
        for held in found:
            if held.netns_fd >= 0:
                os.close(held.netns_fd)
        raise
    finally:
        os.close(pidfd)
    return found


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with this thread in the network namespace *netns* (a path to an ns/net file), then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter {netns}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - our own namespace cannot vanish
                raise OSError(ctypes.get_errno(), "cannot return to the watcher's network namespace")
    finally:
        os.close(home)


def _netlink_in(netns: str) -> socket.socket:
    with entered(netns):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)


def ephemeral_range(netns: str) -> tuple[int, int]:
    """*netns*'s net.ipv4.ip_local_port_range (a sysctl file shows the namespace of whoever opens it)."""
    with entered(netns), open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = f.read().split()
    return int(low), int(high)


def _request(kind: int, flags: int, family: int, states: int, sockid: bytes) -> bytes:
    body = REQUEST.pack(family, socket.IPPROTO_TCP, 0, states) + sockid
    return HEADER.pack(HEADER.size + len(body), kind, flags, 1, 0) + body


def _messages(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Read netlink replies until DONE or an error/ack; return (type, payload) pairs."""
    out = []
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + HEADER.size <= len(data):
            length, kind, _, _, _ = HEADER.unpack_from(data, offset)
            out.append((kind, data[offset + HEADER.size : offset + length]))
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                return out
            offset += (length + 3) & ~3


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def self_connected(netns: str, family: int, port: int, states: int = 1 << TCP_ESTABLISHED) -> list[Found]:
    """The TCP sockets of *family* in *netns*, in *states* (a bit mask), connected from *port* to *port*."""
    return [f for f in port_pairs(netns, family, port, states) if f.address == f.peer]


def port_pairs(netns: str, family: int, port: int, states: int) -> list[Found]:
    """The TCP sockets of *family* in *netns*, in *states* (a bit mask), from *port* to *port*, any addresses."""
    with _netlink_in(netns) as sock:
        sock.sendall(_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, states, bytes(48)))
        found = []
        for kind, payload in _messages(sock):
            if kind != SOCK_DIAG_BY_FAMILY or len(payload) < 72:
                continue
            sport, dport, src, dst = SOCKID.unpack_from(payload, MSG_HEAD.size)
            _, cookie0, cookie1 = SOCKID_TAIL.unpack_from(payload, MSG_HEAD.size + SOCKID.size)
            inode = MSG_TAIL.unpack_from(payload, MSG_HEAD.size + SOCKID.size + SOCKID_TAIL.size)[4]
            if sport == dport == port:
                found.append(Found(_address(family, src), port, inode, (cookie0, cookie1), _address(family, dst)))
        return found


def destroy(netns: str, family: int, found: Found) -> Optional[int]:
    """End *found* in *netns* with SOCK_DESTROY; None when done, else the errno (ENOENT: already gone)."""
    raw = socket.inet_pton(family, found.address).ljust(16, b"\0")
    sockid = SOCKID.pack(found.port, found.port, raw, raw) + SOCKID_TAIL.pack(0, *found.cookie)
    with _netlink_in(netns) as sock:
        sock.sendall(_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, 0xFFFFFFFF, sockid))
        for kind, payload in _messages(sock):
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                return code or None
    return errno.EIO  # pragma: no cover - the kernel always acks a request that asked for it
