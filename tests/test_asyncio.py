"""asyncio: sock_connect, create_connection and open_connection retry self-connects; no protocol gets one."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import LINGER_RST, full_backlog_server

pytestmark = pytest.mark.usefixtures("needs_forcing")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_sock_connect_retries_and_gives_up_with_self_connect_error(free_port):
    """Every attempt forced: SelfConnectError after 1 + retries attempts, events naming the API."""
    selfguard.install()
    port = free_port()
    events = []
    selfguard.add_listener(events.append)

    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            with force_self_connects(port, times=3), pytest.raises(selfguard.SelfConnectError) as caught:
                await loop.sock_connect(sock, ("127.0.0.1", port))
            assert 3 == caught.value.attempts
            assert not selfguard.is_self_connected(sock)

    run(main())
    assert ["self_connect", "retry", "self_connect", "retry", "self_connect", "gave_up"] == [e.kind for e in events]
    assert {"loop.sock_connect"} == {e.api for e in events}


def test_a_retry_reaches_the_server_that_came_back(free_port):
    """open_connection: the first attempt self-connects, the server is up for the retry, the stream works."""
    selfguard.install()
    port = free_port()
    servers = []

    def server_comes_back(event):
        if event.kind == "retry":
            servers.append(socket.create_server(("127.0.0.1", port)))  # binds at once: no TIME_WAIT

    selfguard.add_listener(server_comes_back)

    async def main():
        with force_self_connects(port, times=1):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn, _ = servers[0].accept()
        writer.write(b"PING")
        await writer.drain()
        assert b"PING" == conn.recv(4)  # the server got it, not the client itself
        conn.sendall(b"PONG")
        assert b"PONG" == await reader.readexactly(4)
        conn.close()
        writer.close()

    run(main())
    servers[0].close()
    assert {"self_connects": 1, "retries": 1, "gave_up": 0} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up")
    }


def test_no_self_connected_transport_reaches_a_protocol(free_port):
    """create_connection fails instead of handing a protocol a connection to itself."""
    selfguard.install()
    port = free_port()
    made = []

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    async def main():
        loop = asyncio.get_running_loop()
        with force_self_connects(port, times=3), pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Protocol, "127.0.0.1", port)

    run(main())
    assert [] == made


def test_without_the_guard_a_protocol_gets_a_connection_to_itself(free_port):
    """The control: unguarded, the stream reads its own request back."""
    port = free_port()

    async def main():
        with force_self_connects(port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert b"GET / HTTP/1.0\r\n\r\n" == await reader.readexactly(18)
        writer.transport.abort()

    run(main())


def test_ssl_connections_are_retried_before_the_handshake(free_port):
    """open_connection(ssl=...): the retry reaches a TLS server that came back and the handshake succeeds."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    selfguard.install()
    port = free_port()

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        started = []

        def server_comes_back(event):
            if event.kind == "retry":
                sock = socket.create_server(("127.0.0.1", port))
                started.append(asyncio.ensure_future(asyncio.start_server(echo, sock=sock, ssl=server_ctx)))

        selfguard.add_listener(server_comes_back)
        with force_self_connects(port, times=1):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
        writer.write(b"PING")
        assert b"PING" == await reader.readexactly(4)
        writer.close()
        server = await started[0]
        server.close()
        await server.wait_closed()

    run(main())
    assert 1 == selfguard.stats()["retries"]


@pytest.mark.parametrize("interleave", [None, 1])
def test_happy_eyeballs_attempts_are_guarded(free_port, interleave):
    """With happy_eyeballs_delay the staggered attempts go through the same guard."""
    selfguard.install()
    port = free_port()

    async def main():
        with force_self_connects(port, times=3), pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port, happy_eyeballs_delay=0.05, interleave=interleave)

    run(main())
    assert {"self_connects": 3, "gave_up": 1} == {k: selfguard.stats()[k] for k in ("self_connects", "gave_up")}


def test_relent_hands_back_the_self_connected_socket_after_the_retries(free_port):
    """mode="relent": like Go, after the retries the last self-connected socket is returned."""
    selfguard.install(mode="relent")
    port = free_port()

    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            with force_self_connects(port, times=3):
                await loop.sock_connect(sock, ("127.0.0.1", port))
            assert selfguard.is_self_connected(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)

    run(main())
    assert {"self_connects": 3, "retries": 2, "relented": 1} == {
        k: selfguard.stats()[k] for k in ("self_connects", "retries", "relented")
    }


