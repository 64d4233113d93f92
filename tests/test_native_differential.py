"""The native guard changes no C-level outcome it is not there to change: 1,600+ cases, with and without it.

tests/native/differential.c makes every kind of call the library interposes -- connects
refused, successful, in progress, failing with EADDRNOTAVAIL; from unbound sockets,
sockets bound to port 0, to another port, to the dialled port (on purpose: a
self-connect the guard must leave alone), dup()'d, dup2()'d, dup3()'d, received over a
unix socket or copied with fcntl; bound on purpose through one fd and dialled or read
through another, bound with sa_family AF_UNSPEC, inherited across exec; over IPv4, IPv6
and v4-mapped addresses; blocking and non-blocking, completed by SO_ERROR or by
connecting again; UDP and AF_UNIX; bad fds, addresses and lengths; SO_ERROR reads of
every length; Fast Open sends -- and prints the return value and errno of each (errno
also after a success). The outputs with the library preloaded and without it must be
identical, whatever the guard's settings.

No case may self-connect by chance: the dialled ports inside the ephemeral range are
reserved (ip_local_reserved_ports) in the test's namespace, so the kernel never picks
them as source ports while the guard still examines every connect to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import clean_environ
from native_helpers import compile_c, in_namespace, report_lines, require_library, require_namespaces, total

DEFAULT_RANGE = (32768, 60999)
# LISTEN_IN, CLOSED_IN, CLOSED_IN + 2 and BIND_OTHER in differential.c.
RESERVED = "40100,40111,40113,40201"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The differential program, and its output without the library."""
    require_library()
    require_namespaces()
    program = compile_c("differential", tmp_path_factory.mktemp("native-differential"))
    done = in_namespace([str(program)], port_range=DEFAULT_RANGE, reserved=RESERVED, env=clean_environ(), timeout=300)
    assert 0 == done["rc"], done["stderr"]
    return program, done["stdout"].splitlines()


@pytest.mark.parametrize(
    "settings",
    [{}, {"SELFGUARD_MODE": "relent"}, {"SELFGUARD_MODE": "observe"}, {"SELFGUARD_RETRIES": "0"}, {"SELFGUARD": "0"}],
    ids=["defaults", "relent", "observe", "no retries", "off"],
)
def test_every_c_level_outcome_is_the_same_with_the_native_guard(outcomes, tmp_path: Path, settings: dict[str, str]):
    """Return values and errnos agree case by case; the guard examined the connects in range meanwhile."""
    program, unguarded = outcomes
    library = require_library()
    report = tmp_path / "report.jsonl"
    env = clean_environ(LD_PRELOAD=library, SELFGUARD_NATIVE_REPORT=str(report), **settings)
    done = in_namespace([str(program)], port_range=DEFAULT_RANGE, reserved=RESERVED, env=env, timeout=300)
    assert 0 == done["rc"], done["stderr"]
    guarded = done["stdout"].splitlines()

    assert len(unguarded) >= 1600
    differences = [(a, b) for a, b in zip(unguarded, guarded) if a != b]
    named = " ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    print(f"native differential ({named}): {len(unguarded)} cases, {len(differences)} differences")
    assert [] == differences
    assert len(unguarded) == len(guarded)
    native = report_lines(report)
    if settings.get("SELFGUARD") == "0":
        assert [] == native  # off: nothing examined, nothing counted
        return
    assert total(native, "checked") >= 100  # successful connects in range, examined
    assert total(native, "addrnotavail") >= 24  # the taken-port cases, seen (and retried, but in vain)
    assert (0, 0) == (total(native, "self_connects"), total(native, "faults"))
