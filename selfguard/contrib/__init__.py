"""Optional exporters of selfguard's counters; each module needs its extra (selfguard[prometheus], selfguard[otel])."""

from __future__ import annotations


def missing_extra(module: str, extra: str, exc: ImportError) -> ModuleNotFoundError:
    """The error to raise when an exporter's library is not installed: it names the extra that brings it."""
    error = ModuleNotFoundError(
        f"selfguard.contrib.{module} needs {exc.name or 'its library'}, which is not installed: "
        f"pip install 'selfguard[{extra}]'",
        name=exc.name,
    )
    error.__cause__ = exc
    return error