def test_asyncio_imported_after_install_is_patched():
    """install() does not import asyncio itself, yet patches asyncio once the program imports it."""
    code = (
        "import sys, wrapt\n"
        # wrapt 2 imports asyncio itself: forget it, so that this is a program that has not imported it yet.
        "for name in [m for m in sys.modules if m == 'asyncio' or m.startswith('asyncio.')]:\n"
        "    del sys.modules[name]\n"
        "import selfguard\n"
        "selfguard.install()\n"
        "assert 'asyncio' not in sys.modules, 'install() imported asyncio'\n"
        "import asyncio.selector_events as se\n"
        "assert isinstance(vars(se.BaseSelectorEventLoop)['sock_connect'], wrapt.FunctionWrapper)\n"
        "selfguard.uninstall()\n"
        "assert type(vars(se.BaseSelectorEventLoop)['sock_connect']).__name__ == 'function'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ok\n" == done.stdout, done.stderr


def test_uvloop_transports_can_be_checked_with_is_self_connected(free_port):
    """uvloop connects in C, out of the guard's sight; is_self_connected(transport) tells the truth about them."""
    uvloop = pytest.importorskip("uvloop")
    port = free_port()
    selfconnected = socket.socket()
    selfconnected.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    with force_self_connects(port):
        selfconnected.connect(("127.0.0.1", port))  # unguarded: the real bug

    async def main():
        loop = asyncio.get_running_loop()
        bad, _ = await loop.create_connection(asyncio.Protocol, sock=selfconnected)
        with socket.create_server(("127.0.0.1", 0)) as srv:
            good, _ = await loop.create_connection(asyncio.Protocol, *srv.getsockname())
            assert (True, False) == (selfguard.is_self_connected(bad), selfguard.is_self_connected(good))
            good.close()
        bad.close()

    uvloop.run(main())


def test_the_first_connect_of_a_process_can_be_an_asyncio_one(free_port):
    """In a fresh interpreter whose first connect is non-blocking, the guard still knows the range."""
    port = free_port()
    code = (
        "import asyncio, selfguard\n"
        "from selfguard.testing import force_self_connects\n"
        "selfguard.install()\n"
        "async def main():\n"
        f"    with force_self_connects({port}, times=3):\n"
        f"        await asyncio.open_connection('127.0.0.1', {port})\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except selfguard.SelfConnectError as exc:\n"
        "    print('caught after', exc.attempts, 'attempts')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "caught after 3 attempts" == done.stdout.strip(), done.stderr


def test_a_cancelled_asyncio_connect_leaves_the_port_free(free_port):
    """Cancelled in the very loop round its socket self-connected: the socket is reset, the server can bind."""
    selfguard.install()
    port = free_port()

    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with force_self_connects(port, times=1):
            task = asyncio.ensure_future(loop.sock_connect(sock, ("127.0.0.1", port)))
            await asyncio.sleep(0)  # the connect is issued; the loop waits for writability
            twin = os.dup(sock.fileno())  # writable in the same round: cancel the task then
            loop.add_writer(twin, lambda: (task.cancel(), loop.remove_writer(twin)))
            with pytest.raises(asyncio.CancelledError):
                await task
        os.close(twin)
        assert not selfguard.is_self_connected(sock)
        sock.close()  # what create_connection does on any exception

    asyncio.run(main())
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))  # no EADDRINUSE: no TIME_WAIT was left behind
    srv.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_pending_sock_connect_closed_outside_its_task_does_not_raise(loop_kind, free_port):
    """coroutine.close() from outside the task that runs it, its connect pending: no error, as without the guard."""
    new_loop = asyncio.new_event_loop if loop_kind == "asyncio" else pytest.importorskip("uvloop").new_event_loop
    port = free_port()
    server, waiting = full_backlog_server(port)  # SYNs dropped: the connect stays pending

    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            connecting = loop.sock_connect(sock, ("127.0.0.1", port))
            task = loop.create_task(connecting)  # runs in a copy of this context
            await asyncio.sleep(0.05)
            assert not task.done()
            try:
                connecting.close()  # here, in this context: GeneratorExit where the task left it
                closed = "closed"
            except Exception as exc:
                closed = repr(exc)
            task.cancel()
            try:
                await task
            except BaseException as exc:  # the task drives a closed coroutine: what asyncio makes of it
                return closed, type(exc).__name__, str(exc)
            return closed, "finished"

    outcomes = []
    try:
        for guarded in (False, True):
            if guarded:
                selfguard.install()
            loop = new_loop()
            try:
                outcomes.append(loop.run_until_complete(asyncio.wait_for(main(), 20)))
            finally:
                loop.close()
    finally:
        server.close()
        waiting.close()
    assert "closed" == outcomes[1][0]
    assert outcomes[0] == outcomes[1]


TORN_DOWN = r"""
import asyncio, gc, socket, sys
import selfguard
if sys.argv[2] == "guarded":
    selfguard.install()
port = int(sys.argv[3])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen(0)
waiting = socket.create_connection(("127.0.0.1", port))  # backlog full: the next connect stays pending
sock = socket.socket()
sock.setblocking(False)

async def start():
    loop = asyncio.get_running_loop()
    loop.create_task(loop.sock_connect(sock, ("127.0.0.1", port)))
    await asyncio.sleep(0.05)

if sys.argv[1] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
loop.run_until_complete(start())
loop.close()  # its pending task is never cancelled: the garbage collector closes its coroutine
del loop
gc.collect()
print("done")
"""


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_pending_sock_connect_of_a_torn_down_loop_leaves_no_extra_traceback(loop_kind, free_port):
    """A loop closed with a sock_connect pending, its task collected: stderr the same as without the guard."""
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    port = free_port()
    stderr = {}
    for mode in ("unguarded", "guarded"):
        done = subprocess.run(
            [sys.executable, "-c", TORN_DOWN, loop_kind, mode, str(port)], capture_output=True, text=True, timeout=60
        )
        assert "done\n" == done.stdout, done.stderr
        stderr[mode] = [line for line in done.stderr.splitlines() if "Exception ignored" in line or "Context" in line]
    assert stderr["unguarded"] == stderr["guarded"]
