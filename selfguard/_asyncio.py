"""asyncio: retry self-connects of loop.sock_connect (so create_connection, open_connection) transparently."""

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
    from typing import Any, Callable, Optional

API = "loop.sock_connect"
_MODULE = "asyncio.selector_events"
_hook_registered = False
# (class, our FunctionWrapper, what vars() held before) while patched
_patched: Optional[tuple[type, Any, Any]] = None


def watch() -> None:
    """Patch asyncio's selector loop now if asyncio is imported, else as soon as it is.

    install() must not import asyncio itself: that would cost ~30 ms in every
    process that never uses it (and a sitecustomize runs in all of them).
    """
    global _hook_registered
    module = sys.modules.get(_MODULE)
    if module is not None:
        _patch(module)
    elif not _hook_registered:
        _hook_registered = True  # wrapt offers no way to unregister; the hook checks the state
        wrapt.register_post_import_hook(_patch, _MODULE)


def _patch(module: Any) -> None:
    global _patched
    if state.options is None or _patched is not None:
        return
    cls = module.BaseSelectorEventLoop
    before = vars(cls)["sock_connect"]
    _patched = (cls, wrapt.wrap_function_wrapper(cls, "sock_connect", _sock_connect), before)


def unpatch() -> None:
    global _patched
    if _patched is None:
        return
    cls: Any = _patched[0]
    ours, before = _patched[1:]
    if vars(cls).get("sock_connect") is ours:
        cls.sock_connect = before  # a plain function: putting it back is exact
        _patched = None
    # Otherwise someone wrapped ours: it stays, a passthrough while uninstalled.


async def _sock_connect(
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
                local = self_connected(sock, port) if in_range(port) else None
                if local is not None:
                    on_self_connect(sock, local, address, API, attempt, can_retry=False)
                raise
            else:
                if not in_range(port):
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
        state.delegated.reset(token)
