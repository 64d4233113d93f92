"""asyncio: retry self-connects of loop.sock_connect (so create_connection, open_connection) transparently."""

from __future__ import annotations

import errno
import sys

import wrapt

from . import _events, _guard
from ._errors import SelfConnectError
from ._events import Event

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
    if _guard._options is None or _patched is not None:
        return
    if _guard.delegated is None:
        import contextvars

        _guard.delegated = contextvars.ContextVar("selfguard_delegated", default=False)
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

    The same rules as for blocking sockets (_guard._retry): reset in place,
    at most `retries` more attempts, then SelfConnectError -- and a spurious
    EADDRNOTAVAIL is retried too. Knowing the dialled port, the check costs one
    getsockname(); the SO_ERROR check below stands back meanwhile.
    """
    options = _guard._options
    if options is None or kwargs or len(args) != 2:
        return await wrapped(*args, **kwargs)
    sock, address = args
    port = _guard.port_of(address)
    if not port:
        return await wrapped(sock, address)  # not an INET address: the stdlib's error
    delegated = _guard.delegated
    assert delegated is not None  # created by _patch()
    token = delegated.set(True)
    try:
        attempt = 1
        while True:
            try:
                await wrapped(sock, address)
            except OSError as exc:
                if not (
                    exc.errno == errno.EADDRNOTAVAIL
                    and options.retry_addrnotavail
                    and sock not in _guard._user_bound
                    and (_guard._low <= port <= _guard._high or _guard.in_refreshed_range(port))
                ):
                    raise
                _events.publish(Event("addrnotavail", API, None, address, attempt))
                if attempt > options.retries:
                    raise
                reason = "EADDRNOTAVAIL"
            except BaseException:
                # Cancelled (a timeout, a happy-eyeballs race lost) just as the
                # connect completed: a self-connected socket closed as it is
                # would keep the server's port in TIME_WAIT. Reset it first.
                if _guard._low <= port <= _guard._high:
                    local = _guard._self_connected(sock, port)
                    if local is not None:
                        _guard.resolve_self_connect(sock, local, address, API, options.retries + 1, options)
                raise
            else:
                if not _guard._low <= port <= _guard._high and not _guard.in_refreshed_range(port):
                    return None  # a kernel-picked port never equals one outside the range
                local = _guard._self_connected(sock, port)
                if local is None:
                    return None
                retry = _guard.resolve_self_connect(sock, local, address, API, attempt, options)
                if retry is None:
                    raise SelfConnectError(address, attempt)
                if not retry:
                    return None
                reason = "self-connect"
            attempt += 1
            _events.publish(Event("retry", API, None, address, attempt, reason))
    finally:
        delegated.reset(token)
