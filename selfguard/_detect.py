"""What an address and a socket tell: the port dialled, and whether a socket is connected to itself."""

from __future__ import annotations

import _socket
import operator
import socket
import sys

from . import _events
from ._state import in_range, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# The C-level accessors: socket.socket.family and .type build an enum on every
# read (~1 us each); these return the plain int. They raise TypeError for
# socket classes that do not derive from _socket.socket (gevent's).
_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__
_getsockname = _socket.socket.getsockname
_getpeername = _socket.socket.getpeername
INET_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_BUILTIN_METHOD = type(len)  # a bound method of a C class, as wrapt hands it over
# Measured on 3.9-3.13: from 3.11 on, `sock.getsockopt(1, optname=4)` words its
# TypeError "socket.getsockopt() ...", as a call through the class does; before,
# "getsockopt() ...", as the bound method wrapt hands over does.
_KEYWORD_ERRORS_NAME_THE_CLASS = sys.version_info >= (3, 11)


def port_of(address: Any) -> int:
    """The port of a (host, port, ...) address as the socket module reads it, or 0 when it has none.

    The stdlib takes any tuple subclass (a namedtuple) and any port with
    __index__ (an IntEnum, numpy.int64), so this does too. A port that will
    not convert answers 0: the stdlib then raises its own error for it.
    """
    if type(address) is not tuple and not isinstance(address, tuple):
        return 0
    # tuple's own methods: the stdlib reads a tuple subclass's items directly,
    # so an overriding __len__ or __getitem__ must not run here either.
    if tuple.__len__(address) < 2:
        return 0
    port = tuple.__getitem__(address, 1)
    if type(port) is int:
        return port
    try:
        return operator.index(port)
    except Exception:
        return 0


def call_as_the_stdlib(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Pass a call the guard has nothing to do with through, with the stdlib's own outcome.

    A keyword call of _socket.socket's C method through its bound method
    words its TypeError "getsockopt() takes ...", the stdlib (3.11 on)
    "socket.getsockopt() takes ...": such calls then go through the class's
    method, as without the guard.
    """
    bound = kwargs and _KEYWORD_ERRORS_NAME_THE_CLASS and type(wrapped) is _BUILTIN_METHOD
    if bound and getattr(wrapped, "__self__", None) is instance:
        return getattr(_socket.socket, wrapped.__name__)(instance, *args, **kwargs)
    return wrapped(*args, **kwargs)


def kind(sock: Any) -> Any:
    """The socket's type as a plain int, or None for an object that is no socket (the stdlib then rejects it)."""
    try:
        return _type(sock)
    except TypeError:  # a socket class not derived from _socket.socket (gevent's), or no socket at all
        return getattr(sock, "type", None)


def is_inet(sock: Any) -> bool:
    """Tell whether *sock* is an AF_INET or AF_INET6 socket (the only families that can self-connect)."""
    try:
        return _family(sock) in INET_FAMILIES
    except TypeError:
        return int(sock.family) in INET_FAMILIES


def self_connected(sock: Any, port: int = 0, local: Optional[tuple[Any, ...]] = None) -> Optional[tuple[Any, ...]]:
    """Return the local address if the connected *sock* is connected to itself, else None.

    *port* is the port that was dialled, when the caller knows it: the peer's
    port is then known, so unless the kernel picked that same port for our
    end this cannot be a self-connect, and one syscall answers. Without it
    (a connect completed out of sight, read through SO_ERROR) the local port
    must be one the kernel picks, inside the ephemeral range. Counts every
    connection it examines in stats()["checked"]. Never raises. *local*, when
    the caller has it already, spares the getsockname().
    """
    if local is None:
        try:
            local = _getsockname(sock) if isinstance(sock, _socket.socket) else sock.getsockname()
        except OSError as exc:
            _events.fault("getsockname after connect", exc)
            return None
    if port:
        next(_events.checked)
        if local[1] != port:
            return None
    elif type(local) is not tuple or len(local) < 2 or not in_range(local[1], sock):
        return None  # not INET, or a port someone bound on purpose: not ours to judge
    # The family is checked only now: AF_VSOCK, AF_TIPC and Bluetooth stream
    # sockets also take (x, int) addresses, but they are rare and not at risk.
    if not is_inet(sock):
        return None
    try:
        peer = _getpeername(sock) if isinstance(sock, _socket.socket) else sock.getpeername()
    except OSError:
        return None  # ENOTCONN: not connected (yet, or any more); not a self-connect
    if not port:
        next(_events.checked)
    if local[:2] != peer[:2] or sock in state.user_bound:
        return None
    return local
