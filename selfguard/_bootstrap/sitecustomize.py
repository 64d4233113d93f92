"""selfguard's sitecustomize: guard every TCP connect of this interpreter, without editing the program.

Deploy it where the interpreter finds a sitecustomize (site-packages, a
directory on PYTHONPATH) or let `selfguard run` put it there; see
sitecustomize_example/README.md. It costs nothing in a process that never
imports socket: selfguard (and wrapt) are only imported, and install() only
called, right after the program's first `import socket`. SELFGUARD=0 (or
false/off/no) turns it off; SELFGUARD_* configure it as they configure
install(). It never stops an interpreter: a failure is reported on stderr
and swallowed. A sitecustomize further along sys.path (Debian ships one)
still runs.

Kept compatible with old interpreters that may inherit PYTHONPATH from
`selfguard run`: no syntax newer than Python 3.6.
"""

import os
import sys


def _selfguard_report(exc: BaseException) -> None:
    sys.stderr.write(f"selfguard: not active in this process: {type(exc).__name__}: {exc}\n")


def _selfguard_install() -> None:
    try:
        import selfguard

        selfguard.install()
    except Exception as exc:  # selfguard missing in this interpreter, or a bug of ours
        _selfguard_report(exc)


class _SelfguardAfterSocket:
    """A meta path finder that, on the first import of socket, runs install() right after it."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "socket":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]  # once is enough; the finders below must not see us
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if getattr(spec, "loader", None) is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _SelfguardThenInstall(spec.loader)
                return spec
        return None


class _SelfguardThenInstall:
    """Loads socket with the real loader, then installs the guard."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        _selfguard_install()

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
    if "socket" in sys.modules:
        _selfguard_install()
    else:
        sys.meta_path.insert(0, _SelfguardAfterSocket())  # type: ignore[arg-type]  # a duck-typed finder


try:
    _selfguard_boot()
except Exception as _exc:  # never stop an interpreter from starting
    _selfguard_report(_exc)
_selfguard_next_sitecustomize()
