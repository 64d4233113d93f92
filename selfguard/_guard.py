"""The connect wrappers and the retry loop: where every TCP connect of the process is checked."""

from __future__ import annotations

import _socket
import errno
import socket
import time
import weakref

from . import _config, _events
from ._errors import SelfConnectError
from ._events import Event
from ._kernel import disconnect, read_ephemeral_range

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import contextvars
    from typing import Any, Callable, Optional, Union

# The C-level accessors: socket.socket.family/.type build an enum on every
# read (~1 us each), these return the plain int. They raise TypeError for
# socket classes that do not derive from _socket.socket (gevent's).
_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__
_timeout = _socket.socket.timeout.__get__
_getsockname = _socket.socket.getsockname
_getpeername = _socket.socket.getpeername
_monotonic = time.monotonic
_SOCK_STREAM = int(socket.SOCK_STREAM)
_INET_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_EADDRNOTAVAIL = errno.EADDRNOTAVAIL
_SO_ERROR = (socket.SOL_SOCKET, socket.SO_ERROR)

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
_user_bound: weakref.WeakSet[Any] = weakref.WeakSet()

# Self-connected sockets handed back on a path that cannot retry (relent,
# observe): reported once, not at every later SO_ERROR read.
_handed_back: weakref.WeakSet[Any] = weakref.WeakSet()

# Set while a layer above (asyncio's sock_connect) checks the connects it
# makes itself, knowing the address it dialled: the SO_ERROR check stands
# back. Created by that layer when it is first needed.
delegated: Optional[contextvars.ContextVar[bool]] = None


def in_refreshed_range(port: int) -> bool:
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
    try:
        low, high = read_ephemeral_range()
    except (OSError, ValueError) as exc:
        # Fail open towards checking: with the range unknown, every port is
        # a candidate. Costs a syscall per TCP connect, never misses one.
        low, high = 1, 65535
        _events.fault("reading the ephemeral port range", exc)
    # The time is stamped only once the range is in place: the read releases
    # the GIL, and other threads must not take a fresh stamp over an empty or
    # half-written range as "outside it" (they read the file themselves).
    _low, _high = low, high
    _range_read_at = now
    return low <= port <= high


def make_connect_wrapper(api: str) -> Callable[..., Any]:
    """Build the wrapper for socket.socket.connect or .connect_ex.

    It runs on every connect of the process, so it is written for speed: it
    rejects UDP and unusual calls first, reads only what is already in memory
    before the real call (the user's arguments are left for the stdlib to
    validate, with its own errors), makes the first attempt inline and leaves
    everything rare -- a self-connect, EADDRNOTAVAIL, a non-blocking connect
    -- to other functions.
    """
    returns_code = api == "connect_ex"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            kind = _type(instance)
        except TypeError:  # a socket class not derived from _socket.socket (gevent's)
            kind = instance.type
        if _options is None or kind != _SOCK_STREAM or kwargs or len(args) != 1:
            return wrapped(*args, **kwargs)
        address = args[0]
        if type(address) is not tuple or len(address) < 2:
            return wrapped(address)
        port = address[1]
        if type(port) is not int:
            port = int_port(port)  # IntEnum and other int subclasses, which the stdlib accepts
            if not port:
                return wrapped(address)
        if not _low <= port <= _high and not in_refreshed_range(port):
            return wrapped(address)
        try:
            timeout = _timeout(instance)
        except TypeError:
            timeout = instance.gettimeout()
        if timeout == 0.0:
            # Non-blocking: on Linux the connect returns EINPROGRESS and its
            # outcome is read later from SO_ERROR (checked there, or by the
            # asyncio layer). Passing straight through spares the EINPROGRESS
            # exception a catch and re-raise (~0.4 us inside asyncio).
            result = wrapped(address)
            if returns_code and result != 0:
                return result
            # Connected: a loop that completes connects by connecting again
            # (gevent, Twisted) learns it here instead of from SO_ERROR.
            return _connected_without_blocking(instance, port, address, api, result)

        local = None
        if returns_code:
            code = wrapped(address)
            if code == 0:
                local = _self_connected(instance, port)
                if local is None:
                    return 0
            elif code != _EADDRNOTAVAIL:
                return code
            return _retry(wrapped, instance, address, port, api, local, code)

        try:
            wrapped(address)
        except OSError as exc:
            if exc.errno != _EADDRNOTAVAIL:
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


def int_port(port: Any) -> int:
    """The value of a port given as an int subclass (never bool), else 0, without running any of its code."""
    if isinstance(port, int) and not isinstance(port, bool):
        return int.__int__(port)  # int's own conversion: an override cannot run
    return 0


def port_of(address: Any) -> int:
    """The port of a (host, port, ...) address, or 0 when it has none."""
    if type(address) is not tuple or len(address) < 2:
        return 0
    port = address[1]
    return port if type(port) is int else int_port(port)


def _connected_without_blocking(sock: Any, port: int, address: Any, api: str, result: Any) -> Any:
    """A non-blocking connect reported success: check it like a completed one (no retry: nobody waits)."""
    options = _options
    if options is None or (delegated is not None and delegated.get()):
        return result  # asyncio's sock_connect checks it, and can retry
    local = _self_connected(sock, port)
    if local is None or sock in _handed_back:
        return result
    if _settle_without_retry(sock, local, address, api, options) is not None:
        return result
    if api == "connect_ex":
        return errno.ECONNREFUSED
    raise SelfConnectError(address, 1)


