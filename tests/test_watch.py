"""`selfguard watch` sees the kernel's self-connects in every namespace, tells what became of them, and leaves nothing.

Each test starts the real command, makes self-connects in network namespaces of
its own (ephemeral range narrowed to 40000-40003), and keeps only the reports
of its own namespaces and pids: other tests on this host may make self-connects
of their own while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from helpers import clean_environ, require
from native_helpers import (
    GUARDED,
    SOURCES,
    compile_c,
    in_namespace,
    report_lines,
    require_library,
    require_namespaces,
    total,
)

PORT = 40000
WATCH = [sys.executable, "-m", "selfguard", "watch"]
# Ahead of the other tests on a shared machine, as docs/operations.md recommends (Nice=-10):
# a watcher starved for seconds reads a process's namespace after the process is gone.
NICE = ["nice", "-n", "-10"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# A program in a namespace prints its namespace first: "net:[4026532179]".
SHOW_NETNS = 'readlink /proc/self/ns/net; exec "$@"'


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_watcher_outlives_its_test() -> Iterator[None]:
    """A test that fails before stop() must not leave its watcher (and its --reset) to the next tests."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


class Watch:
    """A running `selfguard watch --json`: stop() returns its reports and summary."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*NICE, *WATCH, "--json", "--settle", "0.3", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        STARTED.append(self.process)
        assert self.process.stderr is not None
        ready = self.process.stderr.readline()
        assert "watching every network namespace" in ready, ready + self.process.stderr.read()
        self.instance = ready.split(" through ")[1].split(";")[0].split(" ")[0]

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        time.sleep(0.8)  # the last self-connects settle
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=30)
        assert 0 == self.process.returncode, err
        lines = [json.loads(line) for line in out.splitlines()]
        return lines[:-1], lines[-1]


Report = dict[str, Any]


def mine(reports: list[Report], netns: int, pid: Optional[int] = None, strict: bool = False) -> list[Report]:
    """The reports of *netns* (and *pid*). Unless *strict*, also those of *pid* whose namespace is null.

    A watcher the machine starves for longer than a process lives after its
    self-connect cannot read the process's namespace any more, and says so
    with null (docs/operations.md). The test of the namespace itself is strict.
    """
    return [
        r
        for r in reports
        if (
            (r["netns"] == netns or (not strict and pid is not None and r["netns"] is None))
            and (pid is None or r["pid"] == pid)
        )
        or (not strict and softirq_elsewhere(r))
    ]


def softirq_elsewhere(report: Report) -> bool:
    """A self-connect on this test's port met in a softirq that a kernel thread ran (ksoftirqd, say).

    Its pid and namespace are that thread's, as docs/operations.md says; no kernel
    thread self-connects on PORT, so it is this test's program's.
    """
    kernel_thread = report["comm"].split("/")[0] in ("ksoftirqd", "swapper", "kworker")
    return not report["pid_sure"] and report["port"] == PORT and kernel_thread


def netns_of(stdout: str) -> int:
    first = stdout.splitlines()[0]
    assert first.startswith("net:["), stdout
    return int(first[5:-1])


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def instances() -> list[str]:
    """The watchers' tracing instances on this host, seen through a tracefs mount of our own."""
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing && ls /sys/kernel/tracing/instances"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert 0 == done.returncode, done.stderr
    return [name for name in done.stdout.split() if name.startswith("selfguard-watch-")]


