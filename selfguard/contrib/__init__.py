"""Optional exporters of selfguard's counters; each module needs its extra (selfguard[prometheus], selfguard[otel])."""

from __future__ import annotations


def missing_extra(module: str, extra: str, exc: ImportError) -> ModuleNotFoundError:
    """The error to raise when an exporter's library is not installed: it says how to add it from here.

    From an index, `pip install 'selfguard[EXTRA]'`; installed from a clone, a wheel
    or a git URL, that would fetch some other selfguard (or none), so the hint names
    the extra's own requirements instead (selfguard._origin).
    """
    try:
        from .._origin import extra_command

        command = extra_command(extra)
    except Exception:  # the hint must not hide the error it explains
        command = f"pip install 'selfguard[{extra}]'"
    error = ModuleNotFoundError(
        f"selfguard.contrib.{module} needs {exc.name or 'its library'}, which is not installed: {command}",
        name=exc.name,
    )
    error.__cause__ = exc
    return error
