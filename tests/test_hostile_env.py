"""Hostile environments: every SELFGUARD* variable with huge, negative, non-numeric, non-ASCII, shell-like values.

No interpreter is harmed: each bad value gets one warning naming the
variable, the default is used, and the guard works -- through install() in
this process, and through the sitecustomize in real interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

import selfguard
from selfguard import _config, testing
from selfguard._commands.run import BOOTSTRAP
from selfguard.testing import can_force_self_connect

from conftest import require

HOSTILE = [
    "x" * 100_000,
    "-1",
    "1e3",
    "0x10",
    "NaN",
    "2" * 40,
    "é",
    "日本",
    "\x1b[31mred",
    "$(reboot)",
    "`id`",
    "1; rm -rf /",
    "../../etc/passwd",
    "true false",
    "\t",  # blank: the default, silently
]
VARIABLES = ["SELFGUARD", "SELFGUARD_MODE", "SELFGUARD_RETRIES", "SELFGUARD_RETRY_ADDRNOTAVAIL"]


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_install_survives_every_hostile_value(monkeypatch, variable, value):
    """install() warns once (naming the variable) or not at all for blanks, and the guard is on with defaults."""
    monkeypatch.setenv(variable, value)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert selfguard.install() is True
        selfguard.install()  # a second install(): still one warning in all
    assert selfguard.is_installed()
    blank = not value.strip()
    # A bad mode gets observe (see _config._ON_BAD_VALUE); any other bad value, the default.
    bad_mode = variable == "SELFGUARD_MODE" and not blank
    assert _config.Options(mode="observe" if bad_mode else "enforce") == testing.options()
    assert (0 if blank else 1) == len(record), [str(w.message) for w in record]
    if record:
        message = str(record[0].message)
        assert f"for {variable} environment variable" in message
        assert len(message) < 400


@pytest.mark.parametrize("variable", VARIABLES)
def test_the_sitecustomize_survives_every_hostile_value(variable):
    """Each hostile value in a real interpreter under the sitecustomize: it starts, warns at most once, guards."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    code = "import socket, selfguard; socket.socket().connect_ex(('127.0.0.1', 1)); print(selfguard.is_installed())"
    for value in HOSTILE:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "PYTHONPATH": BOOTSTRAP, variable: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (0, "True") == (done.returncode, done.stdout.strip()), (value[:20], done.stderr[-300:])
        assert done.stderr.count("RuntimeWarning") <= 1
        if done.stderr:
            assert f"for {variable} environment variable" in done.stderr
            assert len(done.stderr) < 1000


def _interpreter(code: str, *, run: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """*code* in a fresh interpreter under the sitecustomize (directly on PYTHONPATH, or through `selfguard run`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    if run:
        command = [sys.executable, "-m", "selfguard", "run", "--", sys.executable, "-c", code]
    else:
        command, base["PYTHONPATH"] = [sys.executable, "-c", code], BOOTSTRAP
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=60)


# A forced self-connect: refused (SelfConnectError) only if the guard is on.
FORCED = """
import socket, selfguard
from selfguard.testing import force_self_connect
s = socket.socket()
force_self_connect(s, {port})
try:
    s.connect(("127.0.0.1", {port}))
    print("UNGUARDED")
except selfguard.SelfConnectError as exc:
    print("caught after", exc.attempts, "attempts")
s.close()
"""


@pytest.mark.parametrize(("variable", "value"), [("SELFGUARD_RETRIES", "lots"), ("SELFGUARD", "perhaps")])
@pytest.mark.parametrize("filters", ["error", "error::RuntimeWarning"])
def test_warnings_turned_into_errors_do_not_turn_the_guard_off(variable, value, filters, free_port):
    """Under `selfguard run` with warnings as errors, a bad value is said in one line and the guard runs on defaults."""
    require(can_force_self_connect(), "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)")
    done = _interpreter(FORCED.format(port=free_port()), run=True, PYTHONWARNINGS=filters, **{variable: value})
    # The defaults: enforce, 2 retries.
    assert (0, "caught after 3 attempts") == (done.returncode, done.stdout.strip()), done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if "connected to itself" not in line and "gave up" not in line]
    assert 1 == len(said), done.stderr
    assert said[0].startswith(f"selfguard: Invalid value {value!r} for {variable} environment variable: ")


def test_install_under_warnings_as_errors_warns_on_stderr_and_guards(monkeypatch, capsys):
    """pytest's `filterwarnings = error`, in this process: install() does not raise, and the guard is on."""
    monkeypatch.setenv("SELFGUARD_RETRIES", "lots")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert selfguard.install() is True
    assert _config.Options() == testing.options()
    assert "selfguard: Invalid value 'lots' for SELFGUARD_RETRIES environment variable: " in capsys.readouterr().err


def test_the_warning_points_at_the_environment_not_at_selfguards_code():
    """Under the sitecustomize, the warning names the environment as its source; no line of selfguard is shown."""
    done = _interpreter(
        "import socket; socket.socket().connect_ex(('127.0.0.1', 1))", SELFGUARD_RETRIES="lots", SELFGUARD="perhaps"
    )
    assert 0 == done.returncode
    assert [
        "<environment>:0: RuntimeWarning: Invalid value 'perhaps' for SELFGUARD environment variable: "
        "expected one of 1/true/on/yes/0/false/off/no; using the default on",
        "<environment>:0: RuntimeWarning: Invalid value 'lots' for SELFGUARD_RETRIES environment variable: "
        "expected a whole number from 0 to 100; using the default 2",
    ] == done.stderr.splitlines()


def test_install_attributes_the_warning_to_the_environment(monkeypatch):
    """Called from code, too: the warning's file is <environment> and its module selfguard (for -W filters)."""
    monkeypatch.setenv("SELFGUARD_MODE", "strict")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        selfguard.install()
    assert [("<environment>", 0)] == [(w.filename, w.lineno) for w in record]


def test_a_filter_on_the_selfguard_module_silences_it():
    """`-W ignore:::selfguard` (here through PYTHONWARNINGS) silences the warning; the guard is on."""
    done = _interpreter(
        "import socket, selfguard; socket.socket().connect_ex(('127.0.0.1', 1)); print(selfguard.is_installed())",
        SELFGUARD_RETRIES="lots",
        PYTHONWARNINGS="ignore:::selfguard",
    )
    assert ("True", "") == (done.stdout.strip(), done.stderr)
