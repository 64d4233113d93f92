"""TCP Fast Open: sendto()/sendmsg() with MSG_FASTOPEN connect an unconnected TCP socket without connect().

Linux enables Fast Open for clients by default (net.ipv4.tcp_fastopen=1), so
`sock.sendto(data, MSG_FASTOPEN, address)` dials *address* from a
kernel-picked port, and can self-connect like any connect. A blocking socket
returns once connected and the data sent -- to itself. The guard checks it
then, and the policy decides: the reset drops the data the socket sent
itself, and the retry sends it again, so the caller sees one send.
Non-blocking and timeout-mode sockets get EINPROGRESS from the stdlib; their
connect completes out of sight and is checked where SO_ERROR is read.
"""

from __future__ import annotations

import operator
import socket

from ._detect import call_as_the_stdlib, kind, port_of, self_connected
from ._errors import SelfConnectError
from ._policy import Action, on_self_connect, retried, retrying
from ._state import in_range, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

MSG_FASTOPEN = int(getattr(socket, "MSG_FASTOPEN", 0x20000000))  # linux/socket.h
_SOCK_STREAM = int(socket.SOCK_STREAM)
# Where flags and address stand among each method's positional arguments.
_ARGUMENTS = {"sendto": (1, 2), "sendmsg": (2, 3)}


def _reusable(items: Any) -> Any:
    """*items* if it can be iterated again (a list, a tuple), else its items in a list; anything else as it is."""
    if type(items) in (list, tuple):
        return items
    try:
        return list(items)
    except TypeError:
        return items  # not iterable: the stdlib's TypeError, from the real call


def make_send_wrapper(api: str) -> Callable[..., Any]:
    """Build the wrapper for socket.socket.sendto or .sendmsg: anything but a Fast Open connect passes through."""
    flags_at, address_at = _ARGUMENTS[api]

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs:
            return call_as_the_stdlib(wrapped, instance, args, kwargs)
        if len(args) != address_at + 1 or state.options is None:
            return wrapped(*args)  # sendto(data, address), UDP's usual call: no flags, so no Fast Open
        port = _fast_open_port(instance, args[flags_at], args[address_at])
        if not port:
            return wrapped(*args)
        address = args[address_at]
        if api == "sendmsg":
            # The buffers and ancillary data may be any iterables, read once by
            # each call: a retry must send what the first attempt was given,
            # not an exhausted generator. Read once here instead (the stdlib
            # reads them in order too, and judges their items itself).
            args = (_reusable(args[0]), _reusable(args[1]), *args[2:])
        attempt = 1
        # Marked first: a non-blocking one raises EINPROGRESS here and is checked
        # by the SO_ERROR read that completes it.
        state.pending.add(instance)
        while True:
            try:
                result = wrapped(*args)  # a refused connect raises here, as the stdlib's
            except OSError as exc:
                if attempt > 1:
                    retried(api, address, attempt, True, exc)  # a retry ended it: its one log line
                raise
            state.pending.discard(instance)
            local = self_connected(instance, port)
            if local is None:
                if attempt > 1:
                    retried(api, address, attempt, True, 0)
                return result
            action = on_self_connect(instance, local, address, api, attempt, can_retry=True)
            if action is Action.HAND_BACK:
                return result
            if action is Action.REFUSE:
                raise SelfConnectError(address, attempt)
            attempt += 1
            retrying(api, address, attempt, "self-connect")

    wrapper.__name__ = wrapper.__qualname__ = f"selfguard_{api}"
    return wrapper


def _fast_open_port(sock: Any, flags: Any, address: Any) -> int:
    """The port a Fast Open send dials, when it is one the guard checks; else 0."""
    try:
        if not operator.index(flags) & MSG_FASTOPEN:
            return 0
    except Exception:
        return 0  # not flags the stdlib takes: its own error follows
    if kind(sock) != _SOCK_STREAM:
        return 0
    port = port_of(address)
    return port if port and in_range(port, sock) else 0
