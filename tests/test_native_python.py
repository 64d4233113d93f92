"""The native guard seen from Python: finding it, preloading it, its settings, its counters, one count per self-connect.

selfguard/_native.py finds the built library, puts it first in LD_PRELOAD (keeping what
is there), reads the counters it exports when it is loaded in the process, and tells
whether another process has it. The library reads the same SELFGUARD* variables as the
Python guard, with the same meanings. In a Python process with both guards each
self-connect is decided and counted once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard import _config, _native
from selfguard._commands import run as _run

from helpers import clean_environ, require_forcing
from native_helpers import require_library

# The values each setting is parsed from, good, bad and odd.
VALUES = {
    "SELFGUARD": [
        *("", " ", "1", "0", "true", "TRUE", " On ", "off", "no", "yes", "Yes\t", "2", "maybe", "o n", "\x1c1\x1f"),
        *("0\u00a0", "\u2003off", "no\x85", "\u00a0"),  # Unicode spaces: invalid to both guards alike
    ],
    "SELFGUARD_MODE": [
        *("enforce", " Relent ", "OBSERVE", "strict", "", "enforce\n", "enforcee", "é" * 10, "\tobserve\x0b"),
    ],
    "SELFGUARD_RETRIES": [
        *("0", "2", "100", "101", "-1", "-0", "+5", " 7 ", "1_0", "1__0", "_1", "1_", "007", "0x10", "1.0"),
        *("abc", "", "99999999999999999999", "0" * 40 + "42", "+", "-", "5 5"),
        *("\uff12", "\u0663", "\u0967"),  # Unicode digits: invalid to both guards alike
    ],
    "SELFGUARD_RETRY_ADDRNOTAVAIL": ["off", "FALSE", "x", "on", ""],
}


def python_verdict(variable: str, raw: str) -> list[int]:
    """What selfguard/_config.py makes of *raw*: [1, value] valid, [0, 0] invalid, [-1, 0] blank (the default)."""
    if not _config._ascii(raw, strict=False):
        return [-1, 0]
    parse = _config._parse_bool if variable == "SELFGUARD" else _config._RULES[variable[len("SELFGUARD_") :].lower()][0]
    try:
        value = parse(raw)
    except ValueError:
        return [0, 0]
    return [1, _config.MODES.index(value) if variable == "SELFGUARD_MODE" else int(value)]


NATIVE_VERDICTS = r"""
import ctypes, json, sys
library = ctypes.CDLL(sys.argv[1])
parse = library.selfguard_native_parse
parse.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int))
verdicts = []
for variable, raw in json.loads(sys.argv[2]):
    out = ctypes.c_int(0)
    found = parse(variable.encode(), raw.encode(), ctypes.byref(out))
    verdicts.append([found, out.value if found == 1 else 0])
