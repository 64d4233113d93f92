"""The guard's options: defaults, SELFGUARD_* variables and install() arguments, checked with their source."""

from __future__ import annotations

import collections
import os
import sys
import warnings

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, NamedTuple, Optional

MODES = ("enforce", "relent", "observe")
MAX_RETRIES = 100

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


if TYPE_CHECKING:

    class _OptionFields(NamedTuple):
        mode: str = "enforce"
        retries: int = 2
        retry_addrnotavail: bool = True

else:  # the same fields and defaults, without importing typing
    _OptionFields = collections.namedtuple(
        "_OptionFields", "mode retries retry_addrnotavail", defaults=("enforce", 2, True)
    )


class Options(_OptionFields):
    """How the guard reacts to a self-connect.

    mode: "enforce" retries and, when every attempt self-connects, raises
        SelfConnectError; "relent" retries and then returns the self-connected
        socket, as Go does; "observe" only counts, logs and notifies listeners.
    retries: how many more attempts after the first (Go: 2).
    retry_addrnotavail: also retry a connect that failed with EADDRNOTAVAIL on
        a kernel-picked port, within the same budget (as Go does).
    """

    __slots__ = ()


def env_name(option: str) -> str:
    return "SELFGUARD_" + option.upper()


def _shorten(raw: str) -> str:
    # A hostile or mistaken value may be megabytes long; the warning only
    # needs enough of it to be recognised.
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


_SPACE = " \t\n\r\f\v\x1c\x1d\x1e\x1f"  # the ASCII characters str.isspace() takes


def _ascii(raw: str, strict: bool = True) -> str:
    """*raw* without ASCII spaces around it. The native guard reads the same
    variables in C, byte by byte: Unicode spaces and digits (which str.strip()
    and int() would take) are invalid for both, so both read one value alike."""
    text = raw.strip(_SPACE)
    if strict and not text.isascii():
        raise ValueError("expected plain ASCII")
    return text


def _parse_bool(raw: str) -> bool:
    value = _ascii(raw).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of " + "/".join(_TRUE + _FALSE))


def _parse_retries(raw: str) -> int:
    try:
        value = int(_ascii(raw))
    except ValueError:
        raise ValueError(f"expected a whole number from 0 to {MAX_RETRIES}") from None
    return _check_retries(value)


def _parse_mode(raw: str) -> str:
    return _check_mode(_ascii(raw).lower())


def _check_retries(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"expected a whole number from 0 to {MAX_RETRIES}")
    return int(value)


def _check_mode(value: Any) -> str:
    if value not in MODES:
        raise ValueError("expected one of " + ", ".join(MODES))
    return str(value)


def _check_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("expected True or False")
    return bool(value)


# A bad SELFGUARD_MODE is a typo of some mode ("strict", "obsreve"); which one
# was meant, nobody can tell. The guard must never surprise, so it takes the
# mode that changes no outcome a program sees -- observe, which only counts
# and logs -- rather than the default, enforce, the one that raises
# SelfConnectError: a cautious rollout that meant observe must not find its
# connects retried and refused. The warning says so; the counters still count.
# Every other bad value falls back to its default (as does an empty one).
_ON_BAD_VALUE: dict[str, tuple[Any, str]] = {
    "mode": ("observe", "observe, not the default enforce: a mistyped mode gets the one that changes no outcome"),
}

# option name -> (parser for environment text, checker for Python values)
_RULES: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]] = {
    "mode": (_parse_mode, _check_mode),
    "retries": (_parse_retries, _check_retries),
    "retry_addrnotavail": (_parse_bool, _check_bool),
}


def resolve(arguments: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None) -> Options:
    """Build Options: explicit arguments, then SELFGUARD_* variables, then defaults.

    A bad argument raises (it is a bug in the caller's code). A bad environment
    value only warns, naming the variable, and the default is used (observe for
    a bad mode: see _ON_BAD_VALUE): a typo in a deployment must never stop an
    interpreter from starting.
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(set(arguments) - set(_RULES))
    if unknown:
        raise TypeError(f"install() got an unexpected keyword argument {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name in Options._fields:
        parse, check = _RULES[name]
        if name in arguments:
            try:
                values[name] = check(arguments[name])
            except ValueError as exc:
                raise ValueError(f"Invalid {name}={_shorten(arguments[name])} from install() argument: {exc}") from None
            continue
        variable = env_name(name)
        raw = environ.get(variable)
        if raw is None or not _ascii(raw, strict=False):
            continue  # unset, or set to nothing: the default, as for SELFGUARD
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            fallback, using = _ON_BAD_VALUE.get(name, (None, ""))
            if fallback is not None:
                values[name] = fallback
            _warn_once(variable, raw, str(exc), using or "the default " + _env_text(Options._field_defaults[name]))
    return Options(**values)


def enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Read the SELFGUARD kill switch: unset or empty means enabled."""
    return _switch("SELFGUARD", environ)


def speedups_enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Read SELFGUARD_SPEEDUPS: whether the C accelerator may be used (unset or empty: yes)."""
    return _switch("SELFGUARD_SPEEDUPS", environ)


def _switch(variable: str, environ: Optional[Mapping[str, str]]) -> bool:
    """An on/off variable whose default is on: a bad value warns and means on."""
    environ = os.environ if environ is None else environ
    raw = environ.get(variable)
    if raw is None or not _ascii(raw, strict=False):
        return True
    try:
        return _parse_bool(raw)
    except ValueError as exc:
        _warn_once(variable, raw, str(exc), "the default on")
        return True


# (variable, value) pairs already warned about: a bad value is reported once
# per process, however often install() runs.
_warned: set[tuple[str, str]] = set()


def forget_warnings() -> None:
    """Warn again about values already warned about (for tests: see selfguard.testing.reset)."""
    _warned.clear()


def _warn_once(variable: str, raw: str, problem: str, using: str) -> None:
    if (variable, raw) in _warned:
        return
    _warned.add((variable, raw))
    from . import _native

    if _native.said_by_the_native_guard(variable):
        return  # one mistake, one warning, in a process with both guards
    message = f"Invalid value {_shorten(raw)} for {variable} environment variable: {problem}; using {using}"
    try:
        # Attributed to the environment, not to a line of code: the fix is in
        # the deployment, and the line that happened to read the variable
        # (inside selfguard's sitecustomize, at the first connect) means
        # nothing to the operator. module="selfguard" keeps filters such as
        # `-W ignore:::selfguard` working.
        warnings.warn_explicit(message, RuntimeWarning, "<environment>", 0, module="selfguard")
    except Exception:
        # Warnings turned into errors (PYTHONWARNINGS=error, pytest's
        # filterwarnings = error) must not decide whether the guard is on:
        # say it in one line instead, and carry on with the default.
        try:
            sys.stderr.write(f"selfguard: {message}\n")
        except Exception:
            pass  # no usable stderr: nobody to tell


def _env_text(value: Any) -> str:
    """A default as it would be written in the environment (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
