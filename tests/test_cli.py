"""The `selfguard` command line as a whole: its structure, its dispatch, its exit statuses."""

from __future__ import annotations

import subprocess
import sys

import selfguard.testing
from selfguard import _ports


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_command_line_does_not_import_the_testing_module():
    """Product code stays clear of selfguard.testing (and the wrapt patching it does on import of its helpers)."""
    done = python(
        "import sys, selfguard.__main__, selfguard._doctor, selfguard._repro, selfguard._run\n"
        "print(sorted(m for m in sys.modules if m.startswith('selfguard.testing')))"
    )
    assert ("[]\n", "") == (done.stdout, done.stderr)


def test_free_port_is_still_public_in_the_testing_module():
    """selfguard.testing.free_port is public API: it stays there, as the very function the command line uses."""
    assert selfguard.testing.free_port is _ports.free_port
    assert "free_port" in selfguard.testing.__all__
    port = selfguard.testing.free_port(connect_parity=True)
    low, high = selfguard._kernel.read_ephemeral_range()
    assert low <= port <= high and (port - low) % 2 == 0
