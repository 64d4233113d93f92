"""The native guard seen from Python: where the LD_PRELOAD library is, how to preload it, what it counted.

selfguard/_preload/preload.c is built into selfguard/_preload/libselfguard_preload.so
when the package is installed (where a C compiler exists). `selfguard run --native --
CMD` puts it first in LD_PRELOAD, so every dynamically linked program of CMD's process
tree -- libpq, libcurl, Node, the JVM, Python itself -- connects through it, with the
Python guard's policy and SELFGUARD* settings.

In a Python process that has both guards, the native one sits below: every connect of
Python's socket module goes through libc, so it meets a self-connect first. Each
self-connect is decided and counted once: the Python guard leaves alone what the native
guard decided (handed_back(), watches()), and stats() adds the native counters
(merge()).

Cheap to import (os only): ctypes is imported on the first question about this process's
library, never by `import selfguard`. Nothing here raises but Unavailable, on purpose.
"""

from __future__ import annotations

import os

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, Optional

LIBRARY_NAME = "libselfguard_preload.so"
NOT_BUILT = "not-built.txt"  # setup.py leaves the reason there when the library could not be built
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_preload", LIBRARY_NAME)
MODES = ("enforce", "relent", "observe")  # the library's mode numbers, in order

# Said in `selfguard run --help` and in docs/native.md.
CANNOT_REACH = (
    "statically linked programs (Go binaries, musl-static builds), setuid and setgid programs "
    "(the loader ignores LD_PRELOAD for them) and programs that make raw system calls"
)

# The flags selfguard_native_fd_flags() reports for an fd.
_FD_HANDED = 8

_UNSET: Any = object()
_exports: Any = _UNSET  # the library's functions in this process, or None when it is not loaded


class Unavailable(Exception):
    """The native guard cannot be used from here: the message says what is missing, in one line."""


def missing_reason() -> str:
    """Why the library is not there, and what to do about it, from where selfguard was installed."""
    import shutil

    from . import _origin

    found = _origin.origin()
    said = f"the native guard is not in this selfguard ({LIBRARY} is missing; installed {found.describe()})"
    try:  # what the build said when it failed (setup.py leaves it there)
        with open(os.path.join(os.path.dirname(LIBRARY), NOT_BUILT)) as f:
            said += f"; its build failed: {f.read().strip()}"
    except OSError:
        pass
    reinstall = _origin.reinstall_command(found)
    candidates = [os.environ.get("CC", "").split(" ")[0], "cc", "gcc", "clang"]
    compiler = next((path for path in map(shutil.which, filter(None, candidates)) if path), None)
    if found.kind == "archive" and found.where.endswith(".whl"):
        return f"{said}. To get it, {reinstall}"  # a wheel installs as it was built
    if compiler is None:
        return (
            f"{said}. No C compiler is here (cc, gcc or clang): install one (Debian, Ubuntu: apt-get install gcc; "
            f"Alpine: apk add gcc musl-dev; RHEL: dnf install gcc), then rebuild it: {reinstall}"
        )
    return f"{said}. A C compiler is here now ({compiler}): rebuild it with {reinstall} (-v shows the build)"


def library_path() -> str:
    """The built library's absolute path; raises Unavailable (saying what is missing) when it was not built."""
    if not os.path.isfile(LIBRARY):
        raise Unavailable(missing_reason())
    return LIBRARY


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    """*environ* with the library first in LD_PRELOAD; entries already there are kept after it, as they were.

    Raises Unavailable when the library was not built, or when its path cannot be
    written in LD_PRELOAD (which separates entries with spaces and colons).
    """
    path = library_path()
    if any(c in path for c in " :\t\n"):
        raise Unavailable(
            f"cannot preload {path}: LD_PRELOAD separates its entries with spaces and colons, and this path "
            "contains one; install selfguard where its path has neither"
        )
    env = dict(environ)
    existing = env.get("LD_PRELOAD", "")
    if path in existing.replace(":", " ").split():
        return env  # already preloaded (a `selfguard run --native` inside another)
    env["LD_PRELOAD"] = f"{path}:{existing}" if existing else path
    return env


def _load() -> Any:
    """The library's functions, looked up among the objects loaded in this process; None when it is not one."""
    global _exports
    if _exports is _UNSET:
        try:
            import ctypes

            process = ctypes.CDLL(None)
            stats = process.selfguard_native_stats  # AttributeError: not loaded here
            stats.argtypes = (ctypes.POINTER(ctypes.c_uint64), ctypes.c_int)
            stats.restype = ctypes.c_int
            names = process.selfguard_native_counter_names
            names.argtypes = ()
            names.restype = ctypes.c_char_p
            settings = process.selfguard_native_settings
            settings.argtypes = (ctypes.POINTER(ctypes.c_int), ctypes.c_int)
            settings.restype = ctypes.c_int
            fd_flags = process.selfguard_native_fd_flags
            fd_flags.argtypes = (ctypes.c_int,)
            fd_flags.restype = ctypes.c_int
            reset = process.selfguard_native_reset_stats
            reset.argtypes = ()
            reset.restype = None
            _exports = (ctypes, stats, names().decode().split(), settings, fd_flags, reset)
        except Exception:
            _exports = None
    return _exports