@pytest.fixture(scope="module")
def selfdial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/native/selfdial.c, statically linked: no LD_PRELOAD can reach it."""
    require_namespaces()
    return compile_c("selfdial", tmp_path_factory.mktemp("watch"), "-static")


def in_ns(argv: list[str], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("port_range", (PORT, PORT + 3))
    return in_namespace(["sh", "-c", SHOW_NETNS, "sh", *argv], **kwargs)


def test_a_static_c_program_is_reported_with_its_pid_command_namespace_and_port(selfdial: Path) -> None:
    """A statically linked unguarded client: each self-connect is reported, as reaching the program."""
    watch = Watch()
    done = in_ns([str(selfdial), str(PORT), "200"])
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"], strict=True)
    assert result["self_connects"] >= 1
    assert result["self_connects"] == len(seen)
    assert {("selfdial", PORT, "127.0.0.1", True)} == {
        (r["comm"], r["port"], r["address"], r["pid_sure"]) for r in seen
    }
    assert {"closed"} == {r["outcome"] for r in seen}  # its program closed it


def test_reset_ends_the_socket_so_a_server_binds_at_once(selfdial: Path) -> None:
    """--reset PORT: the held self-connect reads ECONNABORTED and the server binds; without it, it cannot."""
    unwatched = in_ns([str(selfdial), str(PORT), "200", "500"])
    assert "errno 98" == unwatched["server"]  # EADDRINUSE: its TIME_WAIT holds the port

    watch = Watch("--reset", str(PORT))
    done = in_ns([str(selfdial), str(PORT), "200", "500"])
    reports, _ = watch.stop()
    lines = json_lines(done["stdout"])
    assert 103 == lines[0]["read_errno"]  # ECONNABORTED: ended from outside before its read
    assert "bound" == done["server"]
    seen = mine(reports, netns_of(done["stdout"]), lines[-1]["pid"])
    assert ["ended"] == [r["outcome"] for r in seen]


def test_reset_ends_the_time_wait_a_plain_close_leaves(selfdial: Path) -> None:
    """A program that closes its self-connect at once: --reset ends the TIME_WAIT, and the server binds."""
    watch = Watch("--reset", str(PORT))
    done = in_ns([str(selfdial), str(PORT), "200"])
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"])
    assert result["self_connects"] >= 1
    assert [("closed", "done: the port is free")] * result["self_connects"] == [
        (r["outcome"], r["reset"]) for r in seen
    ]
    assert "bound" == done["server"]


@pytest.fixture(scope="module")
def godial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/native/godial.go, built statically (CGO_ENABLED=0) with the Go toolchain."""
    require_namespaces()
    go = shutil.which("go")
    require(go is not None, "needs Go (apt-get install golang-go)")
    assert go is not None
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "CGO_ENABLED": "0", "HOME": str(out), "GOCACHE": str(out / "cache"), "GOFLAGS": ""}
    subprocess.run(
        [go, "build", "-o", str(out / "godial"), str(SOURCES / "godial.go")],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
        cwd=out,
    )
    return out / "godial"


def test_a_go_programs_hidden_self_connects_are_reported_and_reset_frees_the_port(godial: Path) -> None:
    """Go's dialer closes its self-connects and dials again: the program never sees them, watch does.

    Their TIME_WAIT keeps the server off its port; with --reset, the server binds at once.
    """
    unwatched = in_ns([str(godial), str(PORT), "200"])
    assert 0 == json_lines(unwatched["stdout"])[-1]["self_connects"]  # Go hid them...
    assert "errno 98" == unwatched["server"]  # ...but not their TIME_WAIT

    watch = Watch("--reset", str(PORT))
    done = in_ns([str(godial), str(PORT), "200"])
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"])
    assert len(seen) >= 1
    assert {("godial", PORT, "closed", "done: the port is free")} == {
        (r["comm"], r["port"], r["outcome"], r["reset"]) for r in seen
    }
    assert "bound" == done["server"]


def test_reset_leaves_other_ports_alone(selfdial: Path) -> None:
    """--reset names ports: a self-connect on another one is reported and left to its program."""
    watch = Watch("--reset", str(PORT + 2))
    done = in_ns([str(selfdial), str(PORT), "200", "100"])
    reports, _ = watch.stop()
    lines = json_lines(done["stdout"])
    assert 0 == lines[0]["read_errno"]  # it read its own bytes
    assert "errno 98" == done["server"]
    assert ["closed"] == [r["outcome"] for r in mine(reports, netns_of(done["stdout"]), lines[-1]["pid"])]


