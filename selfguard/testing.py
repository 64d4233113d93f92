"""Provoke real self-connects on purpose, to test selfguard and your own application against the bug."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from typing import Any, Callable, Iterator, Optional

import wrapt

from . import _config, _events, _install, _state

# Public here since the first release; it lives with the command line, which must not import this module.
from ._commands.ports import free_port
from ._kernel import read_ephemeral_range
from ._state import state

# linux/in.h: IP_LOCAL_PORT_RANGE (Linux >= 6.3). Python has no constant.
# Honoured on AF_INET6 sockets too, at level IPPROTO_IP.
IP_LOCAL_PORT_RANGE = 51

__all__ = [
    "IP_LOCAL_PORT_RANGE",
    "SelfConnectPlan",
    "can_force_self_connect",
    "force_self_connect",
    "force_self_connects",
    "free_port",
    "options",
    "reset",
    "set_port_range",
]


def reset() -> None:
    """Put the guard back as a fresh process has it: uninstalled, counters at zero, no listeners.

    Also forgets the cached ephemeral range, the sockets it remembered, which
    faults were logged and which bad SELFGUARD_* values were warned about.
    For test suites: call it before and after each test that installs the guard.
    """
    _install.uninstall()
    _events.reset_stats()
    _events.forget()
    _config.forget_warnings()
    _state.reset()


def options() -> Optional[_config.Options]:
    """The options in force (mode, retries, retry_addrnotavail), or None while the guard is not installed."""
    return state.options


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


class SelfConnectPlan:
    """How many connect attempts to one port are still to be forced, and how many were."""

    def __init__(self, port: int, times: int) -> None:
        self.port = port
        self.remaining = times
        self.forced = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            self.forced += 1
            return True

    def __repr__(self) -> str:
        return f"SelfConnectPlan(port={self.port}, forced={self.forced}, remaining={self.remaining})"


_plans: dict[int, SelfConnectPlan] = {}
_plans_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _plans_lock
    _plans_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def force_self_connects(port: int, times: int = 1) -> Iterator[SelfConnectPlan]:
    """Make the next *times* TCP connect attempts to *port*, from any socket, connect to themselves.

    Works on sockets that client libraries create internally (requests,
    redis-py, asyncio, ...): each connect or connect_ex to *port* on an
    AF_INET/AF_INET6 stream socket that nothing listens behind gets the
    socket's port range narrowed to *port* for that one attempt
    (IP_LOCAL_PORT_RANGE, Linux >= 6.3), so the kernel connects it to itself
    exactly as in the real bug. Attempts are counted one by one, so with the
    guard installed, retries consume the plan too: times=1 forces only the
    first attempt and lets the retry through. Yields the plan, whose
    ``forced`` attribute tells how many attempts were forced.
    """
    low, high = read_ephemeral_range()
    if not low <= port <= high:
        raise ValueError(f"port {port} is outside the ephemeral range {low}-{high}: the kernel never picks it")
    if not can_force_self_connect():
        raise OSError("forcing a self-connect needs IP_LOCAL_PORT_RANGE (Linux >= 6.3)")
    plan = SelfConnectPlan(port, times)
    with _plans_lock:
        if port in _plans:
            raise RuntimeError(f"self-connects to port {port} are already being forced")
        _plans[port] = plan
        if len(_plans) == 1:
            _below_the_guard(_patch)
    try:
        yield plan
    finally:
        with _plans_lock:
            del _plans[port]
            if not _plans:
                _below_the_guard(_unpatch)


def _below_the_guard(change: Callable[[], None]) -> None:
    # The forcing wrapper must sit beneath selfguard's, so each of the
    # guard's retries passes through it and is counted as an attempt; so the
    # guard steps aside while the wrapper goes on or comes off.
    with _install.lock:
        if _install.status() == "armed":
            # The sitecustomize's stand-ins wait for the first connect; uninstall()
            # would take them off for good, so install the guard they stand for now.
            _install.install()
        options = state.options
        _install.uninstall()
        change()
        if options is not None:
            _install.activate(options)


def _forcing(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan: Optional[SelfConnectPlan] = None
    if len(args) == 1 and not kwargs and type(args[0]) is tuple and len(args[0]) >= 2:
        plan = _plans.get(args[0][1]) if type(args[0][1]) is int else None
    if (
        plan is None
        or instance.family not in (socket.AF_INET, socket.AF_INET6)
        or instance.type != socket.SOCK_STREAM
        or not plan.take()
    ):
        return wrapped(*args, **kwargs)
    previous = instance.getsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE)
    force_self_connect(instance, plan.port)
    try:
        return wrapped(*args)
    finally:
        # The port is picked by now (even for a connect still in progress).
        instance.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, previous)


_FORCED = ("connect", "connect_ex")
_patched: dict[str, Any] = {}


def _patch() -> None:
    for name in _FORCED:
        if name not in _patched:
            _patched[name] = wrapt.wrap_function_wrapper(socket.socket, name, _forcing)


def _unpatch() -> None:
    for name in _FORCED:
        # Only while ours is on top; otherwise it stays, idle with no plans,
        # and is reused by the next _patch().
        if name in _patched and vars(socket.socket).get(name) is _patched[name]:
            delattr(socket.socket, name)
            del _patched[name]
