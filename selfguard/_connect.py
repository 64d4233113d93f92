"""The wrappers of socket.connect, connect_ex and bind, and the retry loop of a blocking connect."""

from __future__ import annotations

import _socket
import errno
import math
import socket
import time

from ._detect import kind, port_of, self_connected
from ._errors import SelfConnectError
from ._nonblocking import connected_without_blocking
from ._policy import Action, on_addrnotavail, on_self_connect, retried, retrying
from ._state import in_range, remember, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

# C-level accessors: socket.socket.type builds an enum (~1 us), gettimeout()
# is a method call. They raise TypeError for classes not derived from
# _socket.socket (gevent's).
_type = _socket.socket.type.__get__
_timeout = _socket.socket.timeout.__get__
_monotonic = time.monotonic
_ceil, _nextafter = math.ceil, math.nextafter
_SOCK_STREAM = int(socket.SOCK_STREAM)
_EADDRNOTAVAIL = errno.EADDRNOTAVAIL
_EINPROGRESS = errno.EINPROGRESS
# A retry is a local, immediate connect (~20-60 us on loopback). With less of
# the caller's timeout left than this, no retry is made: the caller is told
# what the last attempt found (EADDRNOTAVAIL as it was, or ECONNREFUSED for a
# self-connect) rather than a timeout the stdlib would never have raised.
MIN_RETRY_BUDGET = 0.001


def make_connect_wrapper(api: str) -> Callable[..., Any]:
    """Build the wrapper for socket.socket.connect or .connect_ex.

    It runs on every connect of the process, so it is written for speed: it
    rejects UDP and unusual calls first, reads only what is already in memory
    before the real call (the user's arguments are left for the stdlib to
    validate, with its own errors), makes the first attempt inline and leaves
    everything rare -- a self-connect, EADDRNOTAVAIL, a non-blocking connect
    -- to other functions. The C accelerator's wrapper (selfguard/_speedups.c)
    does the same steps and calls this one, or finish(), for what it leaves.
    """
    returns_code = api == "connect_ex"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs or len(args) != 1 or state.options is None:
            return wrapped(*args, **kwargs)
        address = args[0]
        try:
            if _type(instance) != _SOCK_STREAM:
                return wrapped(address)
            timeout = _timeout(instance)
        except TypeError:  # not derived from _socket.socket (gevent's class), or no socket at all
            if kind(instance) != _SOCK_STREAM:
                return wrapped(*args)
            timeout = instance.gettimeout()
        # The usual (host, int port) form is read here, every other one by
        # port_of(); the cached range answers without a call (in_range()
        # refreshes it only for ports outside it).
        if type(address) is tuple and len(address) > 1 and type(address[1]) is int:
            port = address[1]
        else:
            port = port_of(address)
            if not port:
                return wrapped(address)
        outside = not (state.low <= port <= state.high or in_range(port))
        if timeout == 0.0:
            # Non-blocking: on Linux the connect returns EINPROGRESS and its
            # outcome is read later from SO_ERROR (checked there, or by the
            # asyncio layer). Passing straight through spares the EINPROGRESS
            # exception a catch and re-raise (~0.4 us inside asyncio); the
            # socket is marked first, so only the SO_ERROR read that completes
            # this connect is checked, not every later one. Outside the cached
            # range only a socket of another namespace is asked about at all.
            if outside and not in_range(port, instance):
                return wrapped(address)
            if not state.delegated.get():
                state.pending.add(instance)
            result = wrapped(address)
            if returns_code and result != 0:
                return result
            # Connected: a loop that completes connects by connecting again
            # (gevent, Twisted) learns it here instead of from SO_ERROR.
            return connected_without_blocking(instance, port, address, api, result)
        if outside:
            # Only a socket of another network namespace, whose range may hold
            # the port, can still self-connect. Asking the socket costs a
            # syscall, so it is asked only once the connect succeeded: a
            # refused one (a reconnect loop) pays nothing.
            result = wrapped(address)
            if (returns_code and result != 0) or not in_range(port, instance):
                return result
        elif returns_code:
            result = wrapped(address)
            if result != 0:
                if result not in (_EADDRNOTAVAIL, _EINPROGRESS):
                    return result
                return _failed(wrapped, instance, address, port, api, timeout, result)
        else:
            try:
                result = wrapped(address)
            except OSError as exc:
                if exc.errno not in (_EADDRNOTAVAIL, _EINPROGRESS):
                    raise
                error: Optional[OSError] = exc
            else:
                error = None
            if error is not None:
                # Outside the except block, so a later attempt's exception is not
                # chained to the first one: callers see it as the stdlib raised it.
                return _failed(wrapped, instance, address, port, api, timeout, error)
        local = self_connected(instance, port)
        if local is None:
            return result
        return _connected_to_itself(wrapped, instance, address, port, api, timeout, result, local)

    wrapper.__name__ = wrapper.__qualname__ = f"selfguard_{api}"
    return wrapper


