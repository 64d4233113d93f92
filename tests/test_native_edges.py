"""The native guard where a remembered fact goes stale: vfork, fd copies, timeouts, a failed read, the report file.

Each case was a way for the guard to trust what it remembered (an fd number's kind, a
bind seen through another fd, a range read once, a deadline) where the kernel could be
asked; each test here failed on the library before it asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfguard.testing import free_port

from helpers import clean_environ, require_forcing
from native_helpers import compile_c, in_namespace, report_lines, require_library, require_namespaces, total


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """tests/native/edges.c, and the retry hook (a preload loaded after the guard)."""
    out = tmp_path_factory.mktemp("native-edges")
    return compile_c("edges", out, "-pthread"), compile_c("retry_hook", out, "-shared", "-fPIC", "-ldl")


def run(argv: list[str], **env: str) -> dict[str, int]:
    done = subprocess.run(argv, env=clean_environ(**env), capture_output=True, text=True, timeout=120)
    assert 0 == done.returncode, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


def test_a_vfork_childs_dup2_does_not_hide_the_parents_tcp_socket(programs):
    """The child's dup2(unix socket, 0) writes the parent's memory: the parent's fd 0 is still TCP, and guarded."""
    require_forcing()
    edges, _ = programs
    port = str(free_port())
    assert {"self_connected": 20, "refused": 0} == run([str(edges), "vfork", port])  # unguarded
    assert {"self_connected": 0, "refused": 20} == run([str(edges), "vfork", port], LD_PRELOAD=require_library())


def test_the_guard_never_changes_the_sockets_sndtimeo(programs):
    """A thread reading SO_SNDTIMEO during 300 retried connects always sees the user's value."""
    require_forcing()
    edges, hook = programs
    preload = f"{require_library()}:{hook}"  # the hook makes each reset 5 ms slower, as a busy wrapper would
    assert {"changed_seen": 0, "refused": 300} == run([str(edges), "sndtimeo", str(free_port())], LD_PRELOAD=preload)


def test_errno_after_a_successful_retry_is_the_callers(programs):
    """EADDRNOTAVAIL, then a retry that connects: connect() returns 0 and leaves errno as the caller had it."""
    require_library()
    require_namespaces()
    edges, hook = programs
    argv = [str(edges), "addrnotavail", "40100", "40200"]
    unguarded = in_namespace(argv, port_range=(32768, 60999), env=clean_environ(LD_PRELOAD=str(hook)))
    assert {"rc": -1, "errno": 99} == json.loads(unguarded["stdout"])  # the kernel's EADDRNOTAVAIL
    env = clean_environ(LD_PRELOAD=f"{require_library()}:{hook}")
    guarded = in_namespace(argv, port_range=(32768, 60999), env=env)
    assert {"rc": 0, "errno": 7777} == json.loads(guarded["stdout"]), guarded["stderr"]