print(json.dumps(verdicts))
"""


def test_the_library_parses_every_setting_as_the_python_guard_does():
    """Same valid values, same invalid ones, same blanks, for each SELFGUARD* variable."""
    library = require_library()
    cases = [(variable, raw) for variable, values in VALUES.items() for raw in values]
    done = subprocess.run(
        [sys.executable, "-c", NATIVE_VERDICTS, library, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(),
    )
    assert 0 == done.returncode, done.stderr
    native = json.loads(done.stdout)
    assert [python_verdict(v, raw) for v, raw in cases] == native


def preloaded(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a Python process with the library preloaded (and no sitecustomize)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_environ(LD_PRELOAD=require_library(), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


SETTINGS = "from selfguard import _native; import json; print(json.dumps(_native.settings()))"


def test_the_library_reads_the_same_variables():
    """SELFGUARD_MODE, SELFGUARD_RETRIES and SELFGUARD_RETRY_ADDRNOTAVAIL, read when the process starts."""
    done = preloaded(SETTINGS, SELFGUARD_MODE=" Relent ", SELFGUARD_RETRIES="5", SELFGUARD_RETRY_ADDRNOTAVAIL="off")
    expected = {"enabled": True, "mode": "relent", "retries": 5, "retry_addrnotavail": False}
    assert (expected, "") == (json.loads(done.stdout), done.stderr)
    done = preloaded(SETTINGS, SELFGUARD="off")
    assert False is json.loads(done.stdout)["enabled"]


# A connect the guard examines: to a listener on a port from the ephemeral range.
CONNECTS = (
    "import socket; s = socket.create_server(('127.0.0.1', 0)); socket.create_connection(s.getsockname()).close()"
)


@pytest.mark.parametrize(
    "variable, raw, default",
    [
        (
            "SELFGUARD_MODE",
            "strict",
            "observe, not the default enforce: a mistyped mode gets the one that changes no outcome",
        ),
        ("SELFGUARD_RETRIES", "101", "the default 2"),
        ("SELFGUARD_RETRY_ADDRNOTAVAIL", "maybe", "the default true"),
        ("SELFGUARD", "maybe", "the default on"),
    ],
)
def test_a_bad_value_is_one_line_on_stderr_naming_the_variable_and_the_default_applies(variable, raw, default):
    """As the Python guard says it, at the first connect examined: one line, the variable, the value, what is used.

    That is the default, except for a bad mode: observe (see _config._ON_BAD_VALUE), in both guards.
    """
    require_library()
    done = preloaded(CONNECTS + "; socket.create_connection(s.getsockname()).close()", **{variable: raw})
    assert 0 == done.returncode, done.stderr
    lines = done.stderr.splitlines()
    assert 1 == len(lines), done.stderr
    assert lines[0].startswith(f"selfguard (native guard): Invalid value '{raw}' for {variable} environment variable: ")
    assert lines[0].endswith(f"; using {default}")
    settings = json.loads(preloaded(SETTINGS, **{variable: raw}).stdout)
    mode = "observe" if variable == "SELFGUARD_MODE" else "enforce"
    assert {"enabled": True, "mode": mode, "retries": 2, "retry_addrnotavail": True} == settings


def test_a_bad_value_is_not_said_by_programs_that_never_connect():
    """A shell loop of five commands that make no connection prints nothing (it printed six lines)."""
    require_library()
    done = subprocess.run(
        ["sh", "-c", "for i in 1 2 3 4 5; do true; done; /bin/true"],
        env=clean_environ(LD_PRELOAD=_native.LIBRARY, SELFGUARD_MODE="strict"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (0, "") == (done.returncode, done.stderr)


def test_a_python_process_with_both_guards_gets_one_warning_for_one_mistake():
    """The Python guard and the native guard read the same variable: only one of them says it."""
    require_library()
    code = "import selfguard; selfguard.install(); " + CONNECTS
    done = preloaded(code, SELFGUARD_MODE="strict")
    assert 0 == done.returncode, done.stderr
    said = [line for line in done.stderr.splitlines() if "SELFGUARD_MODE" in line]
    assert 1 == len(said), done.stderr


def test_environment_puts_the_library_first_and_keeps_what_was_there():
    """Existing LD_PRELOAD entries stay, after it, as they were; a second call adds nothing."""
    library = require_library()
    assert library == _native.environment({})["LD_PRELOAD"]
    env = _native.environment({"LD_PRELOAD": "/x/liba.so /x/libb.so", "OTHER": "kept"})
    assert (f"{library}:/x/liba.so /x/libb.so", "kept") == (env["LD_PRELOAD"], env["OTHER"])
    assert env == _native.environment(env)


def test_a_library_path_ld_preload_cannot_name_is_refused(monkeypatch, tmp_path: Path):
    """LD_PRELOAD splits on spaces and colons: a path with one would preload something else."""
    path = tmp_path / "with space" / _native.LIBRARY_NAME
    path.parent.mkdir()
    path.write_bytes(b"")
    monkeypatch.setattr(_native, "LIBRARY", str(path))
    with pytest.raises(_native.Unavailable, match="spaces and colons"):
        _native.environment({})


def test_selfguard_run_native_preloads_it_for_the_whole_tree():
    """`selfguard run --native -- CMD`: CMD and its children see it first in LD_PRELOAD, the user's entry after."""
    library = require_library()
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "run", "--native", "--", "sh", "-c", 'sh -c "echo \\$LD_PRELOAD"'],
        env=clean_environ(LD_PRELOAD="libm.so.6"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (f"{library}:libm.so.6\n", 0) == (done.stdout, done.returncode), done.stderr


def test_without_the_library_native_warns_and_runs_the_command(monkeypatch, capsys):
    """--native fails open: one loud line (what is missing, how to get it), then CMD runs, unguarded in C."""
    monkeypatch.setattr(_native, "LIBRARY", "/nonexistent/selfguard/libselfguard_preload.so")
    done = subprocess.run(
        [sys.executable, "-c", SHOW_MISSING, "--native", "--", "sh", "-c", "echo ran; exit 7"],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ("ran\n", 7) == (done.stdout, done.returncode), done.stderr
    assert done.stderr.startswith("selfguard run: WARNING: --native: running sh WITHOUT the native guard")
    assert "the native guard is not in this selfguard (/nonexistent/selfguard/libselfguard_preload.so is missing" in (
        done.stderr
    )
    assert "-m pip install" in done.stderr
    assert 1 == len(done.stderr.splitlines())


def test_without_the_library_require_native_refuses(monkeypatch, capsys):
    """--require-native: exit 3 and one line, CMD never runs."""
    monkeypatch.setattr(_native, "LIBRARY", "/nonexistent/selfguard/libselfguard_preload.so")
    assert 3 == _run.run(["true"], native=True, require_native=True)
    error = capsys.readouterr().err
    assert error.startswith("selfguard run: --require-native: not running true: the native guard is not in")
    assert "No C compiler is here" in error or "rebuild it with" in error
    assert 1 == len(error.splitlines())


def test_without_a_compiler_the_reason_says_to_install_one(monkeypatch):
    """No cc, gcc or clang on PATH and no CC: the message names what to install."""
    monkeypatch.setattr(_native, "LIBRARY", "/nonexistent/libselfguard_preload.so")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CC", raising=False)
    assert "No C compiler is here (cc, gcc or clang): install one" in _native.missing_reason()


# `selfguard run` with the library's path pointed somewhere it is not.
SHOW_MISSING = (
    "import sys\n"
    "from selfguard import _native, __main__\n"
    "_native.LIBRARY = '/nonexistent/selfguard/libselfguard_preload.so'\n"
    "sys.exit(__main__.main(['run', *sys.argv[1:]]))"
)


def test_counters_are_none_where_the_library_is_not_loaded():
    """This test process runs without it: no counters, no settings, no socket it decided."""
    assert None is _native.counters()
    assert None is _native.settings()
    assert _native.merge({"checked": 1}, None) == {"checked": 1}


def test_counters_have_the_names_of_stats_where_it_is_loaded():
    """Loaded: the same keys as selfguard.stats(), all zero in a process that never connected."""
    code = (
        "import json, selfguard\n"
        "from selfguard import _native\n"
        "print(json.dumps([_native.counters(), selfguard.stats()]))"
    )
    native, python = json.loads(preloaded(code).stdout)
    assert list(python) == list(native)
    assert set(native.values()) == {0}


def test_active_in_tells_processes_with_it_from_processes_without():
    """/proc/PID/maps has the library; SELFGUARD=0 in the process's environment switched it off."""
    library = require_library()
    assert not _native.active_in(os.getpid())
    assert not _native.active_in(2**22 + 12345)  # no such process
    wait = [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"]
    seen = {}
    for name, env in [
        ("on", clean_environ(LD_PRELOAD=library)),
        ("off", clean_environ(LD_PRELOAD=library, SELFGUARD="0")),
        ("absent", clean_environ()),
    ]:
        child = subprocess.Popen(wait, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert "up\n" == child.stdout.readline()  # past the loader: everything preloaded is mapped
            seen[name] = _native.active_in(child.pid)
        finally:
            child.communicate(timeout=30)
    assert {"on": True, "off": False, "absent": False} == seen


TWO_GUARDS = r"""
import json, socket, struct, sys
import selfguard
from selfguard import _native
from selfguard.testing import force_self_connect, free_port
selfguard.install()
timeout = None if sys.argv[1] == "blocking" else 5.0
outcomes = []
for _ in range(3):
    port = free_port()
    s = socket.socket()
    force_self_connect(s, port)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        outcomes.append("connected to itself" if selfguard.is_self_connected(s) else "connected")
    except ConnectionRefusedError:
        outcomes.append("refused")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
python = selfguard._events.own_stats()
print(json.dumps({"outcomes": outcomes, "python": python, "merged": selfguard.stats()}))
"""


@pytest.mark.parametrize("mode", ["enforce", "relent", "observe"])
@pytest.mark.parametrize("socket_kind", ["blocking", "timeout"])
def test_in_a_process_with_both_guards_each_self_connect_is_decided_and_counted_once(mode, socket_kind):
    """The native guard meets it first in libc; the Python guard leaves its verdict alone; the merge adds once."""
    require_forcing()
    done = preloaded(TWO_GUARDS.replace("sys.argv[1]", repr(socket_kind)), SELFGUARD_MODE=mode)
    assert 0 == done.returncode, done.stderr
    seen = json.loads(done.stdout)
    python, merged = seen["python"], seen["merged"]
    assert 0 == python["self_connects"] + python["retries"] + python["gave_up"] + python["relented"]
    # A timeout socket connects without blocking inside CPython and reads SO_ERROR: no retry there.
    attempts = 3 if socket_kind == "blocking" and mode != "observe" else 1
    assert 3 * attempts == merged["self_connects"]
    assert 3 * (attempts - 1) == merged["retries"]
    assert (3 if mode == "enforce" else 0) == merged["gave_up"]
    assert (3 if mode == "relent" else 0) == merged["relented"]
    assert 3 * attempts == merged["checked"]
    expected = "refused" if mode == "enforce" else "connected to itself"
    assert [expected] * 3 == seen["outcomes"]
    assert "self-connect" not in done.stderr  # the Python guard logged nothing it did not decide


SNDTIMEO = r"""
import json, socket, struct
from selfguard import _native
from selfguard.testing import force_self_connect, free_port
port = free_port()
s = socket.socket()
force_self_connect(s, port)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 7, 250000))
before = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))  # as the kernel rounded it
try:
    s.connect(("127.0.0.1", port))
except ConnectionRefusedError:
    pass
after = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
print(json.dumps([before, after, _native.counters()]))
"""


def test_a_blocking_connect_with_sndtimeo_is_retried_and_its_timeout_put_back():
    """SO_SNDTIMEO bounds the retries; the user's value is what the socket has after."""
    require_forcing()
    done = preloaded(SNDTIMEO)
    assert 0 == done.returncode, done.stderr
    before, after, counters = json.loads(done.stdout)
    assert before == after
    assert (3, 2, 1) == (counters["self_connects"], counters["retries"], counters["gave_up"])


def test_counters_reset_in_a_forked_child_as_pythons_do():
    """Counters are per process: a forked worker starts from zero, so summing workers counts each event once."""
    require_forcing()
    code = (
        "import os, socket, json\n"
        "from selfguard import _native\n"
        "from selfguard.testing import force_self_connect, free_port\n"
        "p = free_port(); s = socket.socket(); force_self_connect(s, p)\n"
        "try:\n    s.connect(('127.0.0.1', p))\nexcept ConnectionRefusedError:\n    pass\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, json.dumps(_native.counters()).encode()); os._exit(0)\n"
        "os.close(w); child = json.loads(os.read(r, 4096)); os.wait()\n"
        "print(json.dumps([_native.counters()['self_connects'], child['self_connects']]))\n"
    )
    done = preloaded(code)
    assert [3, 0] == json.loads(done.stdout), done.stderr


def test_reset_counters_sets_them_back_to_zero():
    """_native.reset_counters(), for selfguard.reset_stats() to call."""
    require_forcing()
    code = (
        "import socket, json\n"
        "from selfguard import _native\n"
        "from selfguard.testing import force_self_connect, free_port\n"
        "p = free_port(); s = socket.socket(); force_self_connect(s, p)\n"
        "try:\n    s.connect(('127.0.0.1', p))\nexcept ConnectionRefusedError:\n    pass\n"
        "before = _native.counters()['self_connects']; _native.reset_counters()\n"
        "print(json.dumps([before, sum(_native.counters().values())]))\n"
    )
    assert [3, 0] == json.loads(preloaded(code).stdout)


def test_stats_include_the_native_counters_and_reset_stats_clears_both():
    """selfguard.stats() in a preloaded process counts what the native guard met; reset_stats() zeroes it."""
    require_forcing()
    code = (
        "import socket, json, selfguard\n"
        "from selfguard.testing import force_self_connect, free_port\n"
        "p = free_port(); s = socket.socket(); force_self_connect(s, p)\n"
        "try:\n    s.connect(('127.0.0.1', p))\nexcept ConnectionRefusedError:\n    pass\n"
        "before = selfguard.stats(); selfguard.reset_stats()\n"
        "print(json.dumps([before, selfguard.stats()]))\n"
    )
    done = preloaded(code)
    assert 0 == done.returncode, done.stderr
    before, after = json.loads(done.stdout)
    assert (3, 2, 1) == (before["self_connects"], before["retries"], before["gave_up"])
    assert set(after.values()) == {0}


def test_doctor_tells_whether_a_process_has_the_native_guard():
    """selfguard doctor --pid PID: active for a process under selfguard run --native, not for another."""
    require_library()
    wait = ["--", sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"]
    children = [
        subprocess.Popen([sys.executable, "-m", "selfguard", "run", *native, *wait], env=clean_environ(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for native in (["--native"], [])
    ]  # fmt: skip
    try:
        for child in children:
            assert "up\n" == child.stdout.readline()
        pids = [str(child.pid) for child in children]
        done = subprocess.run(
            [sys.executable, "-m", "selfguard", "doctor", "--json", "--pid", pids[0], "--pid", pids[1]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        for child in children:
            child.communicate(timeout=30)
    assert {pids[0]: True, pids[1]: False} == json.loads(done.stdout)["native_guard"], done.stderr


def test_doctor_tells_the_native_guards_mode_as_the_library_parses_it():
    """doctor --pid: the native guard's mode from its environment; a bad value is observe, which changes no outcome."""
    library = require_library()
    wait = [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"]
    modes = {"unset": None, "observe": "observe", "spaced": " RELENT\t", "bad": "enforced", "blank": " "}
    children = {
        name: subprocess.Popen(
            wait,
            env=clean_environ(LD_PRELOAD=library, **({} if raw is None else {"SELFGUARD_MODE": raw})),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, raw in modes.items()
    }
    try:
        for child in children.values():
            assert "up\n" == child.stdout.readline()
        args = [arg for child in children.values() for arg in ("--pid", str(child.pid))]
        text = subprocess.run(
            [sys.executable, "-m", "selfguard", "doctor", *args], capture_output=True, text=True, timeout=60
        )
        found = subprocess.run(
            [sys.executable, "-m", "selfguard", "doctor", "--json", *args], capture_output=True, text=True, timeout=60
        )
    finally:
        for child in children.values():
            child.communicate(timeout=30)
    processes = {entry["pid"]: entry for entry in json.loads(found.stdout)["processes"]}
    got = {name: processes[child.pid]["native_mode"] for name, child in children.items()}
    comm = processes[children["bad"].pid]["command"]
    assert {"unset": "enforce", "observe": "observe", "spaced": "relent", "bad": "observe", "blank": "enforce"} == got
    observe = f"Process {children['bad'].pid} ({comm}): guarded: native guard active (mode observe: it counts "
    assert observe + "self-connects and changes no outcome)" in text.stdout, text.stdout
    assert f"Process {children['unset'].pid} ({comm}): guarded: native guard active (mode enforce)" in text.stdout
