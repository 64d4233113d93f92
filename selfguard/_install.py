"""install() and uninstall(): putting the wrappers on socket.socket and taking them off exactly."""

from __future__ import annotations

import _thread
import os
import socket
import sys
import types

import wrapt

# Every module install() needs is imported here, none inside it: under the
# sitecustomize a fork can land while another thread installs, and a child
# that then imports a module the parent was half-way through would hang.
from . import _config, _loops, _state
from ._connect import bind_wrapper, make_connect_wrapper
from ._fastopen import make_send_wrapper
from ._nonblocking import getsockopt_wrapper

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_WRAPPERS: dict[str, Callable[..., Any]] = {
    "connect": make_connect_wrapper("connect"),
    "connect_ex": make_connect_wrapper("connect_ex"),
    "getsockopt": getsockopt_wrapper,
    "bind": bind_wrapper,
    "sendto": make_send_wrapper("sendto"),
    "sendmsg": make_send_wrapper("sendmsg"),
}
lock = _thread.RLock()
# (class, name) -> (the FunctionWrapper we put there, what vars() held before).
# socket.socket; gevent's socket class (once imported, monkey-patched or not);
# the event loops' connecting methods.
_patched: dict[tuple[type, str], tuple[Any, Any]] = {}
_ABSENT: Any = object()


def install(**options: Any) -> bool:
    """Guard every TCP connect of this process against self-connection.

    Options (see the README for each, and SELFGUARD_* for the environment
    variables): mode, retries, retry_addrnotavail. Explicit arguments win over
    the environment, which wins over the defaults. Calling install() again
    replaces the options, each resolved afresh. Returns False, changing
    nothing, when SELFGUARD is set to 0/false/off.
    """
    with lock:
        if not _config.enabled():
            return False  # the operator's off switch: not even the arguments are looked at
        activate(_config.resolve(options))
        return True


def activate(options: _config.Options) -> None:
    """Patch the current socket.socket class (where not yet patched) and put *options* in force."""
    with lock:
        cls = socket.socket
        for name, wrapper in _WRAPPERS.items():
            if not _is_stand_in(vars(cls).get(name)):
                wrap(cls, name, wrapper)
        _state.set_options(options)
        # After the options, so the stand-ins' waiting callers go through the guard.
        for name, wrapper in _WRAPPERS.items():
            wrap(cls, name, wrapper)
        _loops.watch()  # uvloop's stand-ins too, if it is imported
        _forget_stand_ins()  # the sitecustomize is done; stand-ins left on other classes go


def wrap(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    """Put *wrapper* around cls.name, unless ours is still there; uninstall() takes it off.

    A stand-in of selfguard's sitecustomize is replaced by the guard's
    wrapper in one store. A connect in another thread meets either the
    stand-in -- which waits for `lock`, then goes through the guard -- or the
    wrapper; the attribute is never absent, so never the bare method.
    """
    with lock:
        key = (cls, name)
        if key in _patched and not _reachable(key):
            del _patched[key]  # someone removed the chain ours was in
        if key in _patched:
            return
        current = vars(cls).get(name, _ABSENT)
        if _is_stand_in(current):
            # The method the stand-in hides: the one the class inherits.
            hidden = next(vars(klass)[name] for klass in cls.__mro__[1:] if name in vars(klass))
            ours = wrapt.FunctionWrapper(hidden, wrapper)
            setattr(cls, name, ours)
            _patched[key] = (ours, _ABSENT)  # uninstall() deletes it: the inherited method again
        else:
            _patched[key] = (wrapt.wrap_function_wrapper(cls, name, wrapper), current)


def uninstall() -> None:
    """Restore socket.socket (and the event loops) exactly as they were; a patch someone applied on top survives."""
    with lock:
        _forget_stand_ins()
        _state.set_options(None)
        for key, (ours, before) in list(_patched.items()):
            cls, name = key
            if vars(cls).get(name) is ours:
                if before is _ABSENT:
                    # connect is inherited from _socket.socket: deleting our
                    # attribute restores the original itself, not a copy.
                    delattr(cls, name)
                else:
                    setattr(cls, name, before)
                del _patched[key]
            elif not _reachable(key):
                del _patched[key]  # someone already removed it
            # Otherwise someone wrapped ours: removing it would remove theirs
            # too. Ours stays in their chain as a passthrough (no options) and the next install() reuses it.


def _reachable(key: tuple[type, str]) -> bool:
    """Tell whether our wrapper is still on its class, directly or inside other wrappers."""
    cls, name = key
    ours = _patched[key][0]
    current = vars(cls).get(name)
    for _ in range(100):  # wrappers of wrappers; bounded in case of a cycle
        if current is ours:
            return True
        current = getattr(current, "__wrapped__", None)
        if current is None:
            return False
    return False


def _is_stand_in(attribute: Any) -> bool:
    """Tell whether *attribute* is a stand-in of selfguard's sitecustomize, waiting for the first connect."""
    # type(), not getattr() alone: a wrapt proxy someone put around a stand-in
    # answers for the stand-in's attributes, and it is theirs to keep.
    return type(attribute) is types.FunctionType and getattr(attribute, "_selfguard_deferred", False) is True


def bootstrap() -> Any:
    """selfguard's sitecustomize module in this process, if it runs here (an older copy registers as sitecustomize)."""
    return sys.modules.get("_selfguard_sitecustomize") or sys.modules.get("sitecustomize")


def _forget_stand_ins() -> None:
    # selfguard's sitecustomize may have put stand-ins on socket classes that
    # wait for the first connect to install the guard: install() replaces
    # them on socket.socket, and uninstall() takes them off, for good.
    forget = getattr(bootstrap(), "selfguard_forget", None)
    if forget is not None:
        forget()


_guards_for: dict[tuple[Any, str], Any] = {}


def guard_for(original: Any, name: str) -> Any:
    """The guard's wrapper around *original* (a method of a socket class), for the sitecustomize's stand-ins."""
    key = (original, name)
    guard = _guards_for.get(key)
    if guard is None:
        guard = _guards_for[key] = wrapt.FunctionWrapper(original, wrapper_for(name))
    return guard


def wrapper_for(name: str) -> Callable[..., Any]:
    """The guard's wrapper for a method named *name*: a socket class's, or an event loop's."""
    return _WRAPPERS[name] if name in _WRAPPERS else _loops.wrapper_for(name)


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock would leave it held for good.
    global lock
    lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def status() -> str:
    """Tell how this process is guarded: "active", "armed" or "off".

    "active": the guard's wrappers are on socket.socket. "armed": selfguard's
    sitecustomize has put its stand-ins there, and the first connect,
    connect_ex or bind will install the guard and go through it. "off":
    neither (never installed, uninstalled, or SELFGUARD=0).
    """
    if _state.state.options is not None:
        return "active"
    # SELFGUARD switched off after start-up: the first connect's install() will do nothing.
    switched_off = os.environ.get("SELFGUARD", "").strip().lower() in _config._FALSE
    if not switched_off and any(_is_stand_in(vars(socket.socket).get(name)) for name in _WRAPPERS):
        return "armed"
    return "off"


def is_installed() -> bool:
    """Tell whether every TCP connect of this process is guarded: status() is "active" or "armed"."""
    return status() != "off"
