"""Real client libraries reconnecting while their server is down: only connection errors, then the server.

Each test forces the first attempts of the client's own, internally created
sockets to self-connect (selfguard.testing.force_self_connects), as a real
reconnect loop would meet them by chance; then starts the real server on that
very port -- which only works because the guard left no TIME_WAIT behind --
and checks that the client reaches it.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

import selfguard
from selfguard.testing import force_self_connects

from helpers import LINGER_RST, require, require_forcing

FORCED = 6  # forced self-connecting attempts: two whole connects of 1 + 2 retries


@pytest.fixture(autouse=True)
def _guard_and_forcing():
    require_forcing()
    selfguard.install()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the real server"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def http_server(port: int) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def redis_server(port: int) -> Iterator[None]:
    binary = shutil.which("redis-server")
    require(binary is not None, "needs redis-server (apt-get install redis-server; .ci/run installs it)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def assert_forced_and_guarded(plan) -> None:
    assert FORCED == plan.forced
    counters = selfguard.stats()
    assert FORCED == counters["self_connects"]
    assert counters["gave_up"] >= 1


def test_http_client_sees_refusals_until_the_server_is_back(free_port):
    """http.client: SelfConnectError (a ConnectionRefusedError) while down, a 200 once the server is up."""
    port = free_port()
    with force_self_connects(port, times=FORCED) as plan:
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            with pytest.raises(ConnectionRefusedError):
                conn.request("GET", "/")
            conn.close()
    assert_forced_and_guarded(plan)
    with http_server(port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert b"hello from the real server" == conn.getresponse().read()
        conn.close()


def test_http_client_without_the_guard_reads_its_own_request(free_port):
    """The control: unguarded, http.client takes its own request for the response."""
    selfguard.uninstall()
    port = free_port()
    with force_self_connects(port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        with pytest.raises(http.client.BadStatusLine) as caught:
            conn.getresponse()
        assert "GET / HTTP/1.1" in str(caught.value)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()


def test_requests_sees_connection_errors_until_the_server_is_back(free_port):
    """requests (urllib3 underneath): ConnectionError while down, the page once the server is up."""
    requests = pytest.importorskip("requests")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with force_self_connects(port, times=FORCED) as plan:
        for _ in range(2):
            with pytest.raises(requests.ConnectionError) as caught:
                requests.get(url, timeout=5)
            assert "refused" in str(caught.value).lower()
    assert_forced_and_guarded(plan)
    with http_server(port):
        assert "hello from the real server" == requests.get(url, timeout=5).text


def test_redis_py_sees_connection_errors_until_the_server_is_back(free_port):
    """redis-py: ConnectionError (never a parse of its own PING) while down; PONG from a real redis-server after."""
    redis = pytest.importorskip("redis")
    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, retry=None)
    with force_self_connects(port, times=FORCED) as plan:
        for _ in range(2):
            with pytest.raises(redis.ConnectionError):
                client.ping()
    assert_forced_and_guarded(plan)
    with redis_server(port):
        assert client.ping() is True
        client.set("selfguard", "ok")
        assert b"ok" == client.get("selfguard")
    client.close()


def test_redis_asyncio_sees_connection_errors_until_the_server_is_back(free_port):
    """redis.asyncio: the same story on the event loop."""
    redis_asyncio = pytest.importorskip("redis.asyncio")
    from redis.exceptions import ConnectionError as RedisConnectionError

    port = free_port()

    async def main():
        client = redis_asyncio.Redis(
            host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, retry=None
        )
        with force_self_connects(port, times=FORCED) as plan:
            for _ in range(2):
                with pytest.raises(RedisConnectionError):
                    await client.ping()
        assert_forced_and_guarded(plan)
        with redis_server(port):
            assert await client.ping() is True
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_asyncio_streams_see_self_connect_errors_until_the_server_is_back(free_port):
    """asyncio.open_connection: SelfConnectError while down, a working stream once the server is up."""
    port = free_port()

    async def main():
        with force_self_connects(port, times=FORCED) as plan:
            for _ in range(2):
                with pytest.raises(selfguard.SelfConnectError):
                    await asyncio.open_connection("127.0.0.1", port)
        assert_forced_and_guarded(plan)

        async def echo(reader, writer):
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING")
        assert b"PING" == await reader.readexactly(4)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aiohttp_sees_connector_errors_until_the_server_is_back(free_port):
    """aiohttp: ClientConnectorError while down, the page once the server is up."""
    aiohttp = pytest.importorskip("aiohttp")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    async def main():
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with force_self_connects(port, times=FORCED) as plan:
                for _ in range(2):
                    with pytest.raises(aiohttp.ClientConnectorError):
                        await session.get(url)
            assert_forced_and_guarded(plan)
            with http_server(port):
                async with session.get(url) as response:
                    assert "hello from the real server" == await response.text()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_trio_streams_see_connection_errors_until_the_server_is_back(free_port):
    """trio.open_tcp_stream: connection errors while down (trio gets the truth, not retries), then the server."""
    trio = pytest.importorskip("trio")
    port = free_port()

    async def main():
        with force_self_connects(port, times=2) as plan:
            for _ in range(2):
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", port)
        assert 2 == plan.forced
        with socket.create_server(("127.0.0.1", port)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            conn, _ = srv.accept()
            await stream.send_all(b"PING")
            assert b"PING" == conn.recv(4)
            conn.close()
            await stream.aclose()

    trio.run(main)
    assert {"self_connects": 2, "gave_up": 2} == {k: selfguard.stats()[k] for k in ("self_connects", "gave_up")}
