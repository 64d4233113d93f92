"""The connect wrappers, the retry loop, and install()/uninstall()."""

from __future__ import annotations

import _socket
import errno
import socket
import threading
import time
import weakref
from typing import Any, Callable, Optional

import wrapt

from . import _config, _events
from ._errors import SelfConnectError
from ._events import Event
from ._kernel import disconnect, read_ephemeral_range

# The C-level accessors: socket.socket.family/.type build an enum on every
# read (~1 us each), these return the plain int.
_family = _socket.socket.family.__get__  # type: ignore[attr-defined]
_type = _socket.socket.type.__get__  # type: ignore[attr-defined]
_getsockname = _socket.socket.getsockname
_getpeername = _socket.socket.getpeername
_monotonic = time.monotonic
_SOCK_STREAM = int(socket.SOCK_STREAM)
_INET_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_EADDRNOTAVAIL = errno.EADDRNOTAVAIL

# The options in force; None while the guard is not installed. The wrappers
# read it on every call, so uninstall() takes effect even where a wrapper
# cannot be removed because someone else patched on top of it.
_options: Optional[_config.Options] = None

# A self-connect needs a kernel-picked source port, which always lies inside
# net.ipv4.ip_local_port_range; so does the destination port then. Connects to
# any port outside the range (80, 443, 5432, 6379, ...) skip every syscall.
# The range is re-read every RANGE_REFRESH seconds so a sysctl change is seen.
RANGE_REFRESH = 1.0
_low, _high = 1, 65535
_range_read_at = float("-inf")

# Sockets bound to an explicit, non-zero port: the user chose that port, so
# a connect to it from itself is deliberate and left alone. Finding this out
# at connect time would cost a getsockname() on every connect; remembering
# the bind costs nothing on connects.
_user_bound: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _refresh_range(now: float) -> None:
    global _low, _high, _range_read_at
    _range_read_at = now
    try:
        _low, _high = read_ephemeral_range()
    except (OSError, ValueError) as exc:
        # Fail open towards checking: with the range unknown, every port is
        # a candidate. Costs a syscall per TCP connect, never misses one.
        _low, _high = 1, 65535
        _events.fault("reading the ephemeral port range", exc)


def _make_wrapper(api: str) -> Callable[..., Any]:
    returns_code = api == "connect_ex"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The fast path: every check below reads what is already in memory,
        # cannot raise, and rejects UDP before anything else, so the cost over
        # a bare wrapt passthrough stays in the noise.
        if len(args) == 1 and not kwargs and _options is not None and _type(instance) == _SOCK_STREAM:
            address = args[0]
            if type(address) is tuple and len(address) >= 2:
                port = address[1]
                if type(port) is int:
                    now = _monotonic()
                    if now - _range_read_at > RANGE_REFRESH:
                        _refresh_range(now)
                    if _low <= port <= _high and _family(instance) in _INET_FAMILIES:
                        code = _guarded_connect(wrapped, instance, address, port, api)
                        return code if returns_code else None
            return wrapped(address)
        return wrapped(*args, **kwargs)

    wrapper.__name__ = f"selfguard_{api}"
    return wrapper


def _attempt(wrapped: Callable[..., Any], address: Any, returns_code: bool) -> tuple[int, Optional[OSError]]:
    """One call of the real method, as (errno or 0, the exception connect raised)."""
    if returns_code:
        return wrapped(address), None
    try:
        wrapped(address)
    except OSError as exc:
        return exc.errno or -1, exc
    return 0, None


def _self_connected(sock: socket.socket, port: int, api: str) -> Optional[tuple[Any, ...]]:
    """Return the local address if *sock*, just connected to *port*, is connected to itself."""
    try:
        local = _getsockname(sock)
    except OSError as exc:
        _events.fault("getsockname after connect", exc, api)
        return None
    _events.count_checked()
    # The peer's port is the port we dialled, so unless the kernel picked that
    # same port for our end this cannot be a self-connect: one syscall, not two.
    if local[1] != port:
        return None
    try:
        peer = _getpeername(sock)
    except OSError:
        return None  # ENOTCONN: the connection is already gone; not a self-connect
    return local if local[:2] == peer[:2] else None