def counters() -> Optional[dict[str, int]]:
    """The native guard's counters in this process (the names of stats()), or None when it is not loaded here."""
    exports = _load()
    if exports is None:
        return None
    try:
        ctypes, stats, names = exports[:3]
        values = (ctypes.c_uint64 * len(names))()
        stats(values, len(names))
        return dict(zip(names, (int(v) for v in values)))
    except Exception:
        return None


def settings() -> Optional[dict[str, Any]]:
    """The native guard's settings in this process, or None when it is not loaded here.

    enabled: False when SELFGUARD turned it off; mode, retries, retry_addrnotavail:
    as SELFGUARD_* set them when the process started.
    """
    exports = _load()
    if exports is None:
        return None
    try:
        ctypes, settings_of = exports[0], exports[3]
        values = (ctypes.c_int * 5)()
        settings_of(values, 5)
        return {
            "enabled": bool(values[0]),
            "mode": MODES[values[1]],
            "retries": int(values[2]),
            "retry_addrnotavail": bool(values[3]),
        }
    except Exception:
        return None


def reset_counters() -> None:
    """Set the native guard's counters in this process back to zero (nothing when it is not loaded)."""
    exports = _load()
    if exports is not None:
        exports[5]()


def said_by_the_native_guard(variable: str) -> bool:
    """The Python guard is about to warn about a bad value of *variable*: did the native guard say it already?

    In a process with both guards, one mistake gets one warning: True means the
    native guard said it (stay silent); False means it had not, and now will not.
    Imports ctypes: called only on the warning path, and never raises.
    """
    if not os.environ.get("LD_PRELOAD"):
        return False  # the library can only be here preloaded: no ctypes to find out
    try:
        import ctypes

        claim = ctypes.CDLL(None).selfguard_native_claim_warning  # AttributeError: not loaded here
        claim.argtypes = (ctypes.c_char_p,)
        claim.restype = ctypes.c_int
        return bool(claim(variable.encode()))
    except Exception:
        return False


def merge(python: Mapping[str, int], native: Optional[Mapping[str, int]]) -> dict[str, int]:
    """The Python guard's counters with the native guard's added: each event counted once.

    Each self-connect, retry, EADDRNOTAVAIL and fault is seen by one guard only (the
    Python guard leaves alone what the native one decided), so those add up. "checked"
    does not: every connect the Python guard examines went through libc, where the
    native guard examined it too, so the larger of the two is the number of connects
    examined.
    """
    merged = dict(python)
    for name, value in (native or {}).items():
        if name == "checked":
            merged[name] = max(merged.get(name, 0), value)
        else:
            merged[name] = merged.get(name, 0) + value
    return merged


def _fd_flags(sock: Any) -> int:
    exports = _load()
    if exports is None:
        return -1
    try:
        return int(exports[4](sock.fileno()))
    except Exception:
        return -1


def handed_back(sock: Any) -> bool:
    """Did the native guard find *sock* connected to itself and hand it back (observe, relent, a failed reset)?

    Then it has counted and decided that self-connect: the Python guard must not
    judge or count it again. Costs a ctypes call: ask only on a self-connect.
    """
    flags = _fd_flags(sock)
    return flags >= 0 and bool(flags & _FD_HANDED)


def watches(sock: Any) -> bool:
    """Does the native guard watch *sock*'s connects (loaded, on, and the fd within what it tracks)?

    Then an EADDRNOTAVAIL that reaches Python is one it already counted and retried as
    its settings say. Costs a ctypes call: ask only on an EADDRNOTAVAIL.
    """
    return _fd_flags(sock) >= 0


def mode_in(pid: int) -> Optional[str]:
    """The mode the native guard in process *pid* runs in, read from /proc/PID/environ as the library reads it.

    SELFGUARD_MODE unset or blank: enforce; a bad value: observe (the library's fallback,
    as _config's). None when the environment cannot be read.
    """
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except (OSError, ValueError, OverflowError):
        return None
    from ._config import _ascii, _parse_mode

    raw: Optional[str] = None
    for entry in environ:
        if entry.startswith(b"SELFGUARD_MODE="):
            raw = entry[len(b"SELFGUARD_MODE=") :].decode("utf-8", "replace")
            break  # getenv() takes the first
    if raw is None or not _ascii(raw, strict=False):
        return "enforce"
    try:
        return _parse_mode(raw)
    except ValueError:
        return "observe"


def active_in(pid: int) -> bool:
    """Tell whether the native guard is loaded in process *pid* and was not switched off there (SELFGUARD=0).

    Reads /proc/PID/maps (the library mapped, whichever selfguard installation it comes
    from) and /proc/PID/environ (the environment the library read at start; when it
    cannot be read, loaded counts as active). Never raises: False for a process that
    does not exist or may not be inspected.
    """
    try:
        with open(f"/proc/{int(pid)}/maps", "rb") as f:
            maps = f.read()
    except (OSError, ValueError, OverflowError):
        return False
    if b"/" + LIBRARY_NAME.encode() not in maps:
        return False
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return True
    for entry in environ:
        if entry.startswith(b"SELFGUARD="):
            from ._config import _FALSE

            return entry[len(b"SELFGUARD=") :].decode("utf-8", "replace").strip().lower() not in _FALSE
    return True
