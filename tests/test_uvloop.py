"""uvloop connects in libuv; the guard still keeps every self-connected transport from the user's protocol.

Forcing self-connects per socket (IP_LOCAL_PORT_RANGE from Python) cannot
reach sockets libuv creates, so each test runs a child in its own network
namespace (`unshare -n`, root) whose ephemeral range is narrowed to two
ports: the kernel itself then self-connects about every other dial to the
even one, as it does in the real bug.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import require

pytest.importorskip("uvloop", reason="uvloop is in the test extra")

PRELUDE = r"""
import asyncio, json, socket, ssl, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
PORT = 40000
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write(f"{PORT} {PORT + 1}")  # connect() tries PORT first: it self-connects often
import uvloop, selfguard

def can_bind(port):
    with socket.socket() as srv:
        try:
            srv.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

class Recording(asyncio.Protocol):
    made = []  # what every protocol saw in connection_made
    def connection_made(self, transport):
        Recording.made.append(selfguard.is_self_connected(transport))
        transport.write(b"PING")
        self.transport = transport
    def data_received(self, data):
        Recording.made.append(("read", data))
"""


def run_in_namespace(body: str, *args: str, under_run: bool = False) -> dict:
    require(sys.platform.startswith("linux"), "needs Linux network namespaces")
    require(os.geteuid() == 0, "needs root for a network namespace (CI runs as root)")
    require(shutil.which("unshare") is not None and shutil.which("ip") is not None, "needs unshare and ip")
    run = [sys.executable, "-m", "selfguard", "run", "--"] if under_run else []
    done = subprocess.run(
        ["unshare", "-n", *run, sys.executable, "-c", PRELUDE + body, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


RECONNECT_LOOP = r"""
DIALS = 100
async def dial_loop(how):
    loop = asyncio.get_running_loop()
    seen = {"self_connected": 0, "read_own_bytes": 0, "refused": 0, "other": []}
    for _ in range(DIALS):
        try:
            if how == "open_connection":
                reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
                transport = writer.transport
                writer.write(b"PING")
                data = await asyncio.wait_for(reader.read(4), 2)
            else:
                transport, protocol = await loop.create_connection(Recording, "127.0.0.1", PORT)
                await asyncio.sleep(0.01)
                data = b"PING" if ("read", b"PING") in Recording.made else b""
        except ConnectionRefusedError:
            seen["refused"] += 1
            continue
        except OSError as exc:
            seen["other"].append(repr(exc))
            continue
        seen["self_connected"] += selfguard.is_self_connected(transport)
        seen["read_own_bytes"] += data == b"PING"
        transport.close()
    await asyncio.sleep(0.05)
    seen["server_can_bind"] = can_bind(PORT)
    seen["protocol_saw_self_connected"] = sum(1 for m in Recording.made if m is True)
    Recording.made.clear()
    return seen

how = sys.argv[1]
if sys.argv[2] == "guarded":
    selfguard.install()
report = uvloop.run(dial_loop(how))
report["stats"] = selfguard.stats()
print(json.dumps(report))
"""


@pytest.mark.parametrize("how", ["open_connection", "create_connection"])
def test_without_the_guard_uvloop_hands_out_self_connected_transports(how):
    """The control: unguarded, uvloop clients read their own bytes and keep the server from binding."""
    report = run_in_namespace(RECONNECT_LOOP, how, "unguarded")
    assert report["self_connected"] >= 1, report
    assert report["read_own_bytes"] >= 1, report
    assert not report["server_can_bind"], report


@pytest.mark.parametrize("how", ["open_connection", "create_connection"])
def test_uvloop_clients_never_see_a_self_connected_transport(how):
    """Guarded: 0 self-connected transports, no protocol ever saw one, only refusals, and the server binds."""
    report = run_in_namespace(RECONNECT_LOOP, how, "guarded")
    assert (0, 0, 0) == (report["self_connected"], report["read_own_bytes"], report["protocol_saw_self_connected"])
    assert ([], 100) == (report["other"], report["refused"]), report
    assert report["server_can_bind"], report
    stats = report["stats"]
    assert stats["self_connects"] >= 20, stats  # the kernel met itself often: the guard caught each one
    assert stats["self_connects"] == stats["retries"] + stats["gave_up"], stats


SERVER_COMES_BACK = r"""
async def main():
    loop = asyncio.get_running_loop()
    selfguard.install()
    started = []

    async def serve(reader, writer):
        writer.write(b"HELLO")
        await writer.drain()
        writer.close()

    def on_event(event):  # the server starts while the client is retrying: the reset freed the port already
        if event.kind == "self_connect" and not started:
            listening = socket.create_server(("127.0.0.1", PORT))
            started.append(loop.create_task(asyncio.start_server(serve, sock=listening)))

    selfguard.add_listener(on_event)
    refused = 0
    for _ in range(200):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
            break
        except ConnectionRefusedError:
            refused += 1
            await asyncio.sleep(0.005)
    data = await reader.read(5)
    writer.close()
    return {"data": data.decode(), "refused": refused, "stats": selfguard.stats()}

