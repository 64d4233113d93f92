"""The guard takes wrapt's compiled wrappers without running wrapt's __init__, and a later `import wrapt` is whole.

In real interpreters under the sitecustomize, with the wrapt this run has
(CI runs the suite with wrapt 2.x and with 1.x).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from helpers import under_sitecustomize

FIRST_CONNECT = "import socket, sys; socket.socket().connect_ex(('127.0.0.1', 1))\n"
# What wrapt 2's __init__ imports and the guard does not need (wrapt 1.x's: inspect).
HEAVY = ("wrapt", "wrapt.caching", "wrapt.importer", "asyncio", "inspect", "importlib.metadata")


def _wrapt_has_its_extension() -> bool:
    spec = importlib.util.find_spec("wrapt")
    locations = spec.submodule_search_locations if spec else None
    return bool(locations) and importlib.util.find_spec("wrapt._wrappers") is not None


needs_extension = pytest.mark.skipif(
    not _wrapt_has_its_extension() or bool(os.environ.get("WRAPT_DISABLE_EXTENSIONS")),
    reason="this wrapt has no compiled extension (or it is disabled): the guard imports wrapt itself",
)


@needs_extension
def test_the_first_connect_loads_wrapt_s_extension_and_nothing_of_its_package():
    """No wrapt __init__, asyncio, inspect or importlib.metadata after the first connect; the guard is on."""
    done = under_sitecustomize(
        FIRST_CONNECT + "import selfguard\n"
        f"print(selfguard.status(), [n for n in {HEAVY!r} if n in sys.modules], 'wrapt._wrappers' in sys.modules)"
    )
    assert ("active [] True", "") == (done.stdout.strip(), done.stderr)


LATER_IMPORT = """
import socket, sys
socket.socket().connect_ex(('127.0.0.1', 1))
import wrapt
from selfguard import _install
print(wrapt.FunctionWrapper is _install._MethodWrapper.__mro__[1])
print(wrapt.BoundFunctionWrapper is _install._BoundMethodWrapper.__mro__[1])
print(isinstance(vars(socket.socket)['connect'], wrapt.FunctionWrapper))
print(getattr(wrapt, '_wrappers', None) is sys.modules.get('wrapt._wrappers'))
print(wrapt.__version__ < '2' or wrapt.exceptions is sys.modules['wrapt.exceptions'])

@wrapt.decorator
def plus_one(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs) + 1

@plus_one
def one():
    return 1

print(one(), wrapt.ObjectProxy([1, 2])[1])
calls = []
wrapt.wrap_function_wrapper(socket.socket, 'connect_ex', lambda w, i, a, k: calls.append(a) or w(*a, **k))
socket.socket().connect_ex(('127.0.0.1', 1))
print(len(calls), _install.status())
"""


@needs_extension
def test_a_later_import_wrapt_is_whole_and_shares_the_guard_s_classes():
    """`import wrapt` after the first connect: the same FunctionWrapper, its submodules as attributes, all working."""
    done = under_sitecustomize(LATER_IMPORT)
    assert (["True"] * 5 + ["2 2", "1 active"], "") == (done.stdout.split("\n")[:-1], done.stderr)


def test_with_wrapt_s_extensions_disabled_the_guard_uses_wrapt_s_python_classes():
    """WRAPT_DISABLE_EXTENSIONS: the guard imports wrapt, whose pure-Python FunctionWrapper it then derives from."""
    done = under_sitecustomize(
        FIRST_CONNECT + "import wrapt\nfrom selfguard import _install\n"
        "print(wrapt.FunctionWrapper is _install._MethodWrapper.__mro__[1], 'wrapt._wrappers' in sys.modules,"
        " _install.status())",
        WRAPT_DISABLE_EXTENSIONS="1",
    )
    assert ("True False active", "") == (done.stdout.strip(), done.stderr)


def test_threads_importing_wrapt_during_the_first_connect_get_the_guard_s_classes():
    """`import wrapt` in several threads while others make their first connect: one FunctionWrapper for all."""
    done = under_sitecustomize(
        "import socket, sys, threading\n"
        "barrier = threading.Barrier(8)\n"
        "seen = []\n"
        "def importer():\n"
        "    barrier.wait(); import wrapt; seen.append(wrapt.FunctionWrapper)\n"
        "def connector():\n"
        "    barrier.wait(); socket.socket().connect_ex(('127.0.0.1', 1))\n"
        "threads = [threading.Thread(target=(importer, connector)[i % 2]) for i in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "from selfguard import _install\n"
        "print(len(seen), {_install._MethodWrapper.__mro__[1]} == set(seen), _install.status())"
    )
    assert ("4 True active", "") == (done.stdout.strip(), done.stderr)


def test_a_module_imported_after_install_gets_the_guard_and_keeps_its_own_loader():
    """The post-import hook (asyncio's loop, imported after the first connect) leaves the module's loader as it was."""
    done = under_sitecustomize(
        FIRST_CONNECT + "import asyncio.selector_events as se\n"
        "from selfguard import _install\n"
        "print(type(vars(se.BaseSelectorEventLoop)['sock_connect']) is _install._MethodWrapper,"
        " type(se.__loader__).__name__, type(se.__spec__.loader).__name__,"
        " bool(se.__loader__.get_source('asyncio.selector_events')))"
    )
    assert ("True SourceFileLoader SourceFileLoader True", "") == (done.stdout.strip(), done.stderr)
