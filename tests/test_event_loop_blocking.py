"""No path of the guard blocks an event loop's thread: checked with the real blockbuster, around real connects."""

from __future__ import annotations

import asyncio
import socket

import pytest

import selfguard
from selfguard import testing
from selfguard._kernel import read_ephemeral_range

blockbuster = pytest.importorskip("blockbuster", reason="blockbuster is in the test extra")


@pytest.fixture(autouse=True)
def _undo_blockbusters_restore():
    """Put the patched classes back as they were before the test.

    blockbuster restores each method it wrapped with what getattr() gave it:
    a method the class inherited comes back set on the class itself (and the
    guard's wrapper comes back bound), which later tests would inherit.
    """
    import asyncio.selector_events

    classes = [socket.socket, asyncio.selector_events.BaseSelectorEventLoop]
    try:
        import uvloop

        classes.append(uvloop.Loop)
    except ImportError:
        pass
    before = {cls: dict(vars(cls)) for cls in classes}
    yield
    for cls, attributes in before.items():
        for name in set(vars(cls)) - set(attributes):
            delattr(cls, name)
        for name, value in attributes.items():
            if vars(cls).get(name) is not value:
                setattr(cls, name, value)


def _loop_factories() -> list[object]:
    factories: list[object] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, uvloop.new_event_loop]


@pytest.fixture(params=_loop_factories(), ids=lambda factory: factory.__module__.split(".")[0])
def run(request):
    """Run a coroutine on a fresh asyncio or uvloop loop, with blockbuster watching."""

    def run_it(coro):
        loop = request.param()
        try:
            with blockbuster.blockbuster_ctx():
                return loop.run_until_complete(coro)
        finally:
            loop.close()

    return run_it


def _server_below_the_range() -> socket.socket:
    return socket.create_server(("127.0.0.1", testing.free_port(1024, read_ephemeral_range()[0] - 1)))


def test_the_first_connect_reads_the_range_without_blocking_the_loop(run):
    """With nothing cached (the process's first connect), open_connection outside and inside the range passes."""
    selfguard.install()
    with _server_below_the_range() as outside, socket.create_server(("127.0.0.1", 0)) as inside:

        async def dial_both() -> None:
            for server in (outside, inside):
                _reader, writer = await asyncio.open_connection(*server.getsockname())
                writer.close()
                await writer.wait_closed()

        run(dial_both())
    assert 1 == selfguard.stats()["checked"]


def test_a_range_due_for_a_read_is_read_on_the_loop_thread_without_blocking(run):
    """A port outside a range read over a second ago: the range is read again on the loop's thread, unblocked.

    blockbuster does not look inside a non-blocking socket's connect(), so the
    read is also made by a direct call, as the asyncio wrapper's check after
    the connect makes it.
    """
    selfguard.install()
    with _server_below_the_range() as outside:
        port = outside.getsockname()[1]

        async def dial() -> bool:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            selfguard._state.state.range_read_at = float("-inf")  # due, as a second later
            with socket.socket() as sock:
                return selfguard._state.in_range(port, sock)

        assert run(dial()) is False
    assert 0 == selfguard.stats()["faults"]


def test_a_self_connect_is_caught_without_blocking_the_loop(forced, free_port):
    """asyncio's sock_connect meets a self-connect at every attempt: reset in place, refused, the loop never blocked."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    sock.setblocking(False)

    async def dial() -> None:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))

    loop = asyncio.new_event_loop()
    try:
        with blockbuster.blockbuster_ctx(), pytest.raises(selfguard.SelfConnectError):
            loop.run_until_complete(dial())
    finally:
        loop.close()
    assert 3 == selfguard.stats()["self_connects"]