print(json.dumps(uvloop.run(main())))
"""


def test_a_uvloop_client_reaches_the_server_once_it_is_back():
    """A reconnect loop under uvloop gets the real server's greeting once it is up, never its own bytes."""
    report = run_in_namespace(SERVER_COMES_BACK)
    assert "HELLO" == report["data"], report
    assert report["stats"]["self_connects"] >= 1, report


SOCK_CONNECT = r"""
async def main():
    loop = asyncio.get_running_loop()
    selfguard.install()
    outcomes = []
    for _ in range(50):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", PORT))
            outcomes.append("self-connected" if selfguard.is_self_connected(sock) else "connected")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
        sock.close()
    return {"outcomes": sorted(set(outcomes)), "stats": selfguard.stats(), "can_bind": can_bind(PORT)}

print(json.dumps(uvloop.run(main())))
"""


def test_uvloop_sock_connect_retries_like_asyncios():
    """loop.sock_connect under uvloop: self-connects retried on the same socket, then SelfConnectError."""
    report = run_in_namespace(SOCK_CONNECT)
    assert set(report["outcomes"]) <= {"ConnectionRefusedError", "SelfConnectError"}, report
    assert report["can_bind"], report
    assert report["stats"]["retries"] >= 1, report


AIOHTTP = r"""
import aiohttp
from aiohttp import web

async def main():
    selfguard.install()
    symptoms, refused = [], 0
    async with aiohttp.ClientSession() as session:
        for _ in range(60):
            try:
                async with session.get(f"http://127.0.0.1:{PORT}/") as response:
                    symptoms.append(f"HTTP {response.status}")
            except aiohttp.ClientConnectorError:
                refused += 1
            except Exception as exc:  # what a self-connect looks like: a response parsed from our own request
                symptoms.append(repr(exc)[:200])
        could_bind = can_bind(PORT)
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="real server"))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", PORT).start()
        async with session.get(f"http://127.0.0.1:{PORT}/") as response:
            body = await response.text()
        await runner.cleanup()
    return {"symptoms": symptoms, "refused": refused, "could_bind": could_bind, "body": body,
            "stats": selfguard.stats()}

print(json.dumps(uvloop.run(main())))
"""


def test_aiohttp_on_uvloop_meets_no_symptom_and_the_server_binds():
    """A real HTTP client on uvloop: 60 dials while the server is down give refusals only; then the server binds."""
    pytest.importorskip("aiohttp")
    report = run_in_namespace(AIOHTTP)
    assert ([], 60) == (report["symptoms"], report["refused"]), report
    assert report["could_bind"], report
    assert "real server" == report["body"]
    assert report["stats"]["self_connects"] >= 5, report
    assert report["stats"]["retries"] >= 1, report  # retried transparently, not only told the truth


TLS = r"""
import trustme
ca = trustme.CA()
cert = ca.issue_cert("localhost")
client_ctx = ssl.create_default_context()
ca.configure_trust(client_ctx)
server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
cert.configure_cert(server_ctx)

async def main():
    loop = asyncio.get_running_loop()
    selfguard.install()
    outcomes = []
    for _ in range(30):
        try:
            await asyncio.open_connection("127.0.0.1", PORT, ssl=client_ctx, server_hostname="localhost")
            outcomes.append("connected")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    could_bind = can_bind(PORT)

    async def serve(reader, writer):
        writer.write(b"TLS HELLO")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", PORT, ssl=server_ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT, ssl=client_ctx, server_hostname="localhost")
    data = await reader.read(9)
    cipher = writer.get_extra_info("cipher") is not None
    writer.close()
    server.close()
    return {"outcomes": sorted(set(outcomes)), "could_bind": could_bind, "data": data.decode(), "tls": cipher,
            "stats": selfguard.stats()}

print(json.dumps(uvloop.run(main())))
"""


def test_tls_connections_on_uvloop_are_checked_before_the_handshake():
    """ssl= under uvloop: self-connects are caught before any handshake with itself; real TLS still works."""
    pytest.importorskip("trustme")
    report = run_in_namespace(TLS)
    assert {"ConnectionRefusedError", "SelfConnectError"} >= set(report["outcomes"]), report
    assert report["could_bind"], report
    assert ("TLS HELLO", True) == (report["data"], report["tls"]), report
    assert report["stats"]["self_connects"] >= 1, report