def _settle_without_retry(
    sock: Any, local: tuple[Any, ...], address: Any, api: str, options: _config.Options
) -> Optional[bool]:
    """resolve_self_connect() for paths that cannot retry: the first attempt is also the last."""
    outcome = resolve_self_connect(sock, local, address, api, options.retries + 1, options)
    if outcome is False:
        # Handed back (relent, observe, or a failed reset): once is enough to
        # report it, however often the caller asks about this socket again.
        try:
            _handed_back.add(sock)
        except TypeError:
            pass
    return outcome


def _inet(sock: Any) -> bool:
    try:
        return _family(sock) in _INET_FAMILIES
    except TypeError:
        return int(sock.family) in _INET_FAMILIES


def _self_connected(sock: Any, port: int) -> Optional[tuple[Any, ...]]:
    """Return the local address if *sock*, just connected to *port*, is connected to itself."""
    try:
        local: tuple[Any, ...] = _getsockname(sock) if isinstance(sock, _socket.socket) else sock.getsockname()
    except OSError as exc:
        _events.fault("getsockname after connect", exc)
        return None
    next(_events.checked)
    # The peer's port is the port we dialled, so unless the kernel picked that
    # same port for our end this cannot be a self-connect: one syscall, not two.
    # The family is checked only then: AF_VSOCK, AF_TIPC and Bluetooth stream
    # sockets also take (x, int) addresses, but they are rare and not at risk.
    if local[1] != port or not _inet(sock):
        return None
    try:
        peer = _getpeername(sock) if isinstance(sock, _socket.socket) else sock.getpeername()
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


def _errno(error: Union[int, OSError]) -> Optional[int]:
    return error if isinstance(error, int) else error.errno


def _retry(
    wrapped: Callable[..., Any],
    sock: Any,
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
                decided_at = _monotonic()
                retry = resolve_self_connect(sock, local, address, api, attempt, options)
                started += _monotonic() - decided_at  # listeners' time is not the connect's
                if retry is None:
                    return _fail(errno.ECONNREFUSED if api == "connect_ex" else SelfConnectError(address, attempt))
                if not retry:
                    return 0
                reason = "self-connect"
            elif _errno(error) == _EADDRNOTAVAIL and _inet(sock):
                if not options.retry_addrnotavail or sock in _user_bound:
                    return _fail(error)
                started += _events.publish(Event("addrnotavail", api, None, address, attempt))
                if attempt > options.retries:
                    return _fail(error)  # EADDRNOTAVAIL every time: report the last one as it was
                reason = "EADDRNOTAVAIL"
            else:
                return _fail(error)

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


def resolve_self_connect(
    sock: Any, local: tuple[Any, ...], address: Any, api: str, attempt: int, options: _config.Options
) -> Optional[bool]:
    """Report a self-connect and decide what follows; every path that meets one comes here.

    Returns True when the socket was reset in place and should be connected
    again; False when the connection is to be handed back as it is (observe,
    relent once the retries are spent, or the reset failed: fail open); None
    when the retries are spent and the socket was reset: the caller reports
    ECONNREFUSED (SelfConnectError), the truth that nothing listens there.
    """
    _events.publish(Event("self_connect", api, local, address, attempt))
    if options.mode == "observe":
        return False
    exhausted = attempt > options.retries
    if exhausted and options.mode == "relent":
        _events.publish(Event("relented", api, local, address, attempt))
        return False
    try:
        disconnect(sock)
    except Exception as exc:  # OSError from the kernel; ImportError without ctypes
        _events.fault("disconnecting a self-connected socket", exc, api)
        return False
    if exhausted:
        _events.publish(Event("gave_up", api, local, address, attempt))
        return None
    return True


def _fail(error: Union[int, BaseException]) -> int:
    """Raise *error* if it is an exception, else return it as connect_ex's errno."""
    if isinstance(error, BaseException):
        raise error
    return int(error)


_NOT_CHANGED: Any = object()


def getsockopt_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Check a non-blocking connect when its caller reads SO_ERROR, as asyncio, trio, Tornado and Twisted do.

    SO_ERROR == 0 once the socket is writable is how those event loops learn
    that a connect succeeded; for a self-connected socket that would be a lie.
    The truth is that nothing listens there, so the guard resets the socket
    (RST: the port is free at once) and reports ECONNREFUSED instead. Every
    other getsockopt() costs a tuple comparison on top of the wrapt call.
    """
    if args != _SO_ERROR or kwargs or _options is None:
        return wrapped(*args, **kwargs)
    err = wrapped(*args)
    if err or (delegated is not None and delegated.get()):
        return err
    try:
        if _type(instance) != _SOCK_STREAM or _family(instance) not in _INET_FAMILIES:
            return err
    except TypeError:  # gevent's class: its connects are blocking-style, checked in connect()
        return err
    try:
        local = _getsockname(instance)
        # A kernel-picked port always lies in the ephemeral range; any other
        # port was bound by someone on purpose, and is not ours to judge.
        if not _low <= local[1] <= _high and not in_refreshed_range(local[1]):
            return err
        peer = _getpeername(instance)
    except OSError:
        return err  # ENOTCONN: still in progress (SO_ERROR is read again later), or gone
    next(_events.checked)
    if local[:2] != peer[:2] or instance in _user_bound or instance in _handed_back:
        return err
    if _settle_without_retry(instance, local, local, "getsockopt(SO_ERROR)", _options) is False:
        return 0
    return errno.ECONNREFUSED


def bind_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Remember sockets bound to an explicit port (after the stdlib accepted the address)."""
    result = wrapped(*args, **kwargs)
    if args:
        address = args[0]
        if type(address) is tuple and len(address) >= 2 and type(address[1]) is int and address[1] != 0:
            try:
                _user_bound.add(instance)
            except TypeError:
                pass  # a socket class without weakref support: cannot remember it
    return result