LOOP = r"""
import json, os, socket, sys, time
guarded = sys.argv[1] == "guard"
if guarded:
    import selfguard
    selfguard.install()
met = 0
for _ in range(150):
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", PORT))
        met += sock.getsockname() == sock.getpeername()
    except OSError:
        pass
    sock.close()
print(json.dumps({"pid": os.getpid(), "met": met, **(selfguard.stats() if guarded else {})}))
time.sleep(1)  # as a service would live on: the watcher reads /proc/PID a little after the event
""".replace("PORT", str(PORT))


def test_the_python_guards_self_connects_are_reported_as_caught() -> None:
    """Under the Python guard: what it retried is caught, what it gave up on is reset, nothing reached the program."""
    require_namespaces()
    watch = Watch()
    done = in_ns([sys.executable, "-c", LOOP, "guard"], env=clean_environ(SELFGUARD_LOG="0"))
    reports, _ = watch.stop()
    stats = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), stats["pid"])
    outcomes = Counter(r["outcome"] for r in seen)
    assert stats["gave_up"] >= 1
    assert {"caught": stats["self_connects"] - stats["gave_up"], "reset": stats["gave_up"]} == outcomes
    assert 0 == stats["met"]


def test_the_native_guards_self_connects_are_reported_as_caught(selfdial: Path, tmp_path: Path) -> None:
    """Under `selfguard run --native` (a dynamically linked client): caught and reset match the guard's own report."""
    require_library()
    dynamic = compile_c("selfdial", tmp_path)
    report = tmp_path / "report"
    watch = Watch()
    done = in_ns([*GUARDED, str(dynamic), str(PORT), "150"], env=clean_environ(SELFGUARD_NATIVE_REPORT=str(report)))
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"])
    counted, gave_up = (total(report_lines(report), name) for name in ("self_connects", "gave_up"))
    assert gave_up >= 1
    assert {"caught": counted - gave_up, "reset": gave_up} == Counter(r["outcome"] for r in seen), [
        (r["comm"], r["pid"], r["pid_sure"], r["netns"], r["outcome"]) for r in reports if r not in seen
    ][:10]
    assert 0 == result["self_connects"]


def test_an_unguarded_python_client_is_reported_as_reaching_the_program() -> None:
    """An unguarded Python loop: each self-connect it met is reported, as closed by the program."""
    require_namespaces()
    watch = Watch()
    done = in_ns([sys.executable, "-c", LOOP, "plain"])
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"])
    assert result["met"] >= 1
    assert result["met"] == len(seen)
    assert {"closed"} == {r["outcome"] for r in seen}


LOOP6 = r"""
import json, os, socket, time
met = 0
for _ in range(150):
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.connect(("::1", PORT))
            met += sock.getsockname()[:2] == sock.getpeername()[:2]
        except OSError:
            pass
print(json.dumps({"pid": os.getpid(), "met": met}))
time.sleep(1)
""".replace("PORT", str(PORT))


def test_ipv6_self_connects_are_reported() -> None:
    """An unguarded loop on ::1: each self-connect is seen, as IPv6, on its port."""
    require_namespaces()
    watch = Watch()
    done = in_ns([sys.executable, "-c", LOOP6])
    reports, _ = watch.stop()
    result = json_lines(done["stdout"])[-1]
    seen = mine(reports, netns_of(done["stdout"]), result["pid"])
    assert result["met"] >= 1
    described = [(r["family"], r["port"], r["outcome"]) for r in seen]
    assert [("ipv6", PORT, "closed")] * result["met"] == described, [r for r in reports if r["pid"] == result["pid"]]


BUSY_PORT = 5000  # outside its namespace's wide range: ordinary traffic, no self-connect possible
BUSY = r"""
import json, os, socket, threading
server = socket.socket()
server.bind(("127.0.0.1", PORT))
server.listen(512)
def serve():
    while True:
        conn, _ = server.accept()
        conn.close()
threading.Thread(target=serve, daemon=True).start()
for _ in range(3000):
    with socket.create_connection(("127.0.0.1", PORT), timeout=5):
        pass
print(json.dumps({"pid": os.getpid(), "connections": 3000}))
""".replace("PORT", str(BUSY_PORT))


