"""Shared fixtures: a clean guard for every test, free ports inside the ephemeral range, forced self-connects."""

from __future__ import annotations

import socket
from typing import Callable, Iterator

import pytest

from selfguard import testing
from selfguard.testing import force_self_connect

# The plain helpers live in helpers.py. These names are also offered here for the
# files that still import them from conftest (test_doctor.py, test_sitecustomize.py).
from helpers import (  # noqa: F401
    ADDRESS_FORMS,
    LINGER_RST,
    ON_CI,
    can_bind,
    close_rst,
    full_backlog_server,
    outcome,
    require,
    require_forcing,
    require_speedups,
)


@pytest.fixture(autouse=True)
def clean_guard() -> Iterator[None]:
    """Every test starts and ends with the guard off, counters at zero and no listeners."""
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def python_wrappers(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() puts the pure-Python wrappers on, not the C accelerator's: for tests that patch the Python code."""
    from selfguard import _install

    monkeypatch.setattr(_install, "_WRAPPERS", _install._PYTHON_WRAPPERS)


@pytest.fixture(params=["C", "Python"])
def both_wrappers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once with the C accelerator's wrappers and once with the pure-Python ones.

    `pytestmark = pytest.mark.usefixtures("both_wrappers")`: the two must give
    the same outcomes, and each the stdlib's. The C run needs the accelerator
    built (it fails on CI without it), unless SELFGUARD_SPEEDUPS turned it off
    for a run of the pure-Python code.
    """
    from selfguard import _install

    if request.param == "Python":
        monkeypatch.setattr(_install, "_WRAPPERS", _install._PYTHON_WRAPPERS)
    else:
        require_speedups()
    return str(request.param)


@pytest.fixture
def needs_forcing() -> None:
    """Skip (fail on CI) unless self-connects can be forced: `pytestmark = pytest.mark.usefixtures("needs_forcing")`."""
    require_forcing()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Return a function giving a fresh port inside the ephemeral range that nothing holds."""
    used: list[int] = []

    def pick() -> int:
        used.append(testing.free_port(avoid=used))
        return used[-1]

    return pick


@pytest.fixture
def forced() -> Callable[..., socket.socket]:
    """Return a factory of TCP sockets whose next connect to *port* self-connects (IP_LOCAL_PORT_RANGE)."""
    require_forcing()
    made: list[socket.socket] = []

    def make(port: int, family: int = socket.AF_INET, timeout: float | None = 5.0) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        force_self_connect(sock, port)
        sock.settimeout(timeout)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        close_rst(sock)
