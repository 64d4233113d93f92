"""The connect wrappers, the retry loop, and install()/uninstall()."""

from __future__ import annotations

import _socket
import errno
import socket
import threading
import time
import weakref
from typing import Any, Callable, Optional, Union

import wrapt

from . import _config, _events
from ._errors import SelfConnectError
from ._events import Event
from ._kernel import disconnect, read_ephemeral_range

# The C-level accessors: socket.socket.family/.type build an enum on every
# read (~1 us each), these return the plain int.
_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__
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
# The cached range is re-read at most every RANGE_REFRESH seconds.
RANGE_REFRESH = 1.0
_low, _high = 0, -1  # empty: the first connect reads the real range
_range_read_at = float("-inf")

# Sockets bound to an explicit, non-zero port: the user chose that port, so
# a connect to it from itself is deliberate and left alone. Finding this out
# at connect time would cost a getsockname() on every connect; remembering
# the bind costs nothing on connects.
_user_bound: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _in_refreshed_range(port: int) -> bool:
    """Re-read the range if it is due, and tell whether *port* lies in it.

    Only called for ports outside the cached range: a range that widened is
    seen within RANGE_REFRESH seconds, and connects inside the cached range
    never pay for the clock. (A range that narrowed only costs checks that
    find nothing, until a connect outside it refreshes the cache.)
    """
    global _low, _high, _range_read_at
    now = _monotonic()
    if now - _range_read_at <= RANGE_REFRESH:
        return False
    _range_read_at = now
    try:
        _low, _high = read_ephemeral_range()
    except (OSError, ValueError) as exc:
        # Fail open towards checking: with the range unknown, every port is
        # a candidate. Costs a syscall per TCP connect, never misses one.
        _low, _high = 1, 65535
        _events.fault("reading the ephemeral port range", exc)
    return _low <= port <= _high


def _make_wrapper(api: str) -> Callable[..., Any]:
    """Build the wrapper for socket.socket.connect or .connect_ex.

    It runs on every connect of the process, so it is written for speed: it
    rejects UDP and unusual calls first, reads only what is already in memory
    before the real call (the user's arguments are left for the stdlib to
    validate, with its own errors), makes the first attempt inline and leaves
    everything rare -- a self-connect, EADDRNOTAVAIL -- to _retry().
    """
    returns_code = api == "connect_ex"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _options is None or _type(instance) != _SOCK_STREAM or kwargs or len(args) != 1:
            return wrapped(*args, **kwargs)
        address = args[0]
        if type(address) is not tuple or len(address) < 2 or type(address[1]) is not int:
            return wrapped(address)
        port = address[1]
        if not _low <= port <= _high and not _in_refreshed_range(port):
            return wrapped(address)

        local = None
        if returns_code:
            code = wrapped(address)
            if code == 0:
                local = _self_connected(instance, port)
                if local is None:
                    return 0
            elif code != _EADDRNOTAVAIL or _family(instance) not in _INET_FAMILIES:
                return code
            return _retry(wrapped, instance, address, port, api, local, code)

        try:
            wrapped(address)
        except OSError as exc:
            if exc.errno != _EADDRNOTAVAIL or _family(instance) not in _INET_FAMILIES:
                raise
            error: Union[int, OSError] = exc
        else:
            local = _self_connected(instance, port)
            if local is None:
                return None
            error = 0
        # Outside the except block, so a later attempt's exception is not
        # chained to the first one: callers see it as the stdlib raised it.
        _retry(wrapped, instance, address, port, api, local, error)
        return None

    wrapper.__name__ = wrapper.__qualname__ = f"selfguard_{api}"
    return wrapper


def _self_connected(sock: socket.socket, port: int) -> Optional[tuple[Any, ...]]:
    """Return the local address if *sock*, just connected to *port*, is connected to itself."""
    try:
        local: tuple[Any, ...] = _getsockname(sock)
    except OSError as exc:
        _events.fault("getsockname after connect", exc)
        return None
    next(_events.checked)
    # The peer's port is the port we dialled, so unless the kernel picked that
    # same port for our end this cannot be a self-connect: one syscall, not two.
    # The family is checked only then: AF_VSOCK, AF_TIPC and Bluetooth stream
    # sockets also take (x, int) addresses, but they are rare and not at risk.
    if local[1] != port or _family(sock) not in _INET_FAMILIES:
        return None
    try:
        peer = _getpeername(sock)
    except OSError:
        return None  # ENOTCONN: the connection is already gone; not a self-connect
    if local[:2] != peer[:2] or sock in _user_bound:
        return None
    return local


def _attempt(wrapped: Callable[..., Any], address: Any, api: str) -> Union[int, OSError]:
    """One more call of the real method: 0, connect_ex's errno, or the exception connect raised."""
    if api == "connect_ex":
        return int(wrapped(address))
    try:
        wrapped(address)
    except OSError as exc:
        return exc
    return 0