def test_two_namespaces_at_once_and_a_busy_one(selfdial: Path) -> None:
    """Self-connects in two namespaces at the same time are all seen; 3000 ordinary connections never are."""
    watch = Watch()
    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(in_ns, [str(selfdial), str(PORT), "300"]) for _ in range(2)]
        busy = pool.submit(in_ns, [sys.executable, "-c", BUSY], port_range=(10000, 60999))
        results = [job.result() for job in jobs]
        busy_done = busy.result()
    reports, summary = watch.stop()
    assert 0 == summary["lost_events"]
    for done in results:
        result = json_lines(done["stdout"])[-1]
        assert result["self_connects"] >= 1
        seen = mine(reports, netns_of(done["stdout"]), result["pid"])
        assert result["self_connects"] == len(seen), [r for r in reports if r["pid"] == result["pid"]]
    assert 3000 == json_lines(busy_done["stdout"])[-1]["connections"], busy_done["stderr"]
    assert [] == mine(reports, netns_of(busy_done["stdout"]))


def test_not_root_is_refused_and_leaves_nothing() -> None:
    """As nobody: exit 3, one line saying root is needed, no tracing instance."""
    require_namespaces()
    before = instances()
    done = subprocess.run([*NOBODY, *WATCH], capture_output=True, text=True, timeout=60, cwd="/")
    assert 3 == done.returncode
    assert "selfguard watch: needs root" in done.stderr
    assert before == instances()


def test_no_tracefs_is_refused_and_leaves_nothing() -> None:
    """Where tracefs is neither mounted nor mountable (a user namespace's root, as in a container): exit 3."""
    require_namespaces()
    # A tmpfs over the mount point hides a tracefs the host may have mounted there.
    hide = 'mount -t tmpfs none /sys/kernel/tracing && exec "$@"'
    command = ["unshare", "-U", "-r", "-m", "sh", "-c", hide, "sh"]
    done = subprocess.run([*command, *WATCH], capture_output=True, text=True, timeout=60)
    assert 3 == done.returncode, done.stderr
    assert "tracefs is not mounted and cannot be mounted" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_instance_is_left_after_any_exit(sig: signal.Signals) -> None:
    """SIGINT and SIGTERM: the watcher removes its instance; SIGKILL: its guardian does, within a second."""
    require_namespaces()
    watch = Watch()
    name = os.path.basename(watch.instance)
    assert name in instances()
    watch.process.send_signal(sig)
    watch.process.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while name in instances() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert name not in instances()


def test_a_killed_watchers_instance_is_swept_by_the_next_start() -> None:
    """Watcher and guardian both killed: the next watcher removes what they left."""
    require_namespaces()
    require(sys.platform.startswith("linux"), "needs Linux")
    # A name no live process owns: what a watcher killed together with its guardian leaves.
    leftover = "selfguard-watch-999999999-1"
    made = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount -t tracefs nodev /sys/kernel/tracing && mkdir /sys/kernel/tracing/instances/{leftover}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert 0 == made.returncode, made.stderr
    watch = Watch()
    watch.stop()
    assert leftover not in instances()


