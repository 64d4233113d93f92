"""What the guard takes from wrapt, without running wrapt's __init__: its compiled wrapper classes.

The guard's wrappers are wrapt FunctionWrappers, and under the sitecustomize
every process pays for getting them at its first connect. `import wrapt`
costs wrapt 2 some 40-50 ms of CPU there: its __init__ imports asyncio
(wrapt.caching, wrapt.synchronization), importlib.metadata (wrapt.importer)
and inspect (wrapt.wrappers), none of which the guard needs. FunctionWrapper
and BoundFunctionWrapper live in the compiled extension wrapt._wrappers,
whose init imports nothing on wrapt 1.x and only wrapt.exceptions (a module
that imports nothing) on wrapt 2.x. So this module loads those two modules
alone, under their real names: a later `import wrapt` finds them in
sys.modules and reuses them, so its FunctionWrapper is the very class the
guard's wrappers derive from. The two functions of wrapt's the guard used,
wrap_object() and register_post_import_hook(), have small equivalents here.

Wherever that is not possible or not the same, `import wrapt` as before:
wrapt imported already, WRAPT_DISABLE_EXTENSIONS set (wrapt then uses its
pure-Python classes, and so must the guard), no compiled extension (a
pure-Python wheel), or anything unexpected while loading.

Everything is loaded when this module is imported, never later: see the
comment at the top of _install.
"""

from __future__ import annotations

import _frozen_importlib as _bootstrap  # importlib's machinery, already loaded: `import importlib` would cost ~0.8 ms
import _frozen_importlib_external as _bootstrap_external
import _imp
import _thread
import builtins
import os
import sys
import types  # loaded with socket (enum imports it): free

# Not `from typing import ...`: typing costs ~2.5 ms to import (see _state).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["BoundFunctionWrapper", "FunctionWrapper", "register_post_import_hook", "wrap_object"]


def _load(spec: Any) -> Any:
    """The module of *spec*, loaded as `import` would, but without importing its parent package."""
    # Under the module's import lock, as `import` does: a thread importing
    # wrapt at the same time either finds ours in sys.modules or we find its.
    with _bootstrap._ModuleLockManager(spec.name):  # type: ignore[attr-defined]
        module = sys.modules.get(spec.name)
        if module is None:
            module = _bootstrap._load_unlocked(spec)  # type: ignore[attr-defined]
        return module


def _extension() -> Any:
    """wrapt._wrappers, loaded without running wrapt's __init__; None where `import wrapt` must provide the classes."""
    if "wrapt" in sys.modules or os.environ.get("WRAPT_DISABLE_EXTENSIONS"):
        return None
    package = _bootstrap._find_spec("wrapt", None)  # type: ignore[attr-defined]  # as `import` finds it, on any finder
    locations = getattr(package, "submodule_search_locations", None)
    if not locations:
        return None
    spec = _bootstrap._find_spec("wrapt._wrappers", locations)  # type: ignore[attr-defined]
    if spec is None or not isinstance(spec.loader, _bootstrap_external.ExtensionFileLoader):
        return None  # a pure-Python wrapt
    # wrapt 2's extension imports wrapt.exceptions at init: load it first
    # (it imports nothing). wrapt 1.x has no such module, and its extension
    # imports nothing.
    exceptions = _bootstrap._find_spec("wrapt.exceptions", locations)  # type: ignore[attr-defined]
    if exceptions is not None:
        _adopted.append(_load(exceptions))
    spec.loader = _ExtensionLoader(spec.loader)
    extension = _load(spec)
    _adopted.append(extension)
    if "wrapt" in sys.modules:  # imported meanwhile (another thread, or an extension unlike the ones seen)
        return None
    return extension


