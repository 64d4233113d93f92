"""Event loops: the wrappers of asyncio's and uvloop's connects (put on by _install when their module is imported)."""

from __future__ import annotations

import _socket
import errno

from . import _events
from ._accel import speedups
from ._detect import port_of, self_connected
from ._errors import SelfConnectError
from ._policy import Action, on_addrnotavail, on_self_connect, retried, retrying
from ._state import in_range, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

API = "loop.sock_connect"
_EADDRNOTAVAIL = errno.EADDRNOTAVAIL
_socket_class = _socket.socket
_getsockname = _socket.socket.getsockname
_sockname_port = speedups.sockname_port if speedups is not None else None


def wrapper_for(method: str) -> Callable[..., Any]:
    """The guard's wrapper for an event loop's *method* (sock_connect, create_connection); see _install.wrapper_for."""
    if method == "create_connection":
        from ._uvloop import create_connection

        return create_connection
    return sock_connect


async def sock_connect(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Await the real sock_connect; when it connected the socket to itself, retry on the same socket.

    The policy decides, as for blocking sockets: reset in place, at most
    `retries` more attempts, then SelfConnectError; a spurious EADDRNOTAVAIL
    is retried too. Knowing the dialled port, the check costs one
    getsockname(); the SO_ERROR check stands back meanwhile.
    """
    if kwargs or len(args) != 2 or state.options is None:
        return await wrapped(*args, **kwargs)
    sock, address = args
    # The usual (host, int port) form is read here, every other one by port_of().
    usual = type(address) is tuple and len(address) > 1 and type(address[1]) is int
    port = address[1] if usual else port_of(address)
    if not port:
        return await wrapped(sock, address)  # not an INET address: the stdlib's error
    token = state.delegated.set(True)
    try:
        attempt = 1
        met_itself = False  # for the one log line: did any attempt connect to itself?
        while True:
            try:
                await wrapped(sock, address)
            except OSError as exc:
                if exc.errno != _EADDRNOTAVAIL or (
                    on_addrnotavail(sock, port, address, API, attempt, can_retry=True) is not Action.RETRY
                ):
                    if attempt > 1:
                        retried(API, address, attempt, met_itself, exc)
                    raise
                reason = "EADDRNOTAVAIL"
            except BaseException as exc:
                # Cancelled (a timeout, a happy-eyeballs race lost) just as the
                # connect completed: a self-connected socket closed as it is
                # would keep the server's port in TIME_WAIT. Nobody will retry.
                local = self_connected(sock, port) if in_range(port, sock) else None
                if local is not None:
                    on_self_connect(sock, local, address, API, attempt, can_retry=False)
                elif attempt > 1:
                    retried(API, address, attempt, met_itself, exc)
                raise
            else:
                # The cached range answers without a call; in_range() only for a port outside it.
                if not (state.low <= port <= state.high or in_range(port, sock)):
                    return None  # a kernel-picked port never equals one outside the range
                # self_connected(), its common case inline: the socket's own
                # port differs from the one dialled (counted as it counts it).
                # With the C accelerator, the port alone (no address tuple
                # built); its 0 (not INET) or an error leaves it to self_connected().
                local, local_port = None, 0
                if isinstance(sock, _socket_class):
                    try:
                        if _sockname_port is not None:
                            local_port = _sockname_port(sock.fileno())
                        else:
                            local = _getsockname(sock)
                            local_port = local[1]
                    except (OSError, ValueError):
                        local_port = 0  # self_connected() asks again, and reports the fault
                    if local_port and local_port != port:
                        next(_events.checked)
                        if attempt > 1:
                            retried(API, address, attempt, met_itself, 0)
                        return None
                local = self_connected(sock, port, local)
                if local is None:
                    if attempt > 1:
                        retried(API, address, attempt, met_itself, 0)
                    return None
                met_itself = True
                action = on_self_connect(sock, local, address, API, attempt, can_retry=True)
                if action is Action.REFUSE:
                    raise SelfConnectError(address, attempt)
                if action is Action.HAND_BACK:
                    return None
                reason = "self-connect"
            attempt += 1
            retrying(API, address, attempt, reason)
    finally:
        try:
            state.delegated.reset(token)
        except ValueError:
            # Closed outside the task's context (coroutine.close() from
            # elsewhere, or the garbage collector once a torn-down loop's task
            # is dropped): the flag was set in the task's context, never in
            # this one, so there is nothing here to undo.
            pass