def finish(wrapped: Callable[..., Any], instance: Any, address: Any, port: int, outcome: Any, outside: bool) -> Any:
    """Go on where the C accelerator's connect wrapper stopped: what follows a real connect it could not settle.

    *outcome* is what the call gave: None or 0 (connected, and the local
    port was the dialled one, or getsockname() failed, or the socket may be
    of another network namespace), or EADDRNOTAVAIL or EINPROGRESS (connect_ex's
    errno, or the OSError connect raised). *outside*: the port is outside the
    cached range. Returns, or raises, what the Python wrapper would have.
    """
    api = "connect_ex" if type(outcome) is int else "connect"
    timeout = _timeout_of(instance)
    if outcome is not None and outcome != 0:
        return _failed(wrapped, instance, address, port, api, timeout, outcome)
    if outside and not in_range(port, instance):
        return outcome
    local = self_connected(instance, port)
    if local is None:
        return outcome
    return _connected_to_itself(wrapped, instance, address, port, api, timeout, outcome, local)


def _connected_to_itself(
    wrapped: Callable[..., Any],
    instance: Any,
    address: Any,
    port: int,
    api: str,
    timeout: Optional[float],
    outcome: Any,
    local: tuple[Any, ...],
) -> Any:
    """A blocking connect that connected *instance* to itself (*local*): retry, or settle as a non-blocking one."""
    if instance in state.pending:
        return connected_without_blocking(instance, port, address, api, outcome)
    code = _retry(wrapped, instance, address, port, api, timeout, local)
    return code if api == "connect_ex" else None


def _failed(
    wrapped: Callable[..., Any],
    instance: Any,
    address: Any,
    port: int,
    api: str,
    timeout: Optional[float],
    error: Union[int, OSError],
) -> Any:
    """A blocking connect that failed with EADDRNOTAVAIL (retried as the policy says) or EINPROGRESS (marked)."""
    if _errno(error) == _EINPROGRESS:
        _started(instance)
        return _fail(error)
    code = _retry(wrapped, instance, address, port, api, timeout, error)
    return code if api == "connect_ex" else None


def _timeout_of(sock: Any) -> Optional[float]:
    try:
        return _timeout(sock)  # type: ignore[no-any-return]
    except TypeError:  # gevent's class
        return sock.gettimeout()  # type: ignore[no-any-return]


