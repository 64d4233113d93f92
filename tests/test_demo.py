"""`python -m selfguard` runs the demonstration (`selfguard repro`) in a real interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_python_m_selfguard_shows_the_bug_and_the_guard():
    """With no command it dials until a real self-connect, unguarded then guarded, and prints the counters."""
    done = subprocess.run([sys.executable, "-m", "selfguard"], capture_output=True, text=True, timeout=180)
    assert 0 == done.returncode, done.stdout + done.stderr
    out = done.stdout
    assert "read back b'PING'" in out
    assert "Address already in use" in out
    assert "the guard caught a self-connect" in out
    assert "a server binding port" in out and ": OK" in out
    assert "   counters: checked " in out
    assert out.rstrip().splitlines()[-1].startswith("Shown:")
