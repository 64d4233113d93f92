"""The demonstration runs in a real interpreter and shows the bug, then the guard."""

from __future__ import annotations

import subprocess
import sys

from selfguard.testing import can_force_self_connect

from conftest import require


def test_python_m_selfguard_shows_the_bug_and_the_guard():
    """`python -m selfguard` provokes a real self-connect unguarded, then guarded, and prints the counters."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE) to run quickly")
    done = subprocess.run([sys.executable, "-m", "selfguard"], capture_output=True, text=True, timeout=120)
    assert 0 == done.returncode, done.stderr
    out = done.stdout
    assert "read back b'PING'" in out
    assert "Address already in use" in out
    assert "SelfConnectError" in out
    assert "a server binding port" in out and ": OK" in out
    assert "'self_connects': 3" in out