# A process in namespace A, once told to go, makes an accidental self-connect on PORT in a
# namespace B: from a thread that entered B and is gone before the watcher reads the event
# ("thread"), or with a socket made in B by the process, which then went back to A ("setns");
# then A also holds a deliberate self-connect on PORT (bound, then connected to itself, made
# before the watcher starts). The kernel's event names the task, not B.
TWO_NAMESPACES = r"""
import ctypes, errno, json, os, socket, struct, sys, threading, time
P, MODE = PORT, sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
os.system("ip link set lo up")
deliberate = socket.socket()
if MODE == "setns":
    deliberate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deliberate.bind(("127.0.0.1", P))
    deliberate.connect(("127.0.0.1", P))
print("ready", flush=True)
sys.stdin.readline()
namespaces = [int(os.readlink("/proc/thread-self/ns/net")[5:-1])]
def accidental():
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    assert libc.unshare(0x40000000) == 0
    os.system("ip link set lo up")  # the child inherits this thread's namespace
    namespaces.append(int(os.readlink("/proc/thread-self/ns/net")[5:-1]))
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", P | P << 16))  # IP_LOCAL_PORT_RANGE
    if MODE == "setns":
        assert libc.setns(home, 0x40000000) == 0
    s.connect(("127.0.0.1", P))
    return s
if MODE == "thread":
    held = []
    worker = threading.Thread(target=lambda: held.append(accidental()))
    worker.start()
    worker.join()
    s = held[0]
else:
    s = accidental()
time.sleep(1.0)
def alive(sock):
    try:
        sock.send(b"x")
        return sock.recv(1) == b"x"
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ENOTCONN) and sock is deliberate and MODE != "setns":
            return True  # none was made

        return errno.errorcode[exc.errno]
result = {"pid": os.getpid(), "deliberate": alive(deliberate), "accidental": alive(s), "namespaces": namespaces}
print(json.dumps(result), flush=True)
""".replace("PORT", str(PORT))


def two_namespaces(mode: str) -> tuple[dict[str, Any], list[Report]]:
    require_namespaces()
    program = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-c", TWO_NAMESPACES, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(program)
    assert program.stdout is not None and program.stdin is not None
    assert "ready" == program.stdout.readline().strip(), program.stderr
    watch = Watch("--reset", str(PORT))
    program.stdin.write("go\n")
    program.stdin.flush()
    out, err = program.communicate(timeout=60)
    assert out, err
    reports, _ = watch.stop()
    result = json.loads(out.splitlines()[-1])
    return result, [r for r in reports if r["pid"] == result["pid"]]


def test_reset_ends_a_threads_self_connect_in_its_own_namespace_not_the_main_threads() -> None:
    """A thread in namespace B self-connects: --reset ends that socket, never the main thread's namespace's."""
    result, seen = two_namespaces("thread")
    assert {"deliberate": True, "accidental": "ECONNABORTED"} == {k: result[k] for k in ("deliberate", "accidental")}
    assert ["ended"] == [r["outcome"] for r in seen], seen
    # The thread's namespace, or null when the thread was gone before the watcher read its event.
    main, thread = result["namespaces"]
    assert seen[0]["netns"] in (thread, None), (seen, main, thread)


def test_reset_of_a_socket_made_in_another_namespace_ends_nothing_it_cannot_confirm() -> None:
    """A socket made in B by a process back in A, and a deliberate one in A: --reset ends neither."""
    result, seen = two_namespaces("setns")
    assert {"deliberate": True, "accidental": True} == {k: result[k] for k in ("deliberate", "accidental")}
    assert [r for r in seen if "could not confirm the socket" in r.get("reset", "")], seen


# argv: N, HOLD, ABORTS. ABORTS aborted ordinary connections, then N self-connects on PORT,
# PORT+1..., held open for HOLD seconds; prints their wall-clock times.
HELD = r"""
import json, os, socket, struct, sys, time
os.system("ip link set lo up")
server = socket.socket()
server.bind(("127.0.0.1", 5000))
server.listen(512)
for _ in range(int(sys.argv[3])):  # aborts first: events the filter passes, ahead in the buffer
    c = socket.create_connection(("127.0.0.1", 5000))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    server.accept()[0].close()
held = []
for i in range(int(sys.argv[1])):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", (PORT + i) | (PORT + i) << 16))  # IP_LOCAL_PORT_RANGE
    before = time.time()
    s.connect(("127.0.0.1", PORT + i))
    held.append((s, (before + time.time()) / 2))
print(json.dumps({"pid": os.getpid(), "times": [t for _, t in held]}), flush=True)
time.sleep(float(sys.argv[2]))
""".replace("PORT", str(PORT))


