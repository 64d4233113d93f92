"""`selfguard run --native -- CMD` guards real C clients: curl, libpq, Node, Java and a C client of the test's own.

Each client makes 100 attempts to 127.0.0.1:40000, where nothing listens, in a fresh
network namespace whose ephemeral range is 40000-40001: the kernel picks the dialled port
as source port, so the client connects to itself at its first attempt, as a reconnect
loop does in production while its local server is down. Unguarded, the client reads its
own request back, and the TIME_WAIT its close() leaves keeps a server from binding the
port. Guarded, no attempt sees anything but a refused connect, and the server binds as
soon as it starts. The native guard's own report (SELFGUARD_NATIVE_REPORT) shows that it
met the self-connects: the guarded run's zero is not luck.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

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

ATTEMPTS = 100
PORT = 40000
EADDRINUSE = "errno 98"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_library()
    require_namespaces()
    return tmp_path_factory.mktemp("native-clients")


def both(
    argv: list[str], tmp_path: Path, host: str = "127.0.0.1"
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, int]]]:
    """Run *argv* unguarded, then under `selfguard run --native`, each in a namespace of its own."""
    report = tmp_path / "native-report.jsonl"
    unguarded = in_namespace(argv, host=host, env=clean_environ())
    guarded = in_namespace([*GUARDED, *argv], host=host, env=clean_environ(SELFGUARD_NATIVE_REPORT=str(report)))
    return unguarded, guarded, report_lines(report)


def check(name: str, unguarded: dict[str, Any], guarded: dict[str, Any], native: list[dict[str, int]]) -> None:
    """The symptom and the blocked server without the guard; with it, only refusals and a server that binds."""
    print(
        f"{name}: unguarded {unguarded['symptoms']} symptom(s) of {ATTEMPTS}, server {unguarded['server']}; "
        f"guarded {guarded['symptoms']} symptom(s), {guarded['refused']} refused, server {guarded['server']}; "
        f"native guard: {total(native, 'self_connects')} self-connect(s), {total(native, 'gave_up')} gave up"
    )
    assert unguarded["symptoms"] >= 1, unguarded
    assert EADDRINUSE == unguarded["server"]
    assert (0, ATTEMPTS, 0) == (guarded["symptoms"], guarded["refused"], guarded["other"]), guarded
    assert "bound" == guarded["server"]
    assert total(native, "self_connects") >= 1  # the guard met them: the zero above is its doing
    assert 0 == total(native, "faults")


def json_outcome(run: dict[str, Any]) -> dict[str, Any]:
    """The outcome a client that prints one JSON object reported (own_bytes: it read its own request)."""
    assert 0 == run["rc"], run["stderr"]
    seen = json.loads(run["stdout"].strip().splitlines()[-1])
    other = seen["other_reply"] + seen["no_reply"] + seen["other_error"]
    return {"symptoms": seen["own_bytes"], "refused": seen["refused"], "other": other, "server": run["server"]}


@pytest.mark.parametrize(
    "mode, host",
    [
        ("blocking", "127.0.0.1"),
        ("blocking", "::1"),
        ("so_error", "127.0.0.1"),
        ("connect_again", "127.0.0.1"),
        ("fastopen", "127.0.0.1"),
    ],
)
def test_a_c_client_never_reads_its_own_request(build: Path, tmp_path: Path, mode: str, host: str):
    """Blocking, non-blocking completed by SO_ERROR or by connecting again, and TCP Fast Open: all guarded."""
    client = compile_c("client", build)
    argv = [str(client), mode, host, str(PORT), str(ATTEMPTS)]
    unguarded, guarded, native = both(argv, tmp_path, host)
    check(f"C client ({mode}, {host})", json_outcome(unguarded), json_outcome(guarded), native)
    if mode in ("blocking", "fastopen"):
        # A blocking connect is retried in place twice before it is refused: three self-connects each.
        assert (3 * ATTEMPTS, 2 * ATTEMPTS) == (total(native, "self_connects"), total(native, "retries"))
    else:
        # Completed out of sight: nobody waits to retry; reset and refused at once.
        assert (ATTEMPTS, 0) == (total(native, "self_connects"), total(native, "retries"))
    assert ATTEMPTS == total(native, "gave_up")


CURL_LOOP = (
    'i=0; while [ "$i" -lt "$1" ]; do curl -sS --max-time 5 "http://127.0.0.1:$2/" 2>&1; echo "rc=$?"; '
    "i=$((i + 1)); done"
)


def curl_outcome(run: dict[str, Any]) -> dict[str, Any]:
    codes = re.findall(r"^rc=(\d+)$", run["stdout"], re.M)
    assert ATTEMPTS == len(codes), run["stdout"][-2000:]
    # curl: (1) Received HTTP/0.9 when not allowed -- its own GET, read back as the reply.
    symptoms = run["stdout"].count("HTTP/0.9")
    refused = codes.count("7")  # (7) Failed to connect ... Couldn't connect to server
    return {"symptoms": symptoms, "refused": refused, "other": len(codes) - refused - symptoms, "server": run["server"]}


def test_curl_never_reads_its_own_request(build: Path, tmp_path: Path):
    """A shell loop of curl processes (libcurl: non-blocking connect, SO_ERROR): the whole tree is guarded."""
    require(shutil.which("curl") is not None, "needs curl")
    unguarded, guarded, native = both(["sh", "-c", CURL_LOOP, "sh", str(ATTEMPTS), str(PORT)], tmp_path)
    check("curl", curl_outcome(unguarded), curl_outcome(guarded), native)


PSYCOPG2_LOOP = r"""
import json, sys
import psycopg2
seen = {"symptoms": 0, "refused": 0, "other": 0, "first_symptom": ""}
for _ in range(int(sys.argv[1])):
    try:
        psycopg2.connect(host="127.0.0.1", port=int(sys.argv[2]), dbname="x", user="x", connect_timeout=5).close()
        seen["other"] += 1
    except psycopg2.OperationalError as exc:
        message = str(exc)
        if "Connection refused" in message:
            seen["refused"] += 1
        elif "invalid response" in message:  # its own SSLRequest, read back as the server's answer
            seen["symptoms"] += 1
            seen["first_symptom"] = seen["first_symptom"] or message.strip()
        else:
            seen["other"] += 1