def _retry(
    wrapped: Callable[..., Any],
    sock: socket.socket,
    address: tuple[Any, ...],
    port: int,
    api: str,
    local: Optional[tuple[Any, ...]],
    error: Union[int, OSError],
) -> int:
    """Handle a first attempt that self-connected (*local* set) or hit EADDRNOTAVAIL (*error*).

    Returns 0 (connected, to someone else unless relenting or observing) or,
    for connect_ex, an errno; for connect every error is raised, the stdlib's
    own exception where there is one. The socket's timeout bounds all attempts
    together; the clock starts here because both reasons to retry are local
    and immediate, and time spent in listeners is not charged.
    """
    options = _options
    if options is None:  # uninstalled meanwhile
        return _fail(error)
    started = _monotonic()
    original_timeout: Any = _NOT_CHANGED
    attempt = 1
    try:
        while True:
            if local is not None:
                started += _events.publish(Event("self_connect", api, local, address, attempt))
                if options.mode == "observe":
                    return 0
                reason = "self-connect"
            elif (error if isinstance(error, int) else error.errno) == _EADDRNOTAVAIL:
                if not options.retry_addrnotavail or sock in _user_bound:
                    return _fail(error)
                started += _events.publish(Event("addrnotavail", api, None, address, attempt))
                reason = "EADDRNOTAVAIL"
            else:
                return _fail(error)

            exhausted = attempt > options.retries
            if local is not None:
                if exhausted and options.mode == "relent":
                    _events.publish(Event("relented", api, local, address, attempt))
                    return 0
                try:
                    disconnect(sock)
                except OSError as exc:
                    # Fail open: the socket stays connected, as without the guard.
                    _events.fault("disconnecting a self-connected socket", exc, api)
                    return 0
                if exhausted:
                    _events.publish(Event("gave_up", api, local, address, attempt))
                    return _fail(errno.ECONNREFUSED if api == "connect_ex" else SelfConnectError(address, attempt))
            elif exhausted:
                return _fail(error)  # EADDRNOTAVAIL every time: report the last one as it was

            if original_timeout is _NOT_CHANGED:
                original_timeout = sock.gettimeout()
            if original_timeout:
                remaining = original_timeout - (_monotonic() - started)
                if remaining <= 0:
                    # What CPython reports for a connect that ran out of time.
                    return _fail(errno.EWOULDBLOCK if api == "connect_ex" else socket.timeout("timed out"))
                sock.settimeout(remaining)
            attempt += 1
            started += _events.publish(Event("retry", api, None, address, attempt, reason))
            error = _attempt(wrapped, address, api)
            local = _self_connected(sock, port) if error == 0 else None
            if error == 0 and local is None:
                return 0
    finally:
        if original_timeout is not _NOT_CHANGED:
            try:
                sock.settimeout(original_timeout)
            except OSError:
                pass  # closed by another thread meanwhile; nothing left to restore


def _fail(error: Union[int, BaseException]) -> int:
    """Raise *error* if it is an exception, else return it as connect_ex's errno."""
    if isinstance(error, BaseException):
        raise error
    return int(error)


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
    replaces the options, each resolved afresh. Returns False, changing
    nothing, when SELFGUARD is set to 0/false/off.
    """
    with _install_lock:
        if not _config.enabled():
            return False  # the operator's off switch: not even the arguments are looked at
        activate(_config.resolve(options))
        return True


def activate(options: _config.Options) -> None:
    """Patch socket.socket (where not yet patched) and put *options* in force."""
    global _options
    with _install_lock:
        for name, wrapper in _WRAPPERS.items():
            if name in _patched and not _still_reachable(name):
                del _patched[name]  # someone removed the chain ours was in
            if name not in _patched:
                before = vars(socket.socket).get(name, _ABSENT)
                _patched[name] = (wrapt.wrap_function_wrapper(socket.socket, name, wrapper), before)
        _options = options


def uninstall() -> None:
    """Restore socket.socket exactly as it was; a patch someone applied on top survives."""
    global _options
    with _install_lock:
        _options = None
        for name, (ours, before) in list(_patched.items()):
            if vars(socket.socket).get(name) is ours:
                if before is _ABSENT:
                    # connect is inherited from _socket.socket: deleting our
                    # attribute restores the original itself, not a copy.
                    delattr(socket.socket, name)
                else:
                    setattr(socket.socket, name, before)
                del _patched[name]
            elif not _still_reachable(name):
                del _patched[name]  # someone already removed it
            # Otherwise someone wrapped ours: removing it would remove theirs
            # too. Ours stays in their chain as a passthrough (_options is
            # None) and the next install() reuses it.


def _still_reachable(name: str) -> bool:
    """Tell whether our wrapper for *name* is on socket.socket, directly or inside other wrappers."""
    ours = _patched[name][0]
    current = vars(socket.socket).get(name)
    for _ in range(100):  # wrappers of wrappers; bounded in case of a cycle
        if current is ours:
            return True
        current = getattr(current, "__wrapped__", None)
        if current is None:
            return False
    return False


def is_installed() -> bool:
    """Tell whether the guard is active in this process."""
    return _options is not None
