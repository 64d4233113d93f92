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
install() -- which puts the guard's wrappers where the stand-ins are -- and
carries on through the guard. Installing any earlier -- while socket itself
is being imported -- would import wrapt in the middle of whatever module
imported socket, and wrapt 2 imports asyncio, inspect and email, which can
be exactly the modules half-way through their own import (`import
urllib.request` is one such chain).

Old interpreters may inherit PYTHONPATH from `selfguard run`: the file keeps
to Python 3.6 syntax, and before 3.9 it says in one line that the guard is not
active and only runs the sitecustomize it hides.
"""

import _thread
import os
import sys

TYPE_CHECKING = False  # not `from typing import ...`: typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Any

# module -> (class, the methods that connect or bind). uvloop dials in C, so
# its loop's own methods wait too; they are inherited from its compiled base,
# as socket.socket's are from _socket.socket. gevent's socket class connects
# through a _socket.socket of its own, never through socket.socket's methods.
_SELFGUARD_DEFERRED = {
    "socket": ("socket", ("connect", "connect_ex", "bind", "sendto", "sendmsg")),
    "uvloop": ("Loop", ("create_connection", "sock_connect")),
    "gevent._socket3": ("socket", ("connect", "connect_ex", "bind", "sendto", "sendmsg")),
}
_selfguard_lock = _thread.RLock()  # guards the list below; always taken last (after selfguard's own lock)
_selfguard_stand_ins: "list[tuple[type, str]]" = []  # where stand-ins sit
_selfguard_settled = False  # the first call happened, or install()/uninstall() took over
_selfguard_importing = False  # whether a first call is importing selfguard right now
# Threads inside a first call (importing selfguard, installing) right now. A
# signal handler that sends or connects there re-enters a stand-in on the
# same thread, with selfguard half imported: that call passes through.
_selfguard_first_calls: "set[int]" = set()


def _selfguard_say(line: str) -> None:
    # Never raises: stderr may be closed (sys.stderr is None, `2>&-`) or broken.
    try:
        sys.stderr.write(line)
    except Exception:
        pass


def _selfguard_report(exc: BaseException) -> None:
    _selfguard_say(f"selfguard: not active in this process: {type(exc).__name__}: {exc}\n")


def _selfguard_uninstalled(exc: BaseException) -> bool:
    """Is selfguard itself gone (pip uninstall) while this deployed copy stayed, and nobody asked for the guard?

    Then every process would print a line at its first connect about a package the
    operator removed on purpose: it stays quiet. SELFGUARD=1 (true, on, yes) says the
    guard is wanted here, and then its absence is reported. Always reported: a
    selfguard there but broken (wrapt missing, say), and the copy inside selfguard's
    own package (`selfguard run`), which exists, so this interpreter is the wrong one.
    """
    if not (isinstance(exc, ModuleNotFoundError) and exc.name == "selfguard"):
        return False
    if os.path.basename(os.path.dirname(os.path.abspath(__file__))) == "_bootstrap":
        return False
    wanted = os.environ.get("SELFGUARD", "").strip(" \t\n\r\f\v\x1c\x1d\x1e\x1f").lower()
    return wanted not in ("1", "true", "on", "yes")


def _selfguard_is_stand_in(attribute: object) -> bool:
    # type(), not getattr() alone: a wrapt proxy someone put around a stand-in
    # answers for the stand-in's attributes, and it is theirs, not ours.
    return type(attribute) is type(_selfguard_report) and getattr(attribute, "_selfguard_deferred", False) is True


def selfguard_forget() -> None:
    """Take every stand-in off: install() or uninstall() took over, or the first call failed.

    selfguard's install() calls it once it has put its wrappers where the
    stand-ins were, uninstall() to leave socket.socket bare. A stand-in
    someone kept a reference to (or patched over) still works: see below.
    """
    global _selfguard_settled
    with _selfguard_lock:
        for cls, name in _selfguard_stand_ins:
            if _selfguard_is_stand_in(vars(cls).get(name)):
                delattr(cls, name)
        del _selfguard_stand_ins[:]
        _selfguard_settled = True


def _selfguard_guard_is_on() -> bool:
    """Install the guard unless that happened already (once, whichever thread comes first); tell whether it is on.

    Each call of a stand-in asks: the process's first connect, connect_ex or
    bind; calls in other threads that came in meanwhile, which wait for that
    install to finish; and, later, calls through a stand-in that someone
    kept a reference to or patched over.
    """
    if _selfguard_settled:  # selfguard is imported by now, or could not be (and that was said)
        installer: Any = sys.modules.get("selfguard._install")
        if installer is None:
            return False
        return _selfguard_install(installer)
    thread = _thread.get_ident()
    if thread in _selfguard_first_calls:
        # Re-entered by a signal handler (a statsd-style UDP heartbeat on
        # SIGALRM) while this thread imports selfguard or installs it: the
        # half-imported selfguard cannot guard this call, and taking it for
        # a broken one would switch the guard off for good. This call goes
        # on unguarded; the first call still installs the guard.
        return False
    _selfguard_first_calls.add(thread)
    try:
        return _selfguard_first_call()
    finally:
        _selfguard_first_calls.discard(thread)


def _selfguard_first_call() -> bool:
    global _selfguard_importing
    _selfguard_importing = True
    try:
        from selfguard import _install as installer
    except Exception as exc:  # selfguard missing in this interpreter, or broken
        with _selfguard_lock:
            if not _selfguard_settled:
                if not _selfguard_uninstalled(exc):
                    _selfguard_report(exc)
                selfguard_forget()
        return False
    finally:
        _selfguard_importing = False
    return _selfguard_install(installer)


def _selfguard_install(installer: "Any") -> bool:
    try:
        with installer.lock:  # the order of the two locks is always: selfguard's, then ours
            if not _selfguard_settled:
                try:
                    installer.install()  # puts the guard's wrappers where the stand-ins are, then forgets them
                except Exception as exc:
                    _selfguard_report(exc)
                selfguard_forget()  # whatever happened, the stand-ins are done
            # Whether the guard is on, whatever sits on the class now: a call
            # that comes through a stand-in (kept, or put back) is guarded then.
            guard_is_on = getattr(installer, "guard_is_on", None)  # an older selfguard has only is_installed()
            return (guard_is_on() if guard_is_on is not None else installer.is_installed()) is True
    except Exception as exc:  # a selfguard of another version than this file: the connect goes on without it
        with _selfguard_lock:
            if not _selfguard_settled:
                _selfguard_report(exc)
                selfguard_forget()
        return False


def _selfguard_stand_in(cls: type, name: str) -> object:
    # The method the stand-in hides, found where the class would find it
    # without the stand-in. Calls go on through that method (with the guard
    # around it), never through getattr(self, name): a subclass
    # (ssl.SSLSocket) or a patch on top would otherwise run twice.
    hidden = next(vars(klass)[name] for klass in cls.__mro__[1:] if name in vars(klass))

    def stand_in(self: object, *args: object, **kwargs: object) -> object:
        if self is None:  # socket.socket.sendto(None, ...): the stdlib's TypeError, which names NoneType
            return hidden(self, *args, **kwargs)
        method = hidden
        if _selfguard_guard_is_on():
            try:
                from selfguard import _install

                method = _install.guard_for(hidden, name)
            except Exception:  # a selfguard of another version than this file: the call goes on without it
                pass
        return method.__get__(self, type(self))(*args, **kwargs)

    stand_in._selfguard_deferred = True  # type: ignore[attr-defined]
    stand_in.__name__ = name
    # Where it is found, so that pickle finds it there, as it finds the stdlib's method.
    stand_in.__module__, stand_in.__qualname__ = cls.__module__, f"{cls.__qualname__}.{name}"
    stand_in.__doc__ = hidden.__doc__  # help(socket.socket.connect) reads as without the guard
    stand_in.__wrapped__ = hidden  # type: ignore[attr-defined]  # so inspect.signature() answers as for the method
    return stand_in


def selfguard_defer(cls: type, names: "tuple[str, ...]" = _SELFGUARD_DEFERRED["socket"][1]) -> None:
    """Put the stand-ins on *cls* (socket.socket; gevent's class too, after its monkey-patching; uvloop.Loop)."""
    with _selfguard_lock:
        if _selfguard_settled:
            return
        for name in names:
            if name in vars(cls):  # someone patched it already: leave theirs alone
                continue
            setattr(cls, name, _selfguard_stand_in(cls, name))
            _selfguard_stand_ins.append((cls, name))


def _selfguard_after_fork_in_child() -> None:
    global _selfguard_lock
    # A fork while another thread held the lock would leave it held for good.
    _selfguard_lock = _thread.RLock()
    # Only this thread went on into the child; another's id may come back on a new thread.
    _selfguard_first_calls.intersection_update((_thread.get_ident(),))
    if _selfguard_importing:
        # Forked while another thread was importing selfguard and wrapt: the
        # child inherits their module import locks, held by a thread it does
        # not have, so importing them here would hang. Stand aside instead.
        _selfguard_report(RuntimeError("forked while another thread was importing selfguard"))
        selfguard_forget()


def _selfguard_defer_in(module: object) -> None:
    """Put the stand-ins on the class of *module* (socket, uvloop) that connects."""
    class_name, names = _SELFGUARD_DEFERRED[module.__name__]  # type: ignore[attr-defined]
    selfguard_defer(getattr(module, class_name), names)


class _SelfguardAfterSocket:
    """A meta path finder that, on the first import of socket (and uvloop), puts the stand-ins on its class."""

    def __init__(self) -> None:
        # Threads inside find_spec right now. A finder that asks the rest of
        # sys.meta_path, as this one does, asks this one back; answering
        # None then ends what would otherwise recurse until RecursionError.
        self._busy: set[int] = set()  # not evaluated (in a function), so fine on 3.6

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        thread = _thread.get_ident()
        if name not in _SELFGUARD_DEFERRED or name in sys.modules or thread in self._busy or _selfguard_settled:
            return None
        self._busy.add(thread)
        try:
            for finder in list(sys.meta_path):
                if finder is self:  # type: ignore[comparison-overlap]
                    continue
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec(name, path, target) if find_spec else None
                if spec is not None:
                    loader = getattr(spec, "loader", None)
                    hookable = loader is not None and hasattr(loader, "exec_module")
                    if hookable and not _selfguard_hook(loader, name, self):
                        spec.loader = _SelfguardThenDefer(loader, self)  # a loader that takes no attribute
                    return spec
        finally:
            self._busy.discard(thread)
        return None


def _selfguard_after_exec(module: object, finder: object) -> None:
    # Only now, the module really imported, is the finder done with it (a
    # mere importlib.util.find_spec() probe must not retire it).
    if all(name in sys.modules for name in _SELFGUARD_DEFERRED) and finder in sys.meta_path:
        sys.meta_path.remove(finder)
    try:
        _selfguard_defer_in(module)
    except Exception as exc:
        _selfguard_report(exc)


def _selfguard_hook(loader: object, name: str, finder: object) -> bool:
    """Have *loader* put the stand-ins on once it has executed module *name*; tell whether it could.

    The spec and its loader stay what the import system made -- tools read
    source through them (importlib.util.find_spec("socket").loader.get_source,
    jedi) -- so the hook is an exec_module on the loader instance (the path
    finders make one per spec), which takes itself off once the module ran.
    A loader that is a class (frozen modules) or takes no attribute gets
    wrapped instead.
    """
    if isinstance(loader, type):
        return False
    try:
        theirs = vars(loader).get("exec_module")
    except TypeError:  # no __dict__
        return False
    real = loader.exec_module  # type: ignore[attr-defined]

    def exec_module(module: object) -> None:
        if getattr(module, "__name__", None) != name:  # a loader shared by several modules (zipimport)
            real(module)
            return
        try:
            real(module)
        finally:
            if vars(loader).get("exec_module") is exec_module:
                if theirs is None:
                    del loader.exec_module  # type: ignore[attr-defined]
                else:
                    loader.exec_module = theirs  # type: ignore[attr-defined]
        _selfguard_after_exec(module, finder)

    try:
        loader.exec_module = exec_module  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # __slots__, a read-only attribute
        return False
    return True


class _SelfguardThenDefer:
    """Loads socket (or uvloop) with a loader _selfguard_hook could not hook, then puts the stand-ins on its class."""

    def __init__(self, loader: object, finder: object) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        _selfguard_after_exec(module, self._finder)

    def __getattr__(self, name: str) -> object:  # get_source() and friends, for tracebacks and inspect
        return getattr(self._loader, name)


def _selfguard_next_sitecustomize() -> None:
    """Run the sitecustomize that this file hides, if there is one further along sys.path.

    Found as the import system would find it -- a module, a package, bytecode
    only, inside a zip -- and it becomes sys.modules["sitecustomize"], so that
    `import sitecustomize` gives the program its own. A file already run in
    this process (this one reached again through a symlink, or a copy of it
    seen before) is passed over; a copy of this file further along runs,
    finds the hook or the stand-ins of the first in place, and only hands on
    to the next.
    """
    import importlib.machinery

    here = os.path.dirname(os.path.abspath(__file__))
    later = False
    for entry in list(sys.path):
        directory = os.path.abspath(entry or os.curdir)
        if not later:
            later = directory == here
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None:
            continue
        origin = os.path.realpath(spec.origin or directory)
        if origin in _selfguard_ran:
            continue
        # importlib.util.module_from_spec, without importing importlib.util (~4 ms at start-up).
        module = importlib._bootstrap.module_from_spec(spec)
        vars(module)["_selfguard_ran"] = _selfguard_ran  # read by a copy of this file, ignored by any other
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
        return


def _selfguard_required() -> bool:
    """SELFGUARD_REQUIRE (`selfguard run --strict` sets it): whether an interpreter that cannot be guarded must stop."""
    raw = os.environ.get("SELFGUARD_REQUIRE", "").strip(" \t\n\r\f\v\x1c\x1d\x1e\x1f").lower()
    if raw in ("", "0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    # A typo must not stop an interpreter: the default, off, as a bad mode gets the least intrusive one.
    _selfguard_say(
        f"selfguard: Invalid value {raw[:40]!r} for SELFGUARD_REQUIRE environment variable: "
        "expected one of 1/true/on/yes/0/false/off/no; using the default off\n"
    )
    return False


def _selfguard_refuse(why: str) -> None:
    """Stop this interpreter before it runs anything: SELFGUARD_REQUIRE says it must not run unguarded."""
    _selfguard_say(
        f"selfguard: not active in this process: {why}; SELFGUARD_REQUIRE is set (selfguard run --strict), "
        f"so {sys.executable} exits (status 3) instead of running unguarded\n"
    )
    os._exit(3)  # SystemExit here would be "Fatal Python error: init_import_site" and a traceback


def _selfguard_boot() -> None:
    # ASCII spaces only, as selfguard and its native guard read the variable.
    if os.environ.get("SELFGUARD", "").strip(" \t\n\r\f\v\x1c\x1d\x1e\x1f").lower() in ("0", "false", "off", "no"):
        return  # the off switch: not even the import hook
    if sys.version_info < (3, 9):  # noqa: UP036  # this file runs where selfguard itself cannot
        # An old interpreter that inherited PYTHONPATH (from `selfguard run`,
        # say): selfguard cannot run here, so nothing of the hook does either.
        python = ".".join(str(part) for part in sys.version_info[:3])
        if _selfguard_required():
            _selfguard_refuse(f"Python {python} is older than 3.9, which selfguard needs")
        _selfguard_say(
            f"selfguard: not active in this process: Python {python} is older than 3.9, which selfguard needs\n"
        )
        return
    if _selfguard_required():
        # Only when asked: finding the modules costs a walk of sys.path at
        # start-up (importing them would cost more; the first connect does).
        # wrapt too: the one dependency, and the usual half of a broken install.
        import importlib.util

        for name in ("selfguard", "wrapt"):
            if importlib.util.find_spec(name) is None:
                _selfguard_refuse(f"no module named {name!r} in this interpreter")
    if any(type(f).__name__ == "_SelfguardAfterSocket" for f in sys.meta_path):
        return  # a copy of this file earlier on sys.path is waiting for socket: one guard is enough
    os.register_at_fork(after_in_child=_selfguard_after_fork_in_child)
    # Where selfguard finds selfguard_forget and selfguard_defer: the user's
    # own sitecustomize, run after this one, becomes sys.modules["sitecustomize"].
    sys.modules["_selfguard_sitecustomize"] = sys.modules[__name__]
    waiting = False
    for name in _SELFGUARD_DEFERRED:
        module = sys.modules.get(name)
        if module is not None:
            _selfguard_defer_in(module)  # leaves another copy's stand-ins alone
        else:
            waiting = True
    if waiting:
        sys.meta_path.insert(0, _SelfguardAfterSocket())  # type: ignore[arg-type]  # a duck-typed finder


# The sitecustomize files run in this process so far (real paths). A copy of
# this file hands the set on to the file it runs next, so that no file runs
# twice; a copy that is handed it knows an earlier copy has seen to the guard.
_selfguard_chained = "_selfguard_ran" in globals()
_selfguard_ran: "set[str]" = globals().get("_selfguard_ran") or set()
_selfguard_ran.add(os.path.realpath(__file__))
if not _selfguard_chained:
    try:
        _selfguard_boot()
    except Exception as _exc:  # never stop an interpreter from starting
        _selfguard_report(_exc)
_selfguard_next_sitecustomize()