def _retry(
    wrapped: Callable[..., Any],
    sock: Any,
    address: Any,
    port: int,
    api: str,
    timeout: Optional[float],
    found: Union[tuple[Any, ...], int, OSError],
) -> int:
    """Handle an attempt that self-connected (*found* is the local address) or hit EADDRNOTAVAIL (the errno or error).

    Asks the policy after each such attempt, and does what it says. Returns 0
    (connected, to someone else unless the policy handed a self-connected
    socket back) or, for connect_ex, an errno; for connect every error is
    raised, the stdlib's own exception where there is one.

    The socket's timeout bounds the whole call, time spent in listeners and
    log handlers included, as Go's dialer has one deadline for everything;
    the clock starts at the first finding, since both reasons to retry are
    local and immediate.
    """
    deadline = None if timeout is None else _monotonic() + timeout
    attempt = 1
    met_itself = False  # for the one log line: did any attempt connect to itself?
    try:
        while True:
            remaining = None if deadline is None else deadline - _monotonic()
            can_retry = remaining is None or remaining >= MIN_RETRY_BUDGET
            if isinstance(found, tuple):
                met_itself = True
                action = on_self_connect(sock, found, address, api, attempt, can_retry)
                if action is Action.REFUSE:
                    return _fail(errno.ECONNREFUSED if api == "connect_ex" else SelfConnectError(address, attempt))
                if action is Action.HAND_BACK:
                    return 0
                reason = "self-connect"
            elif on_addrnotavail(sock, port, address, api, attempt, can_retry) is Action.RETRY:
                reason = "EADDRNOTAVAIL"
            else:
                if attempt > 1:
                    retried(api, address, attempt, met_itself, found)
                return _fail(found)
            attempt += 1
            retrying(api, address, attempt, reason)
            if deadline is not None:
                # Listeners may have spent the rest: the attempt still gets its
                # minimum, so the deadline is overshot by at most that much.
                _settimeout(sock, max(deadline - _monotonic(), MIN_RETRY_BUDGET))
            found = _attempt(wrapped, address, api)
            if found == 0:
                local = self_connected(sock, port)
                if local is None:
                    retried(api, address, attempt, met_itself, 0)
                    return 0
                found = local
            elif _errno(found) != _EADDRNOTAVAIL:
                if _errno(found) == _EINPROGRESS:
                    _started(sock)
                retried(api, address, attempt, met_itself, found)
                return _fail(found)
    finally:
        if timeout is not None and attempt > 1:
            try:
                _settimeout(sock, _same_timeout(sock, timeout))
            except OSError:
                pass  # closed by another thread meanwhile; nothing left to restore


def _settimeout(sock: Any, timeout: float) -> None:
    """Set the socket's timeout as the stdlib keeps it: a subclass's own settimeout() is not the guard's to call."""
    if isinstance(sock, _socket.socket):
        _socket.socket.settimeout(sock, timeout)
    else:
        sock.settimeout(timeout)  # gevent's class keeps its own


def _same_timeout(sock: Any, timeout: float) -> float:
    """The float that settimeout() turns back into the very nanoseconds gettimeout() answered *timeout* from.

    _socket.socket keeps its timeout in integer nanoseconds and rounds a float
    up on the way in: for some values (~0.4% of timeouts given to the
    nanosecond) float(ns) rounds up to ns + 1, so the caller's timeout would
    come back 1 ns longer. One ulp down at a time finds the float that maps
    back. Other classes (gevent's) keep the float itself.
    """
    if not isinstance(sock, _socket.socket):
        return timeout
    nanoseconds = round(timeout * 1e9)
    candidate = timeout
    for _ in range(4):
        if _ceil(candidate * 1e9) == nanoseconds:
            return candidate
        candidate = _nextafter(candidate, 0.0)
    return timeout


def _attempt(wrapped: Callable[..., Any], address: Any, api: str) -> Union[int, OSError]:
    """One more call of the real method: 0, connect_ex's errno, or the exception connect raised."""
    if api == "connect_ex":
        return int(wrapped(address))
    try:
        wrapped(address)
    except OSError as exc:
        return exc
    return 0


def _started(sock: Any) -> None:
    """A connect under a blocking timeout answered EINPROGRESS: the fd itself is non-blocking.

    os.set_blocking(), fcntl(O_NONBLOCK) or socket.socket(fileno=) of a
    non-blocking fd leave gettimeout() at None while the kernel treats the
    socket as non-blocking. Its outcome comes later, from SO_ERROR or a
    connect again, and is checked there as any non-blocking connect's.
    """
    if not state.delegated.get():
        state.pending.add(sock)


def _errno(error: Union[int, OSError]) -> Optional[int]:
    return error if isinstance(error, int) else error.errno


def _fail(error: Union[int, BaseException]) -> int:
    """Raise *error* if it is an exception, else return it as connect_ex's errno."""
    if isinstance(error, BaseException):
        raise error
    return int(error)


def bind_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Remember a socket bound to an explicit port inside the range, once the stdlib accepted the address.

    A connect from it to its own port is deliberate, never the guard's to
    judge. A port outside the range needs no memory: the kernel never picks
    it, and no connect to it is checked (a self-connect there is the user's).
    """
    result = wrapped(*args, **kwargs)
    if args:
        port = port_of(args[0])
        if port and (state.low <= port <= state.high or in_range(port)):
            remember(state.user_bound, instance)
    return result