def preloaded(code: str, *args: str, cwd: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a Python process with the library preloaded (and no Python guard)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=clean_environ(LD_PRELOAD=require_library(), **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# A deliberate self-connect: bound to a port on purpose, through one fd, dialled through another.
BOUND_ELSEWHERE = r"""
import json, socket, sys
from selfguard.testing import free_port
port = free_port()
s = socket.socket()
if sys.argv[1] == "bound through socket.dup()":
    copy = s.dup()
    copy.bind(("127.0.0.1", port))
elif sys.argv[1] == "read through socket.dup()":
    s.bind(("127.0.0.1", port))
elif sys.argv[1] == "bound with AF_UNSPEC":
    import ctypes, struct
    unspec = struct.pack("!HH4s8x", 0, port, bytes(4))  # sa_family AF_UNSPEC, INADDR_ANY
    libc = ctypes.CDLL(None, use_errno=True)
    assert 0 == libc.bind(s.fileno(), unspec, len(unspec)), ctypes.get_errno()
    assert port == s.getsockname()[1]
s.settimeout(5)  # CPython connects without blocking and reads SO_ERROR
if sys.argv[1] == "read through socket.dup()":
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    copy = s.dup()  # fcntl(F_DUPFD_CLOEXEC)
    import select
    select.select([], [copy], [], 5)
    error = copy.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s = copy
else:
    error = s.connect_ex(("127.0.0.1", port))
print(json.dumps([error, s.getsockname() == s.getpeername()]))
"""


@pytest.mark.parametrize("how", ["bound through socket.dup()", "read through socket.dup()", "bound with AF_UNSPEC"])
def test_a_socket_bound_on_purpose_is_left_alone_whichever_fd_is_used(how: str):
    """The guard knows the socket (its inode), not the fd number: a deliberate self-connect stays connected."""
    done = preloaded(BOUND_ELSEWHERE, how)
    assert 0 == done.returncode, done.stderr
    assert [0, True] == json.loads(done.stdout)


SNDTIMEO_HUGE = r"""
import json, socket, struct
from selfguard import _native
from selfguard.testing import force_self_connect, free_port
port = free_port()
s = socket.socket()
force_self_connect(s, port)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10**10, 0))  # accepted by the kernel
try:
    s.connect(("127.0.0.1", port))
except ConnectionRefusedError:
    pass
print(json.dumps(_native.counters()))
"""


def test_a_huge_sndtimeo_still_allows_the_retries():
    """10^10 s in nanoseconds overflows int64: the deadline saturates instead of wrapping into the past."""
    require_forcing()
    done = preloaded(SNDTIMEO_HUGE)
    assert 0 == done.returncode, done.stderr
    counters = json.loads(done.stdout)
    assert (3, 2, 1) == (counters["self_connects"], counters["retries"], counters["gave_up"])


RANGE_READ_FAILS = r"""
import json, os, resource, socket, time
from selfguard import _native
from selfguard._commands.ports import free_port
server = socket.create_server(("127.0.0.1", free_port(20000, 30000)))  # outside the ephemeral range
first, second = socket.socket(), socket.socket()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
filler = []
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
try:
    while True:
        filler.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
first.connect(server.getsockname())  # the range cannot be read: EMFILE
for fd in filler:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
time.sleep(1.1)
second.connect(server.getsockname())
print(json.dumps(_native.counters()))
"""


def test_one_failed_read_of_the_range_costs_one_fault_and_is_not_kept():
    """EMFILE once: that connect is checked and one fault counted; a second later the range is read again."""
    done = preloaded(RANGE_READ_FAILS)
    assert 0 == done.returncode, done.stderr
    counters = json.loads(done.stdout)
    assert (1, 1) == (counters["faults"], counters["checked"])  # the second connect, out of range, is not checked


SELF_CONNECT_AFTER_CHDIR = r"""
import os, socket, sys
from selfguard.testing import force_self_connect, free_port
os.chdir(sys.argv[1])  # as a daemon does
port = free_port()
s = socket.socket()
force_self_connect(s, port)
try:
    s.connect(("127.0.0.1", port))
except ConnectionRefusedError:
    pass
"""


def test_a_relative_report_path_is_where_the_program_started(tmp_path: Path):
    """SELFGUARD_NATIVE_REPORT=report.jsonl, then chdir(): the line lands where it started, with command and time."""
    require_forcing()
    started, moved = tmp_path / "started", tmp_path / "moved"
    started.mkdir(), moved.mkdir()
    done = preloaded(SELF_CONNECT_AFTER_CHDIR, str(moved), cwd=str(started), SELFGUARD_NATIVE_REPORT="report.jsonl")
    assert (0, "") == (done.returncode, done.stderr)
    assert not (moved / "report.jsonl").exists()
    [line] = report_lines(started / "report.jsonl")
    assert (3, os.path.basename(sys.executable)[:15]) == (line["self_connects"], line["command"])
    assert line["time"].endswith("Z") and line["time"][:2] == "20" and line["pid"] > 0


def test_a_report_path_that_is_a_symlink_is_not_followed_and_the_counters_go_to_stderr(tmp_path: Path):
    """In a shared directory, a link planted at the path must not redirect the write: refused, and said."""
    require_forcing()
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "report.jsonl"
    link.symlink_to(target)
    done = preloaded(SELF_CONNECT_AFTER_CHDIR, str(tmp_path), SELFGUARD_NATIVE_REPORT=str(link))
    assert 0 == done.returncode
    assert "" == target.read_text()
    [said] = done.stderr.splitlines()
    assert said.startswith(f"selfguard (native guard): cannot append to SELFGUARD_NATIVE_REPORT {link} (")
    assert '"self_connects": 3' in said


def test_an_unwritable_report_path_says_so_with_the_counters(tmp_path: Path):
    """A directory that does not exist: the counters are not lost in silence."""
    require_forcing()
    path = tmp_path / "missing" / "report.jsonl"
    done = preloaded(SELF_CONNECT_AFTER_CHDIR, str(tmp_path), SELFGUARD_NATIVE_REPORT=str(path))
    assert 0 == done.returncode
    [said] = done.stderr.splitlines()
    assert said.startswith(f"selfguard (native guard): cannot append to SELFGUARD_NATIVE_REPORT {path} (")
    assert '"gave_up": 1' in said


OUT_OF_RANGE_SO_ERROR = r"""
import json, socket
from selfguard import _native
from selfguard._commands.ports import free_port
server = socket.create_server(("127.0.0.1", free_port(20000, 30000)))  # as Redis's 6379: outside the range
for _ in range(5):
    s = socket.socket()
    s.settimeout(5)  # CPython connects without blocking and reads SO_ERROR, as asyncio does
    s.connect(server.getsockname())
    s.close()
print(json.dumps(_native.counters()))
"""


def test_checked_counts_only_connects_to_ports_inside_the_range():
    """Five SO_ERROR reads of connects to a port outside the range: nothing examined, nothing counted."""
    done = preloaded(OUT_OF_RANGE_SO_ERROR)
    assert 0 == done.returncode, done.stderr
    assert 0 == json.loads(done.stdout)["checked"]


STDERR_IS_A_CONNECTION = r"""
import os, socket
server = socket.create_server(("127.0.0.1", 0))  # a port from the ephemeral range: the connect is examined
os.close(2)  # a daemon without stderr: the next socket takes fd 2
client = socket.socket()
assert 2 == client.fileno()
client.connect(server.getsockname())
peer, _ = server.accept()
peer.settimeout(0.5)
try:
    got = peer.recv(1000)
except TimeoutError:
    got = b""
print(repr(got))
"""


def test_a_warning_is_never_written_into_a_connection_on_fd_2():
    """A daemon that closed stderr has a TCP socket there: the bad setting is not said into the peer's stream."""
    done = preloaded(STDERR_IS_A_CONNECTION, SELFGUARD_MODE="strict")
    assert (0, "b''\n") == (done.returncode, done.stdout), done.stderr


def test_an_mptcp_client_is_guarded_like_tcp(tmp_path: Path):
    """socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP): its first subflow self-connects like TCP; it is reset in place."""
    library = require_library()
    require_namespaces()
    client = str(compile_c("mptcp", tmp_path))
    unguarded = in_namespace([client, "40000"])
    if unguarded["rc"] == 77:
        pytest.skip("the kernel has no MPTCP")
    assert 0 == unguarded["rc"], unguarded["stderr"]
    assert 1 == json.loads(unguarded["stdout"])["self_connected"]
    assert unguarded["server"] != "bound"  # the self-connected socket's TIME_WAIT keeps the port
    report = tmp_path / "mptcp.report"
    guarded = in_namespace(
        [client, "40000"], env=clean_environ(LD_PRELOAD=library, SELFGUARD_NATIVE_REPORT=str(report))
    )
    assert 0 == guarded["rc"], guarded["stderr"]
    assert {"self_connected": 0, "refused": 200, "other": 0} == json.loads(guarded["stdout"])
    assert "bound" == guarded["server"]  # the reset left no TIME_WAIT behind
    assert total(report_lines(report), "self_connects") >= 1


SO_ERROR_READS = r"""
import json, socket
from selfguard import _native
server = socket.create_server(("127.0.0.1", 0))  # a port from the ephemeral range: examined
seen = []
for timeout in (None, 5.0):  # a blocking connect; then CPython's non-blocking one, which reads SO_ERROR itself
    client = socket.socket()
    client.settimeout(timeout)
    client.connect(server.getsockname())
    for _ in range(5):  # as health checks and libraries do
        assert 0 == client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    seen.append(_native.counters()["checked"])
    client.close()
print(json.dumps(seen))
"""


def test_checked_counts_a_connect_once_however_often_so_error_is_read():
    """One connect, then five SO_ERROR reads: checked grows by one (blocking and non-blocking connects)."""
    done = preloaded(SO_ERROR_READS)
    assert 0 == done.returncode, done.stderr
    assert [1, 2] == json.loads(done.stdout)


@pytest.mark.parametrize("mode, counter", [("observe", "self_connects"), ("relent", "relented")])
def test_a_socket_reconnected_after_a_disconnect_is_handled_again(tmp_path: Path, mode: str, counter: str):
    """connect, AF_UNSPEC disconnect, connect again (5 times, each meeting itself): each connect is counted."""
    require_forcing()
    client = str(compile_c("reconnect", tmp_path))
    report = tmp_path / "reconnect.report"
    outcome = run(
        [client, str(free_port()), "5"],
        LD_PRELOAD=require_library(),
        SELFGUARD_MODE=mode,
        SELFGUARD_NATIVE_REPORT=str(report),
    )
    assert {"connected": 5, "refused": 0} == outcome  # handed back each time: no outcome changed
    assert 5 == total(report_lines(report), counter)
