"""Event loops: guard asyncio's, uvloop's and gevent's connects, each patched when its module is imported."""

from __future__ import annotations

import errno
import sys

import wrapt

from ._detect import port_of, self_connected
from ._errors import SelfConnectError
from ._policy import Action, on_addrnotavail, on_self_connect, retrying
from ._state import in_range, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

API = "loop.sock_connect"
# module -> (the class in it that connects, its methods to wrap). uvloop.Loop is
# a Python subclass of its compiled loop, so its methods can be wrapped like
# asyncio's; its sock_connect calls the Python socket's connect() and
# getsockopt(), so the same wrapper retries there, while create_connection
# connects in libuv and needs a wrapper of its own (_uvloop). gevent's socket
# class (gevent.socket.socket, used directly by geventhttpclient and other
# gevent-native clients, and socket.socket itself once monkey-patched) holds a
# _socket.socket and connects through it, out of socket.socket's wrappers'
# sight: it gets the same wrappers as socket.socket, with or without monkey-patching.
_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "asyncio.selector_events": ("BaseSelectorEventLoop", ("sock_connect",)),
    "uvloop": ("Loop", ("sock_connect", "create_connection")),
    "gevent._socket3": ("socket", ("connect", "connect_ex", "getsockopt", "bind", "sendto", "sendmsg")),
}
_hooked: set[str] = set()


def watch() -> None:
    """Patch each event loop now if its module is imported, else as soon as it is.

    install() must not import asyncio, uvloop or gevent itself: that would
    cost ~30 ms in every process that never uses them (and a sitecustomize
    runs in all of them).
    """
    for name in _TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _patch(module)
        elif name not in _hooked:
            _hooked.add(name)  # wrapt offers no way to unregister; the hook checks the state
            wrapt.register_post_import_hook(_patch, name)


def _patch(module: Any) -> None:
    from . import _install

    class_name, methods = _TARGETS[module.__name__]
    cls = getattr(module, class_name, None)
    with _install.lock:
        if state.options is None or cls is None:
            return
        for method in methods:
            _install.wrap(cls, method, _install.wrapper_for(method))


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
    if state.options is None or kwargs or len(args) != 2:
        return await wrapped(*args, **kwargs)
    sock, address = args
    port = port_of(address)
    if not port:
        return await wrapped(sock, address)  # not an INET address: the stdlib's error
    token = state.delegated.set(True)
    try:
        attempt = 1
        while True:
            try:
                await wrapped(sock, address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                if on_addrnotavail(sock, port, address, API, attempt, can_retry=True) is not Action.RETRY:
                    raise
                reason = "EADDRNOTAVAIL"
            except BaseException:
                # Cancelled (a timeout, a happy-eyeballs race lost) just as the
                # connect completed: a self-connected socket closed as it is
                # would keep the server's port in TIME_WAIT. Nobody will retry.
                local = self_connected(sock, port) if in_range(port, sock) else None
                if local is not None:
                    on_self_connect(sock, local, address, API, attempt, can_retry=False)
                raise
            else:
                if not in_range(port, sock):
                    return None  # a kernel-picked port never equals one outside the range
                local = self_connected(sock, port)
                if local is None:
                    return None
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
