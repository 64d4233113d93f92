"""selfguard's sitecustomize: guard every TCP connect of this interpreter, without editing the program.

Deploy it where the interpreter finds a sitecustomize (site-packages, a
directory on PYTHONPATH) or let `selfguard run` put it there; see
sitecustomize_example/README.md. SELFGUARD=0 (or false/off/no) turns it off;
SELFGUARD_* configure it as they configure install(). It never stops an
interpreter: a failure is reported on stderr and swallowed. A sitecustomize
further along sys.path (Debian ships one) still runs.

It costs nothing in a process that never connects: when the program imports
socket, it only puts small stand-ins on socket.socket's connect, connect_ex
and bind; the first call of one of them imports selfguard (and wrapt), runs
install() and carries on through the guard. Installing any earlier -- while
socket itself is being imported -- would import wrapt in the middle of
whatever module imported socket, and wrapt 2 imports asyncio, inspect and
email, which can be exactly the modules half-way through their own import
(`import urllib.request` is one such chain).

Kept compatible with old interpreters that may inherit PYTHONPATH from
`selfguard run`: no syntax newer than Python 3.6.
"""

import _thread
import os
import sys

_SELFGUARD_DEFERRED = ("connect", "connect_ex", "bind")
_selfguard_lock = _thread.RLock()
_selfguard_classes: "list[type]" = []  # classes carrying the stand-ins


def _selfguard_report(exc: BaseException) -> None:
    sys.stderr.write(f"selfguard: not active in this process: {type(exc).__name__}: {exc}\n")


def _selfguard_activate() -> None:
    """Take the stand-ins off and install the guard (first connect, connect_ex or bind of the process)."""
    with _selfguard_lock:
        if not _selfguard_classes:
            return  # another thread was first
        for cls in _selfguard_classes:
            for name in _SELFGUARD_DEFERRED:
                if getattr(vars(cls).get(name), "_selfguard_deferred", False):
                    delattr(cls, name)
        del _selfguard_classes[:]
        try:
            from selfguard import _install

            _install.install()
        except Exception as exc:  # selfguard missing in this interpreter, or a bug of ours
            _selfguard_report(exc)


def _selfguard_stand_in(name: str) -> object:
    def stand_in(self: object, *args: object, **kwargs: object) -> object:
        _selfguard_activate()
        return getattr(self, name)(*args, **kwargs)  # now the guard's wrapper (or the original)

    stand_in._selfguard_deferred = True  # type: ignore[attr-defined]
    stand_in.__name__ = name
    return stand_in


def selfguard_defer(cls: type) -> None:
    """Put the stand-ins on *cls* (socket.socket; gevent's class too, after its monkey-patching)."""
    with _selfguard_lock:
        if cls in _selfguard_classes:
            return
        for name in _SELFGUARD_DEFERRED:
            if name in vars(cls):  # someone patched it already: leave theirs alone, guard through it later
                continue
            setattr(cls, name, _selfguard_stand_in(name))
        _selfguard_classes.append(cls)


class _SelfguardAfterSocket:
    """A meta path finder that, on the first import of socket, puts the stand-ins on socket.socket."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "socket":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]  # once is enough; the finders below must not see us
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if getattr(spec, "loader", None) is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _SelfguardThenDefer(spec.loader)
                return spec
        return None


class _SelfguardThenDefer:
    """Loads socket with the real loader, then puts the stand-ins on its socket class."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        try:
            selfguard_defer(module.socket)  # type: ignore[attr-defined]
        except Exception as exc:
            _selfguard_report(exc)

    def __getattr__(self, name: str) -> object:  # get_source() and friends, for tracebacks and inspect
        return getattr(self._loader, name)


def _selfguard_next_sitecustomize() -> None:
    """Run the sitecustomize that this file hides, if there is one further along sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    later = False
    for entry in sys.path:
        directory = os.path.abspath(entry or os.curdir)
        if not later:
            later = directory == here
            continue
        candidate = os.path.join(directory, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                code = compile(f.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate, "__builtins__": __builtins__})
            return


def _selfguard_boot() -> None:
    if os.environ.get("SELFGUARD", "").strip().lower() in ("0", "false", "off", "no"):
        return  # the off switch: not even the import hook
    socket_module = sys.modules.get("socket")
    if socket_module is not None:
        selfguard_defer(socket_module.socket)
    else:
        sys.meta_path.insert(0, _SelfguardAfterSocket())  # type: ignore[arg-type]  # a duck-typed finder


try:
    _selfguard_boot()
except Exception as _exc:  # never stop an interpreter from starting
    _selfguard_report(_exc)
_selfguard_next_sitecustomize()
