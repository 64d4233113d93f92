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
from selfguard._run import BOOTSTRAP

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
    assert _config.Options() == testing.options()
    blank = not value.strip()
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
