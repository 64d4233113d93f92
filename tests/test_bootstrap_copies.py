"""Several copies of the sitecustomize on sys.path, and finders that ask the rest of sys.meta_path: guarded once.

A copy deployed in site-packages plus `selfguard run`, or one directory
reachable twice through a symlink, used to make every `import socket` die with
RecursionError: each copy's import hook asked the others, which asked it back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard._commands.run import BOOTSTRAP
from selfguard.testing import can_force_self_connect

from helpers import require, under_sitecustomize

# Before socket is imported: how many of selfguard's import hooks wait for it.
# Then the imports that died, a forced self-connect, and how the guard sits on
# socket.socket (one wrapper around the bare method: guarded once).
CHECK = """
import sys
print(sum(type(f).__name__ == "_SelfguardAfterSocket" for f in sys.meta_path), "hook(s)")
import json, urllib.request, socket, selfguard, wrapt
from selfguard.testing import force_self_connect
s = socket.socket()
force_self_connect(s, {port})
try:
    s.connect(("127.0.0.1", {port}))
except selfguard.SelfConnectError as exc:
    print("caught after", exc.attempts, "attempts")
connect = vars(socket.socket)["connect"]
print(isinstance(connect, wrapt.FunctionWrapper) and "wrapper", "around", type(connect.__wrapped__).__name__)
"""
GUARDED_ONCE = "1 hook(s)\ncaught after 3 attempts\nwrapper around method_descriptor\n"
USERS = "import sys\nsys.stdout.write('theirs ran\\n')\n"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    """Directories for PYTHONPATH: copies of the sitecustomize, links to them, and the user's own sitecustomize."""
    made = {"bootstrap": BOOTSTRAP}
    for name in ("copy1", "copy2", "user"):
        (tmp_path / name).mkdir()
        made[name] = str(tmp_path / name)
    shutil.copy(Path(BOOTSTRAP) / "sitecustomize.py", tmp_path / "copy1" / "sitecustomize.py")
    shutil.copy(Path(BOOTSTRAP) / "sitecustomize.py", tmp_path / "copy2" / "sitecustomize.py")
    (tmp_path / "user" / "sitecustomize.py").write_text(USERS)
    for name, target in (("link", BOOTSTRAP), ("link1", made["copy1"])):
        os.symlink(target, tmp_path / name)
        made[name] = str(tmp_path / name)
    return made


LAYOUTS = {
    "a copy further along": ["bootstrap", "copy1", "user"],
    "one directory twice, through a symlink": ["bootstrap", "link", "user"],
    "three copies and a link": ["copy1", "bootstrap", "link", "copy2", "user"],
    "a copy before and after another, through a link": ["copy1", "bootstrap", "link1", "user"],
    "two copies, no sitecustomize of the user's": ["bootstrap", "copy1"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_copies_on_the_path_guard_once_and_run_the_users_sitecustomize_once(layout, dirs, free_port):
    """Every import works, one hook waits for socket, one wrapper guards, the user's sitecustomize runs once."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    entries = LAYOUTS[layout]
    done = under_sitecustomize(CHECK.format(port=free_port()), pythonpath=os.pathsep.join(dirs[e] for e in entries))
    theirs = "theirs ran\n" if "user" in entries else ""
    assert theirs + GUARDED_ONCE == done.stdout, done.stderr[-2000:]
    assert 1 == done.stderr.count("connected to itself; gave up after 3 attempts"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_selfguard_run_with_a_copy_on_the_users_pythonpath(dirs, free_port):
    """`selfguard run` over a service whose PYTHONPATH already holds a deployed copy: guarded once."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "run", "--", sys.executable, "-c", CHECK.format(port=free_port())],
        env={**base, "PYTHONPATH": os.pathsep.join([dirs["copy1"], dirs["user"]])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # `theirs ran` once in the interpreter running `selfguard run` itself, once in CMD.
    assert "theirs ran\ntheirs ran\n" + GUARDED_ONCE == done.stdout, done.stderr[-2000:]
    assert 1 == done.stderr.count("connected to itself; gave up after 3 attempts"), done.stderr[-2000:]


# A finder written as selfguard's used to be: it asks the rest of sys.meta_path
# for the spec, with no thought that another finder may ask it back.
DELEGATING = """
import sys

class Delegating:
    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                return spec
        return None

sys.meta_path.insert({position}, Delegating())
sys.stdout.write("theirs ran\\n")
"""


@pytest.mark.parametrize("position", [0, 1])
def test_a_finder_that_asks_the_rest_of_meta_path_works_with_it(position, tmp_path, free_port):
    """The user's sitecustomize puts such a finder before selfguard's hook (0) or after it (1): guarded once."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    (tmp_path / "sitecustomize.py").write_text(DELEGATING.format(position=position))
    done = under_sitecustomize(CHECK.format(port=free_port()), pythonpath=os.pathsep.join([BOOTSTRAP, str(tmp_path)]))
    assert "theirs ran\n" + GUARDED_ONCE == done.stdout, done.stderr[-2000:]
    assert 1 == done.stderr.count("connected to itself; gave up after 3 attempts"), done.stderr[-2000:]
