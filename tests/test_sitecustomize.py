"""The sitecustomize for legacy services, in real interpreters: guarding, costing nothing early, never harming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard._run import BOOTSTRAP
from selfguard.testing import can_force_self_connect

from conftest import require

EXAMPLE = Path(__file__).resolve().parent.parent / "sitecustomize_example" / "sitecustomize.py"


def python(code: str, *, pythonpath: str = BOOTSTRAP, **env: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter with the sitecustomize on PYTHONPATH and only the given SELFGUARD* set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_example_is_the_sitecustomize_that_selfguard_run_uses():
    """sitecustomize_example/sitecustomize.py and the packaged one are one file."""
    assert (Path(BOOTSTRAP) / "sitecustomize.py").read_bytes() == EXAMPLE.read_bytes()


def test_a_process_that_imports_socket_is_guarded(free_port):
    """Deployed on PYTHONPATH, it guards an unmodified program: a forced self-connect raises SelfConnectError."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    port = free_port()
    done = python(
        "import socket, selfguard\n"
        "from selfguard.testing import force_self_connect\n"
        "s = socket.socket()\n"
        f"force_self_connect(s, {port})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except selfguard.SelfConnectError as exc:\n"
        "    print('caught after', exc.attempts, 'attempts')\n"
    )
    assert "caught after 3 attempts" == done.stdout.strip()
    assert 3 == done.stderr.count("connected to itself")  # the guard's WARNING lines, for the service's logs


def test_a_process_without_sockets_imports_nothing_of_selfguard():
    """Until socket is imported, neither selfguard nor wrapt is: short scripts pay nothing."""
    done = python(
        "import sys, json; print(json.dumps(sorted(m for m in sys.modules if m.startswith(('selfguard', 'wrapt')))))"
    )
    assert 0 == done.returncode, done.stderr
    assert [] == json.loads(done.stdout)


def test_selfguard_off_leaves_no_trace():
    """SELFGUARD=0 means no import hook and no guard, even after socket is imported."""
    done = python(
        "import sys, socket\n"
        "print(any(type(f).__name__ == '_SelfguardAfterSocket' for f in sys.meta_path), 'selfguard' in sys.modules)",
        SELFGUARD="off",
    )
    assert ("False False", "") == (done.stdout.strip(), done.stderr)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SELFGUARD_RETRIES", "lots"),
        ("SELFGUARD_MODE", "$(rm -rf /)"),
        ("SELFGUARD", "perhaps"),
        ("SELFGUARD_RETRY_ADDRNOTAVAIL", "x" * 100_000),
    ],
)
def test_a_bad_value_warns_once_naming_the_variable_and_the_guard_stays_on(variable, value):
    """The interpreter starts, warns once on stderr with the variable's name, and uses the default."""
    done = python("import socket, selfguard; print(selfguard.is_installed())", **{variable: value})
    assert 0 == done.returncode
    assert "True" == done.stdout.strip()
    assert 1 == done.stderr.count("RuntimeWarning")
    assert f"for {variable} environment variable" in done.stderr


def test_an_internal_failure_is_reported_and_swallowed(tmp_path):
    """A broken installation (here: a wrapt that fails to import) cannot stop the program: one line on stderr."""
    broken = tmp_path / "wrapt"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    done = python("import socket; print('program ran')", pythonpath=os.pathsep.join([BOOTSTRAP, str(tmp_path)]))
    assert 0 == done.returncode
    assert "program ran" == done.stdout.strip()
    assert "selfguard: not active in this process: RuntimeError: broken on purpose\n" == done.stderr


def test_a_sitecustomize_further_along_the_path_still_runs(tmp_path):
    """The sitecustomize it hides (a distribution's, or the user's own) runs too, once."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stdout.write('theirs ran\\n')\n")
    done = python(
        "import socket, selfguard; print(selfguard.is_installed())",
        pythonpath=os.pathsep.join([BOOTSTRAP, str(tmp_path)]),
    )
    assert ("theirs ran\nTrue\n", "") == (done.stdout, done.stderr)


def test_socket_imported_before_the_sitecustomize_runs_is_guarded_at_once():
    """If something imported socket earlier (a .pth file, say), it installs right away instead of waiting."""
    import sysconfig

    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [
            sys.executable,
            "-S",  # no automatic site: the code below imports socket first, then runs the sitecustomize
            "-c",
            "import socket, runpy, sys\n"
            "runpy.run_path(sys.argv[1], run_name='sitecustomize')\n"
            "import selfguard; print(selfguard.is_installed())",
            str(Path(BOOTSTRAP) / "sitecustomize.py"),
        ],
        env={"PYTHONPATH": os.pathsep.join([repo, sysconfig.get_paths()["purelib"]])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ("True", "") == (done.stdout.strip(), done.stderr)