print(json.dumps(seen))
"""


def psycopg2_outcome(run: dict[str, Any]) -> dict[str, Any]:
    assert 0 == run["rc"], run["stderr"]
    return {**json.loads(run["stdout"].strip().splitlines()[-1]), "server": run["server"]}


def test_psycopg2_through_libpq_never_reads_its_own_request(build: Path, tmp_path: Path):
    """psycopg2-binary's libpq connects in C, out of the Python guard's sight: the native guard covers it."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(False, "needs psycopg2-binary (the test extra)")
    unguarded, guarded, native = both([sys.executable, "-c", PSYCOPG2_LOOP, str(ATTEMPTS), str(PORT)], tmp_path)
    check("psycopg2 (libpq)", psycopg2_outcome(unguarded), psycopg2_outcome(guarded), native)


def test_node_net_connect_never_reads_its_own_bytes(build: Path, tmp_path: Path):
    """Node's net.connect (libuv: non-blocking connect, SO_ERROR)."""
    node = shutil.which("node")
    require(node is not None, "needs node")
    assert node is not None
    unguarded, guarded, native = both([node, str(SOURCES / "client.js"), str(PORT), str(ATTEMPTS)], tmp_path)
    check("Node net.connect", json_outcome(unguarded), json_outcome(guarded), native)


def test_java_socket_never_reads_its_own_bytes(build: Path, tmp_path: Path):
    """java.net.Socket with a connect timeout, launched as a single source file (the JVM's connect is in C)."""
    java = shutil.which("java")
    require(java is not None, "needs java")
    assert java is not None
    argv = [java, str(SOURCES / "Client.java"), str(PORT), str(ATTEMPTS)]
    unguarded, guarded, native = both(argv, tmp_path)
    check("Java Socket", json_outcome(unguarded), json_outcome(guarded), native)