COUNTED_FACTORY = r"""
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write(f"{PORT} {PORT}")  # one port: every dial to PORT self-connects, every attempt
made = []

class Counted(asyncio.Protocol):
    def __init__(self):
        made.append(self)
        self.seen = []  # what each connection_made was given: self-connected or not
    def connection_made(self, transport):
        self.seen.append(selfguard.is_self_connected(transport))

async def main():
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(Counted, "127.0.0.1", PORT)
        outcome = ["handed over", made.index(protocol), protocol.seen]
        transport.abort()
    except OSError as exc:
        outcome = [type(exc).__name__, None, [p.seen for p in made]]
    return {"factory_calls": len(made), "outcome": outcome, "stats": selfguard.stats()}

if sys.argv[1] != "unguarded":
    selfguard.install(mode=sys.argv[1])
print(json.dumps(uvloop.run(main())))
"""

OUTCOMES = {
    "unguarded": ["handed over", 0, [True]],
    "enforce": ["SelfConnectError", None, [[]]],  # the one protocol made never saw a transport
    "relent": ["handed over", 0, [True]],  # the third attempt's transport, handed to the one protocol made
}


@pytest.mark.parametrize("mode", sorted(OUTCOMES))
def test_one_create_connection_calls_the_protocol_factory_once(mode):
    """Three attempts (two retries) under the guard: the user's protocol_factory is called once, as uvloop calls it."""
    report = run_in_namespace(COUNTED_FACTORY, mode)
    assert (1, OUTCOMES[mode]) == (report["factory_calls"], report["outcome"]), report
    assert (0 if mode == "unguarded" else 2) == report["stats"]["retries"], report


CALL_FORMS = r"""
selfguard.install()
FORMS = {
    "keywords": lambda loop: loop.create_connection(protocol_factory=Recording, host="127.0.0.1", port=PORT),
    "port as bytes": lambda loop: loop.create_connection(Recording, "127.0.0.1", str(PORT).encode()),
    "port as spaced text": lambda loop: loop.create_connection(Recording, "127.0.0.1", f" {PORT}"),
    "port as float": lambda loop: loop.create_connection(Recording, "127.0.0.1", float(PORT)),
}
async def main():
    loop, outcomes = asyncio.get_running_loop(), {}
    for name, call in FORMS.items():
        try:
            transport, _ = await call(loop)
            outcomes[name] = "self-connected" if selfguard.is_self_connected(transport) else "connected"
            transport.close()
        except OSError as exc:
            outcomes[name] = type(exc).__name__
    return {"outcomes": outcomes, "protocol_saw_self_connected": sum(1 for m in Recording.made if m is True),
            "server_can_bind": can_bind(PORT)}
print(json.dumps(uvloop.run(main())))
"""


def test_every_create_connection_call_form_uvloop_takes_is_guarded():
    """Keyword arguments, and ports as bytes, spaced text or float (uvloop takes them all): each is guarded."""
    report = run_in_namespace(CALL_FORMS.replace("PORT + 1", "PORT"))
    assert {"SelfConnectError", "ConnectionRefusedError"} >= set(report["outcomes"].values()), report
    assert 0 == report["protocol_saw_self_connected"], report
    assert report["server_can_bind"], report


UNDER_RUN = r"""
async def main():
    before = selfguard.status()
    outcomes = []
    for _ in range(20):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
            outcomes.append("self-connected" if selfguard.is_self_connected(writer) else "connected")
            writer.close()
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    return {"before": before, "outcomes": sorted(set(outcomes)), "stats": selfguard.stats(), "can_bind": can_bind(PORT)}

print(json.dumps(uvloop.run(main())))
"""

FAST_OPEN_FIRST = r"""
sock = socket.socket()
try:
    sock.sendto(b"PING", socket.MSG_FASTOPEN, ("127.0.0.1", PORT))
    outcome = "self-connected" if selfguard.is_self_connected(sock) else "sent"
except OSError as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "stats": selfguard.stats(), "can_bind": can_bind(PORT)}))
"""


def test_under_selfguard_run_the_first_connect_can_be_a_uvloop_one():
    """selfguard run: uvloop dials in C, so its own methods wait for the first connect too, and are guarded."""
    report = run_in_namespace(UNDER_RUN, under_run=True)
    assert "armed" == report["before"], report
    assert {"SelfConnectError", "ConnectionRefusedError"} >= set(report["outcomes"]), report
    assert report["stats"]["self_connects"] >= 1, report
    assert report["can_bind"], report


def test_under_selfguard_run_the_first_connect_can_be_a_fast_open_send():
    """selfguard run: sendto(..., MSG_FASTOPEN, ...) as the process's first connect is guarded."""
    report = run_in_namespace(FAST_OPEN_FIRST, under_run=True)
    assert "SelfConnectError" == report["outcome"], report
    assert report["can_bind"], report
