"""`selfguard run` hands CMD its environment as Python would read it: empty PYTHONPATH entries stay the cwd."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import clean_environ


def test_selfguard_run_keeps_empty_pythonpath_entries(tmp_path):
    """An empty PYTHONPATH entry means the current directory; it stays one under selfguard run."""
    (tmp_path / "mymod_in_cwd.py").write_text("VALUE = 'found'\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfguard",
            "run",
            "--",
            sys.executable,
            "-c",
            "import mymod_in_cwd as m; print(m.VALUE)",
        ],
        env=clean_environ(PYTHONPATH=os.pathsep + "/nonexistent"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ("found", "") == (done.stdout.strip(), done.stderr)