def held_self_connects(n: int, hold: float, aborts: int = 0) -> dict[str, Any]:
    argv = ["unshare", "-n", sys.executable, "-c", HELD, str(n), str(hold), str(aborts)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def stopped_while_buffered(watch: Watch, n: int, sig: signal.Signals) -> tuple[dict[str, Any], str]:
    """Make *n* self-connects while the watcher is stopped, behind pages of other events in its buffer, then *sig*."""
    watch.process.send_signal(signal.SIGSTOP)
    try:
        result = held_self_connects(n, 0, 300)
        watch.process.send_signal(sig)
    finally:
        watch.process.send_signal(signal.SIGCONT)
    out, err = watch.process.communicate(timeout=30)
    assert 0 == watch.process.returncode, err
    return result, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_events_buffered_at_the_stop_are_read_and_reported_with_a_summary(sig: signal.Signals) -> None:
    """The stop arrives with a self-connect's event still in the kernel's buffer: it is read, then the summary."""
    require_namespaces()
    result, out = stopped_while_buffered(Watch(), 1, sig)
    lines = json_lines(out)
    assert "summary" in lines[-1]
    assert [PORT] == [r["port"] for r in lines[:-1] if r["pid"] == result["pid"]], out


def test_count_reports_exactly_that_many() -> None:
    """--count 1 with two self-connects read together: one is reported, and the summary counts one."""
    require_namespaces()
    _, out = stopped_while_buffered(Watch("--count", "1"), 2, signal.SIGCONT)
    lines = json_lines(out)
    assert 1 == len(lines[:-1]) == lines[-1]["self_connects"], out


def test_times_are_the_wall_clocks_to_the_millisecond() -> None:
    """Each report's time is when its program connected, on the wall clock (not seconds of one clock, ms of another)."""
    require_namespaces()
    watch = Watch()
    times = []
    for _ in range(3):
        result = held_self_connects(1, 0)
        times.append((result["pid"], result["times"][0]))
        time.sleep(0.37)
    reports, _ = watch.stop()
    for pid, wall in times:
        # Its own, or (met in a softirq that ran in another task) the one of its moment.
        [report] = [r for r in reports if r["pid"] == pid] or [
            r for r in reports if softirq_elsewhere(r) and abs(_seconds(r["time"]) - wall) < 0.05
        ]
        assert abs(_seconds(report["time"]) - wall) < 0.05, (report["time"], wall)


def _seconds(stamp: str) -> float:
    """A report's time (UTC, to the millisecond) as seconds since the epoch."""
    seen = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return seen + int(stamp[20:23]) / 1000


# Two IPv6 sockets, [::1]:PORT and [fd00::5]:PORT, dial each other: a simultaneous open of two
# sockets, with the same port at both ends, that is no self-connect.
TWO_SOCKETS_V6 = r"""
import json, os, socket, time
os.system("ip link set lo up; ip -6 route add fd00::5/128 dev lo")
a = socket.socket(socket.AF_INET6)
a.bind(("::1", PORT))
a.setblocking(False)
try:
    a.connect(("fd00::5", PORT))  # its SYN goes nowhere: it waits in SYN_SENT
except BlockingIOError:
    pass
time.sleep(0.2)
b = socket.socket(socket.AF_INET6)
b.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
b.bind(("fd00::5", PORT))
b.setblocking(False)
try:
    b.connect(("::1", PORT))  # its SYN meets a's SYN_SENT: a simultaneous open
except BlockingIOError:
    pass
time.sleep(1.0)
print(json.dumps({"pid": os.getpid()}), flush=True)
""".replace("PORT", str(PORT))


def test_an_ipv6_simultaneous_open_of_two_sockets_is_not_a_self_connect() -> None:
    """[::1]:P and [fd00::5]:P meet in a simultaneous open: the ports match, the addresses do not: not reported."""
    require_namespaces()
    watch = Watch()
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", TWO_SOCKETS_V6], capture_output=True, text=True)
    assert 0 == done.returncode, done.stderr
    reports, _ = watch.stop()
    pid = json.loads(done.stdout.splitlines()[-1])["pid"]
    assert [] == [r for r in reports if r["pid"] == pid], json.dumps(reports)
