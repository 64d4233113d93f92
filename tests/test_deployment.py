"""The sitecustomize README's deployment steps, run as written: the copy they leave is precompiled and guards.

A sitecustomize without a .pyc is compiled at every interpreter start where
the .pyc cannot be written (read-only site-packages, PYTHONDONTWRITEBYTECODE);
the documented steps compile it once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "sitecustomize_example"
README = (EXAMPLE / "README.md").read_text()
# The shell blocks of "Deploying it" that copy the file somewhere.
BLOCKS = [textwrap.dedent(block) for block in re.findall(r"```sh\n(.*?)```", README, re.S)]
STEPS = [block for block in BLOCKS if "cp -L sitecustomize.py" in block]


def test_every_deployment_step_compiles_what_it_copies():
    """Both ways of copying the file (site-packages, a PYTHONPATH directory) run py_compile after the copy."""
    assert 2 == len(STEPS)
    for block in STEPS:
        assert "-m py_compile" in block.split("cp -L sitecustomize.py", 1)[1], block


@pytest.mark.parametrize("step", range(len(STEPS)), ids=["site-packages", "PYTHONPATH"][: len(STEPS)])
def test_the_deployed_copy_loads_from_bytecode_and_guards(step, tmp_path):
    """Run the README's block (into a scratch directory), then start an interpreter that may not write bytecode."""
    target = tmp_path / "deployed"
    target.mkdir()
    script = STEPS[step].replace("/path/to/venv/bin/python", sys.executable).replace("/opt/selfguard", str(target))
    # Option 1 asks the interpreter for its site-packages: point it at the scratch directory instead.
    script = re.sub(r"^SITE=.*$", f"SITE={target}", script, flags=re.M)
    assert str(target) in script and "sysconfig" not in script, script  # never into a real environment
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    subprocess.run(["sh", "-ec", script], cwd=EXAMPLE, env=base, check=True, timeout=60)
    done = subprocess.run(
        [
            sys.executable,
            "-v",
            "-c",
            "import socket, selfguard; socket.socket().connect_ex(('127.0.0.1', 1)); print(selfguard.status())",
        ],
        env={**base, "PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "active" == done.stdout.strip(), done.stderr[-2000:]
    pyc = target / "__pycache__" / f"sitecustomize.{sys.implementation.cache_tag}.pyc"
    # python -v names where each module's code object came from.
    assert f"code object from '{pyc}'" in done.stderr
