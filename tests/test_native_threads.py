"""The native guard under threads: N threads x M forced self-connects at once, counted exactly, no fd leaked.

tests/native/threads.c forces each socket onto its thread's own port (IP_LOCAL_PORT_RANGE,
Linux >= 6.3) and dials it: every attempt connects to itself through the kernel's real
path. The counters are relaxed atomics and the per-fd table is lock-free; any lost update
or race shows as a count off by one, a socket left behind or a port a server cannot bind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import clean_environ, require_forcing
from native_helpers import compile_c, in_namespace, require_library, require_namespaces

THREADS = 16
ATTEMPTS = 500
FIRST_PORT = 41000
N = THREADS * ATTEMPTS

# (SELFGUARD_MODE, how the connect completes) -> (what the callers saw, the native counters).
EXPECTED = {
    ("enforce", "blocking"): (
        {"refused": N},
        {"checked": 3 * N, "self_connects": 3 * N, "retries": 2 * N, "gave_up": N, "relented": 0},
    ),
    ("relent", "blocking"): (
        {"connected_to_self": N},
        {"checked": 3 * N, "self_connects": 3 * N, "retries": 2 * N, "gave_up": 0, "relented": N},
    ),
    ("observe", "blocking"): (
        {"connected_to_self": N},
        {"checked": N, "self_connects": N, "retries": 0, "gave_up": 0, "relented": 0},
    ),
    ("enforce", "so_error"): (
        {"refused": N},
        {"checked": N, "self_connects": N, "retries": 0, "gave_up": N, "relented": 0},
    ),
    ("relent", "so_error"): (
        {"connected_to_self": N},
        {"checked": N, "self_connects": N, "retries": 0, "gave_up": 0, "relented": N},
    ),
}


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_library()
    require_namespaces()
    require_forcing()
    return compile_c("threads", tmp_path_factory.mktemp("native-threads"), "-pthread", "-ldl")


@pytest.mark.parametrize("mode, completion", list(EXPECTED))
def test_threads_get_exact_counters_and_leak_no_fd(program: Path, mode: str, completion: str):
    """Every attempt is decided by the policy, counted once, and its socket closed; every port is free after."""
    env = clean_environ(LD_PRELOAD=require_library(), SELFGUARD_MODE=mode)
    argv = [str(program), completion, str(THREADS), str(ATTEMPTS), str(FIRST_PORT)]
    done = in_namespace(argv, port_range=(32768, 60999), env=env, timeout=120)
    assert 0 == done["rc"], done["stderr"]
    seen = json.loads(done["stdout"])
    outcomes, counters = EXPECTED[(mode, completion)]
    print(f"native threads {mode}/{completion}: {THREADS} x {ATTEMPTS}: {seen}")

    everything = {"refused": 0, "connected_to_self": 0, "connected_elsewhere": 0, "other": 0, **outcomes}
    assert everything == {k: seen[k] for k in everything}
    assert {**counters, "addrnotavail": 0, "faults": 0} == seen["native"]
    assert seen["fds_before"] == seen["fds_after"]
    assert THREADS == seen["bindable"]