class _ExtensionLoader:
    """wrapt's extension loader, except that what the extension imports at init it gets from sys.modules.

    The extension imports wrapt.exceptions with PyImport_ImportModule(),
    which imports the package "wrapt" first -- running wrapt's __init__, all
    of it -- even with wrapt.exceptions in sys.modules. It does so through
    the __import__ of the builtins of the Python frame that runs the
    extension's init: that frame is _run_extension_init's, whose builtins
    have an __import__ that answers from sys.modules. Only this one call
    sees it; the process's builtins stay as they are.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # wrapt's own, as after `import wrapt`
        _run_extension_init(module)


def _from_sys_modules(
    name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
) -> Any:  # builtins' names, as __import__ is called with keywords at times
    """__import__, but a wrapt module in sys.modules is answered without importing its package."""
    module = sys.modules.get(name) if level == 0 and name.startswith("wrapt.") else None
    return module if module is not None else builtins.__import__(name, globals, locals, fromlist, level)


def _run_extension_init(module: Any) -> None:
    _imp.exec_dynamic(module)


# The same function with globals of its own, whose builtins have the __import__ above.
_run_extension_init = types.FunctionType(
    _run_extension_init.__code__,
    {"__builtins__": dict(vars(builtins), __import__=_from_sys_modules), "_imp": _imp},
)


# The submodules of wrapt loaded here without their package: `import wrapt`
# reuses them but, finding them in sys.modules, does not make them attributes
# of the package (wrapt.exceptions.WrapperNotFoundError). Done by a hook, below.
_adopted: list[Any] = []


def _adopt(package: Any) -> None:
    """Make the submodules loaded here attributes of the wrapt package, as `import wrapt.<name>` would have."""
    for module in _adopted:
        child = module.__name__.rpartition(".")[2]
        if sys.modules.get(module.__name__) is module and not hasattr(package, child):
            setattr(package, child, module)


def _classes() -> tuple[Any, Any]:
    try:
        extension = _extension()
    except Exception:  # anything unexpected: wrapt itself knows how to load its classes
        extension = None
    if extension is not None:
        functions, bound = getattr(extension, "FunctionWrapper", None), getattr(extension, "BoundFunctionWrapper", None)
        if isinstance(functions, type) and isinstance(bound, type):
            return functions, bound
    import wrapt  # at this module's import, as before this module existed: never inside install()

    if _adopted:
        _adopt(wrapt)
    return wrapt.FunctionWrapper, wrapt.BoundFunctionWrapper


def wrap_object(owner: Any, name: str, factory: Callable[..., Any], args: tuple[Any, ...] = ()) -> Any:
    """wrapt.wrap_object(owner, name, factory, args): put factory(what owner.name finds, *args) on *owner*; return it.

    On a class, what it holds or inherits (looked up in the __dict__s along
    its MRO, so not bound), as wrapt's resolve_path() finds it.
    """
    original = _MISSING
    if isinstance(owner, type):
        original = next((vars(klass)[name] for klass in owner.__mro__ if name in vars(klass)), _MISSING)
    if original is _MISSING:
        original = getattr(owner, name)
    wrapper = factory(original, *args)
    try:  # what wrapt 2's unwrap_object() consults to remove it faithfully; wrapt 1.x has no such method
        wrapper.__self_setattr__("__wrapt_wrap_object_created_slot__", name not in vars(owner))
    except (AttributeError, TypeError):
        pass
    setattr(owner, name, wrapper)
    return wrapper


_MISSING: Any = object()

# module name -> hooks waiting for its import (wrapt.register_post_import_hook's registry).
_hooks: dict[str, list[Callable[[Any], object]]] = {}
_hooks_lock = _thread.RLock()


def register_post_import_hook(hook: Callable[[Any], object], name: str) -> None:
    """wrapt.register_post_import_hook(hook, name): call hook(module) once module *name* is imported; now if it is.

    As wrapt does it, with no way to unregister: a finder, first on
    sys.meta_path, has each module waited for executed by a loader that then
    calls its hooks.
    """
    global _finder
    with _hooks_lock:
        if _finder is None:
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)  # a duck-typed finder
        module = sys.modules.get(name)
        if module is None:
            _hooks.setdefault(name, []).append(hook)
    if module is not None:
        hook(module)  # outside the lock, as wrapt does: the hook may import, or start a thread that registers


def _notify(module: Any) -> None:
    with _hooks_lock:
        hooks = _hooks.pop(getattr(module, "__name__", ""), [])
    for hook in hooks:
        hook(module)


class _NotifyingLoader:
    """The loader found for a module waited for: loads it with that loader, then calls its hooks."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        # The module keeps its own loader, not this one, for whoever reads it
        # later (tracebacks, inspect, importlib.reload), as wrapt's does.
        if getattr(module, "__loader__", None) is self:
            try:
                module.__loader__ = self._loader
            except AttributeError:
                pass
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        self._loader.exec_module(module)
        _notify(module)

    def __getattr__(self, name: str) -> Any:  # get_source() and friends
        return getattr(self._loader, name)


class _PostImportFinder:
    """Finds a module that hooks wait for as the rest of sys.meta_path does, with a loader that calls them."""

    def __init__(self) -> None:
        # (thread, module) asking the rest of sys.meta_path right now: a finder
        # there that asks the whole of sys.meta_path again gets None from here.
        self._busy: set[tuple[int, str]] = set()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _hooks:
            return None
        key = (_thread.get_ident(), name)
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            spec = None
            for finder in list(sys.meta_path):
                find_spec = getattr(finder, "find_spec", None) if finder is not self else None
                spec = find_spec(name, path, target) if find_spec is not None else None
                if spec is not None:
                    break
        finally:
            self._busy.discard(key)
        loader = getattr(spec, "loader", None)
        # A loader without exec_module (the legacy load_module protocol) is left as it is: its module gets no hooks.
        if loader is not None and hasattr(loader, "exec_module") and not isinstance(loader, _NotifyingLoader):
            spec.loader = _NotifyingLoader(loader)  # type: ignore[union-attr]
        return spec


_finder: _PostImportFinder | None = None


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock would leave it held for good. Imports nothing.
    global _hooks_lock
    _hooks_lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)

if TYPE_CHECKING:
    from wrapt import BoundFunctionWrapper, FunctionWrapper
else:
    FunctionWrapper, BoundFunctionWrapper = _classes()
if "wrapt" not in sys.modules and _adopted:
    register_post_import_hook(_adopt, "wrapt")
