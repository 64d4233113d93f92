"""install() and uninstall(): putting the wrappers on socket.socket and taking them off exactly."""

from __future__ import annotations

import _thread
import os
import socket
import sys
import types

# Every module install() needs is imported here, none inside it: under the
# sitecustomize a fork can land while another thread installs, and a child
# that then imports a module the parent was half-way through would hang.
from . import _config, _loops, _state, _wrapt
from ._accel import speedups
from ._connect import bind_wrapper, finish, make_connect_wrapper
from ._fastopen import make_send_wrapper
from ._nonblocking import getsockopt_wrapper

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_PYTHON_WRAPPERS: dict[str, Callable[..., Any]] = {
    "connect": make_connect_wrapper("connect"),
    "connect_ex": make_connect_wrapper("connect_ex"),
    "getsockopt": getsockopt_wrapper,
    "bind": bind_wrapper,
    "sendto": make_send_wrapper("sendto"),
    "sendmsg": make_send_wrapper("sendmsg"),
}
# The C wrappers settle the common calls and hand the rest to the Python ones.
_WRAPPERS = (
    _PYTHON_WRAPPERS
    if speedups is None
    else {
        name: speedups.Wrapper(_state.state.fast, getattr(speedups, name.upper()), python, finish)
        for name, python in _PYTHON_WRAPPERS.items()
    }
)


class _BoundMethodWrapper(_wrapt.BoundFunctionWrapper):  # type: ignore[type-arg,misc,unused-ignore]  # generic in wrapt 2, untyped in 1
    """wrapt's bound wrapper, pickled as the stdlib pickles the bound method (a socket is not picklable: TypeError)."""

    def __reduce__(self) -> Any:
        return self.__wrapped__.__reduce__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__wrapped__.__reduce_ex__(protocol)

    # copy.copy() and copy.deepcopy() hand the stdlib's methods back as they are
    # (atomic); wrapt's proxies refuse (NotImplementedError).
    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


class _MethodWrapper(_wrapt.FunctionWrapper):  # type: ignore[type-arg,misc,unused-ignore]  # generic in wrapt 2, untyped in 1
    """The guard's wrapper on a socket class's method.

    wrapt's proxies refuse to be pickled (NotImplementedError), where the
    stdlib's methods pickle by reference: pickle.dumps(socket.socket.connect)
    works without the guard, so it works with it, giving the same bytes.
    """

    __bound_function_wrapper__ = _BoundMethodWrapper
    # What the class held before this wrapper went on (_ABSENT: an inherited
    # method): carried by the wrapper, so that one put back on its class by
    # whoever had saved it is recognised, reused, and undone exactly.
    _self_before: Any

    def __reduce__(self) -> Any:
        return self.__wrapped__.__reduce__()

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__wrapped__.__reduce_ex__(protocol)

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


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
        watch_loops()  # uvloop's stand-ins too, if it is imported
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
        found = _ours_in(current)
        if type(found) is _MethodWrapper:  # ours, put back by whoever had saved it (maybe inside their wrapper)
            _patched[key] = (found, found._self_before)
        elif _is_stand_in(current):
            # The method the stand-in hides: the one the class inherits.
            hidden = next(vars(klass)[name] for klass in cls.__mro__[1:] if name in vars(klass))
            ours = _MethodWrapper(hidden, wrapper)
            ours._self_before = _ABSENT  # uninstall() deletes it: the inherited method again
            setattr(cls, name, ours)
            _patched[key] = (ours, _ABSENT)
        else:
            ours = _wrapt.wrap_object(cls, name, _MethodWrapper, (wrapper,))
            ours._self_before = current
            _patched[key] = (ours, current)


def uninstall() -> None:
    """Restore socket.socket (and the event loops) exactly as they were; a patch someone applied on top survives."""
    with lock:
        _forget_stand_ins()
        _state.set_options(None)
        for key, (ours, before) in list(_patched.items()):
            cls, name = key
            current = vars(cls).get(name)
            if type(current) is _MethodWrapper:  # ours (or an earlier one of ours, put back): it knows what it hid
                before = current._self_before  # noqa: PLW2901
                ours = current  # noqa: PLW2901
            if current is ours:
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
        guard = _guards_for[key] = _MethodWrapper(original, wrapper_for(name))
        guard._self_before = _ABSENT  # never on a class, but every one of ours knows what it hid
    return guard


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


