"""Helpers to provoke a real self-connect on purpose, for tests of selfguard and of your own application."""

from __future__ import annotations

import socket
import struct

# linux/in.h: IP_LOCAL_PORT_RANGE (Linux >= 6.3). Python has no constant.
# Honoured on AF_INET6 sockets too, at level IPPROTO_IP.
IP_LOCAL_PORT_RANGE = 51


def force_self_connect(sock: socket.socket, port: int) -> None:
    """Make every connect of *sock* to a local address on *port* connect to itself.

    Narrows this socket's ephemeral range to the single port *port*, so the
    kernel picks it as the source port: a connect to 127.0.0.1:*port* (or ::1)
    with no listener there then self-connects every time -- retries included
    -- through the same kernel path as the real bug, until the range is
    cleared with set_port_range(sock, 0, 0). *port* must lie inside
    net.ipv4.ip_local_port_range. Needs Linux >= 6.3; raises OSError elsewhere.
    """
    set_port_range(sock, port, port)


def set_port_range(sock: socket.socket, low: int, high: int) -> None:
    """Narrow the ports *sock* may be given by the kernel to low..high; (0, 0) clears it."""
    sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", low | high << 16))


def can_force_self_connect() -> bool:
    """Tell whether this kernel supports IP_LOCAL_PORT_RANGE (Linux >= 6.3)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            set_port_range(probe, 0, 0)
    except OSError:
        return False
    return True
