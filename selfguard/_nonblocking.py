"""Non-blocking connects completed out of the guard's sight: read through SO_ERROR, or by connecting again.

asyncio, trio, Tornado and Twisted start a connect that returns EINPROGRESS
and learn its outcome later: from getsockopt(SO_ERROR) once the socket is
writable, or (gevent, Twisted) from a second connect() that returns 0 or
EISCONN. For a self-connected socket "success" would be a lie. Nobody waits
there to connect again, so the policy is asked with no retry: the truth,
ECONNREFUSED, once the socket is reset (RST: the port is free at once).
"""

from __future__ import annotations

import _socket
import errno
import socket
import sys

from ._detect import call_as_the_stdlib, self_connected
from ._errors import SelfConnectError
from ._policy import Action, on_self_connect
from ._state import state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_SO_ERROR = (socket.SOL_SOCKET, socket.SO_ERROR)
_type = _socket.socket.type.__get__
_SOCK_STREAM = int(socket.SOCK_STREAM)
_REFUSED_BYTES = errno.ECONNREFUSED.to_bytes(4, sys.byteorder)


def connected_without_blocking(sock: Any, port: int, address: Any, api: str, result: Any) -> Any:
    """A non-blocking connect reported success: check it like a completed one, but with no retry."""
    if state.delegated.get():
        return result  # asyncio's sock_connect checks it itself, and can retry
    state.pending.discard(sock)  # checked here: a later SO_ERROR read is no connect to check
    local = self_connected(sock, port)
    if local is None or on_self_connect(sock, local, address, api, 1, can_retry=False) is Action.HAND_BACK:
        return result
    if api == "connect_ex":
        return errno.ECONNREFUSED
    raise SelfConnectError(address, 1)


def getsockopt_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Check a non-blocking connect when its caller reads SO_ERROR (also with a buflen: then bytes).

    Every other getsockopt() costs a tuple comparison on top of the wrapt call.
    """
    if kwargs:
        return call_as_the_stdlib(wrapped, instance, args, kwargs)
    # The usual read, (SOL_SOCKET, SO_ERROR) exactly (asyncio's), is told apart
    # without slicing; a slice only when there is a buflen.
    if (args != _SO_ERROR and (len(args) != 3 or args[:2] != _SO_ERROR)) or state.options is None:
        return wrapped(*args)
    value = wrapped(*args)
    # With a buflen the kernel's int comes back as bytes: all zero means no error.
    if (value if type(value) is int else any(value)) or state.delegated.get():
        return value
    try:
        if _type(instance) != _SOCK_STREAM:
            return value
    except TypeError:
        # gevent's class. Its blocking connects read SO_ERROR inside their own
        # loop, and the connect wrapper checks (and retries) them once they
        # return; only a socket the user made non-blocking is checked here.
        if getattr(instance, "type", None) != _SOCK_STREAM or instance.gettimeout() != 0.0:
            return value
    if not state.pending.discard(instance) and type(instance).__weakrefoffset__:
        # No non-blocking connect of the guard's in flight: a read on a socket
        # that is connected (and was checked) already, or never dialled a port
        # the guard checks. A class that can't be remembered is checked at
        # every read, as before.
        return value
    local = self_connected(instance)
    if local is None:
        return value
    if on_self_connect(instance, local, local, "getsockopt(SO_ERROR)", 1, can_retry=False) is Action.HAND_BACK:
        return value
    return errno.ECONNREFUSED if type(value) is int else _REFUSED_BYTES[: len(value)]