def watch_loops() -> None:
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
            _wrapt.register_post_import_hook(_patch, name)


def _patch(module: Any) -> None:
    class_name, methods = _TARGETS[module.__name__]
    cls = getattr(module, class_name, None)
    with lock:
        if _state.state.options is None or cls is None:
            return
        for method in methods:
            wrap(cls, method, wrapper_for(method))


def wrapper_for(name: str) -> Callable[..., Any]:
    """The guard's wrapper for a method named *name*: a socket class's, or an event loop's."""
    return _WRAPPERS[name] if name in _WRAPPERS else _loops.wrapper_for(name)


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock would leave it held for good.
    global lock
    lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def status() -> str:
    """Tell how this process is guarded: "active", "armed", "displaced" or "off".

    "active": the guard is on and its wrappers are where a connect finds
    them. "armed": selfguard's sitecustomize has put its stand-ins on
    socket.socket, and the first connect, connect_ex or bind will install
    the guard and go through it. "displaced": install() ran, but a connect
    no longer meets the guard -- something put a method it had saved back
    on socket.socket (pytest-socket does at each test's teardown), or
    importlib.reload(socket) made a new class; install() again re-guards.
    "off": none of these (never installed, uninstalled, or SELFGUARD=0).
    """
    with lock:
        if _state.state.options is not None:
            return "active" if displaced() is None else "displaced"
    # SELFGUARD switched off after start-up: the first connect's install() will do nothing.
    switched_off = os.environ.get("SELFGUARD", "").strip().lower() in _config._FALSE
    if not switched_off and any(_is_stand_in(vars(socket.socket).get(name)) for name in _WRAPPERS):
        return "armed"
    return "off"


def is_installed() -> bool:
    """Tell whether every TCP connect of this process is guarded: status() is "active" or "armed"."""
    return status() in ("active", "armed")


def guard_is_on() -> bool:
    """Tell whether install() is in force, whatever sits on the classes now; the sitecustomize's stand-ins ask it."""
    return _state.state.options is not None


def displaced() -> str | None:
    """The first method (as "module.Class.name") where a call would miss the guard's wrapper, or None.

    Asked of the classes themselves, not remembered: the method a call
    finds (through the MRO, as the class finds it) must be ours, a wrapper
    around ours, or a stand-in of the sitecustomize (which goes through the
    guard once it is on).
    """
    with lock:
        cls: type = socket.socket
        targets = [(cls, name) for name in _WRAPPERS]
        targets += [key for key in _patched if key[1] not in _WRAPPERS]  # the event loops' methods
        for klass, name in targets:
            if _ours_in(_found(klass, name)) is None:
                return f"{klass.__module__}.{klass.__qualname__}.{name}"
        return None


def _found(cls: type, name: str) -> Any:
    """cls.name as a lookup on an instance finds it, without binding it."""
    return next((vars(klass)[name] for klass in cls.__mro__ if name in vars(klass)), None)


def _ours_in(attribute: Any) -> Any:
    """The guard's wrapper (or a stand-in) that *attribute* is or wraps, or None."""
    for _ in range(100):  # wrappers of wrappers; bounded in case of a cycle
        if attribute is None:
            return None
        # type(), not isinstance(): a wrapt proxy around ours answers for ours' __class__.
        if type(attribute) is _MethodWrapper or _is_stand_in(attribute):
            return attribute
        attribute = getattr(attribute, "__wrapped__", None)
    return None


def reassert() -> bool:
    """Put the guard's wrappers back where they were displaced, with the options in force; tell whether it did.

    For whoever restores socket methods they saved before install() (the
    pytest plugin calls it around each test). Does nothing unless the guard
    is on and displaced.
    """
    with lock:
        options = _state.state.options
        if options is None or displaced() is None:
            return False
        activate(options)
        return True