def _guarded_connect(wrapped: Callable[..., Any], sock: socket.socket, address: tuple[Any, ...], port: int, api: str) -> int:
    """Connect, retrying self-connects and spurious EADDRNOTAVAIL; return 0 or an errno.

    For connect() every error is raised as the stdlib raised it; for
    connect_ex() it is returned. The socket's timeout bounds all attempts
    together, not counting time spent in listeners.
    """
    options = _options
    assert options is not None
    returns_code = api == "connect_ex"
    deadline_start = _monotonic()
    original_timeout: Any = _NOT_CHANGED
    attempt = 1
    try:
        while True:
            err, exc = _attempt(wrapped, address, returns_code)
            if err == 0:
                local = _self_connected(sock, port, api)
                if local is None or sock in _user_bound:
                    return 0
                deadline_start += _events.publish(Event("self_connect", api, local, address, attempt))
                if options.mode == "observe":
                    return 0
                reason = "self-connect"
            elif err == _EADDRNOTAVAIL and options.retry_addrnotavail and sock not in _user_bound:
                deadline_start += _events.publish(Event("addrnotavail", api, None, address, attempt))
                reason = "EADDRNOTAVAIL"
            else:
                if exc is not None:
                    raise exc
                return err

            exhausted = attempt > options.retries
            if err == 0:
                if exhausted and options.mode == "relent":
                    _events.publish(Event("relented", api, local, address, attempt, f"{attempt} attempts"))
                    return 0
                try:
                    disconnect(sock)
                except OSError as fault_exc:
                    # Fail open: the socket stays connected, as without the guard.
                    _events.fault("disconnecting a self-connected socket", fault_exc, api)
                    return 0
            if exhausted:
                if err:  # EADDRNOTAVAIL on every attempt: report the last one as it was
                    if exc is not None:
                        raise exc
                    return err
                _events.publish(Event("gave_up", api, local, address, attempt, f"{attempt} attempts"))
                if returns_code:
                    return errno.ECONNREFUSED
                raise SelfConnectError(address, attempt)

            timeout = sock.gettimeout()
            if original_timeout is _NOT_CHANGED:
                original_timeout = timeout
            if original_timeout is not None and original_timeout > 0:
                remaining = original_timeout - (_monotonic() - deadline_start)
                if remaining <= 0:
                    # As CPython reports a connect that ran out of time.
                    if returns_code:
                        return errno.EWOULDBLOCK
                    raise socket.timeout("timed out")
                sock.settimeout(remaining)
            attempt += 1
            deadline_start += _events.publish(Event("retry", api, None, address, attempt, reason))
    finally:
        if original_timeout is not _NOT_CHANGED:
            try:
                sock.settimeout(original_timeout)
            except OSError:
                pass  # closed by another thread meanwhile; nothing left to restore


_NOT_CHANGED: Any = object()


def _bind_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = wrapped(*args, **kwargs)
    # Only reached when the stdlib accepted the address.
    if args:
        address = args[0]
        if type(address) is tuple and len(address) >= 2 and type(address[1]) is int and address[1] != 0:
            try:
                _user_bound.add(instance)
            except TypeError:
                pass  # a socket class without weakref support: cannot remember it
    return result


_WRAPPERS: dict[str, Callable[..., Any]] = {
    "connect": _make_wrapper("connect"),
    "connect_ex": _make_wrapper("connect_ex"),
    "bind": _bind_wrapper,
}
_install_lock = threading.RLock()
# name -> (the FunctionWrapper we put on socket.socket, what vars() held before)
_patched: dict[str, tuple[Any, Any]] = {}
_ABSENT: Any = object()


def install(**options: Any) -> bool:
    """Guard every TCP connect of this process against self-connection.

    Options (see the README for each, and SELFGUARD_* for the environment
    variables): mode, retries, retry_addrnotavail. Explicit arguments win over
    the environment, which wins over the defaults. Calling install() again
    applies new options. Returns False, changing nothing, when SELFGUARD is
    set to 0/false/off.
    """
    global _options
    with _install_lock:
        resolved = _config.resolve(options)
        if not _config.enabled():
            return False
        for name, wrapper in _WRAPPERS.items():
            if name not in _patched:
                before = vars(socket.socket).get(name, _ABSENT)
                _patched[name] = (wrapt.wrap_function_wrapper(socket.socket, name, wrapper), before)
        _options = resolved
        return True


def uninstall() -> None:
    """Restore socket.socket exactly as it was; a patch someone applied on top survives."""
    global _options
    with _install_lock:
        _options = None
        for name, (ours, before) in list(_patched.items()):
            if vars(socket.socket).get(name) is not ours:
                # Someone wrapped us; removing ours would remove theirs. Ours
                # stays in their chain as a passthrough (_options is None) and
                # is reused by the next install().
                continue
            if before is _ABSENT:
                # connect is inherited from _socket.socket: deleting our
                # attribute restores the original itself, not a copy of it.
                delattr(socket.socket, name)
            else:
                setattr(socket.socket, name, before)
            del _patched[name]


def is_installed() -> bool:
    """Tell whether the guard is active in this process."""
    return _options is not None
