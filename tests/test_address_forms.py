"""Every address form the stdlib accepts is guarded: tuple subclasses, ports with __index__, IntEnum binds."""

from __future__ import annotations

import collections
import enum
import socket

import pytest

import selfguard

from helpers import close_rst

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")

Address = collections.namedtuple("Address", "host port")


class Port:
    """A port type like numpy.int64: not an int, but has __index__, which the socket module honours."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_a_namedtuple_address_is_guarded(forced, free_port):
    """connect() takes any tuple subclass, so the guard does too."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(Address("127.0.0.1", port))


def test_a_port_with_index_is_guarded(forced, free_port):
    """connect_ex() takes any port with __index__ (numpy.int64), so the guard does too."""
    selfguard.install()
    port = free_port()
    sock = forced(port)
    assert 111 == sock.connect_ex(("127.0.0.1", Port(port)))
    assert not selfguard.is_self_connected(sock)


def test_an_int_enum_port_is_guarded(forced, free_port):
    """The stdlib accepts int subclasses as ports, so the guard does too."""
    port = free_port()
    Ports = enum.IntEnum("Ports", {"BACKEND": port})
    selfguard.install()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", Ports.BACKEND))


@pytest.mark.parametrize(
    "bind_port", [lambda p: enum.IntEnum("Ports", {"MINE": p}).MINE, Port], ids=["IntEnum", "__index__"]
)
def test_a_bind_with_an_unusual_port_type_is_remembered_as_explicit(free_port, bind_port):
    """A deliberate self-connect from a port bound as an IntEnum or __index__ object is the user's: left alone."""
    selfguard.install()
    port = free_port()
    sock = socket.socket()
    try:
        sock.bind(Address("127.0.0.1", bind_port(port)))
        sock.connect(("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
    finally:
        close_rst(sock)
    assert 0 == selfguard.stats()["self_connects"]


def test_a_port_whose_index_raises_gets_the_stdlibs_error(free_port):
    """A port that will not convert is the stdlib's to reject, with its own exception."""

    class Broken:
        def __index__(self) -> int:
            raise ZeroDivisionError("no port here")

    selfguard.install()
    with socket.socket() as sock, pytest.raises(ZeroDivisionError, match="no port here"):
        sock.connect(("127.0.0.1", Broken()))


class Overriding(tuple):
    """A tuple subclass whose Python-level item access lies: the stdlib reads the real items, and so must the guard."""

    def __len__(self) -> int:
        raise RuntimeError("__len__ must not be called")

    def __getitem__(self, index):
        raise KeyError(index)


def test_a_tuple_subclass_is_read_as_the_stdlib_reads_it(forced, free_port):
    """Overridden __len__/__getitem__ don't run: the connect is guarded, as its real items say."""
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(Overriding(("127.0.0.1", port)))


def test_a_bind_with_a_tuple_subclass_is_remembered_without_running_its_methods(free_port):
    """bind() with such a tuple succeeds and is remembered as explicit: a deliberate self-connect is left alone."""
    selfguard.install()
    port = free_port()
    sock = socket.socket()
    try:
        sock.bind(Overriding(("127.0.0.1", port)))
        sock.connect(("127.0.0.1", port))
        assert selfguard.is_self_connected(sock)
    finally:
        close_rst(sock)
