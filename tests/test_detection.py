"""is_self_connected() on real sockets: every address form of a real self-connect, and everything that is not one."""

from __future__ import annotations

import socket

import pytest

import selfguard

from helpers import ADDRESS_FORMS, close_rst

# Each test runs with the C accelerator's wrappers and with the pure-Python ones (conftest.py).
pytestmark = pytest.mark.usefixtures("both_wrappers")


@pytest.mark.parametrize(("family", "host"), ADDRESS_FORMS)
def test_a_real_self_connect_is_detected_in_every_address_form(forced, free_port, family, host):
    """A socket the kernel connected to itself is recognised, whatever the address form."""
    port = free_port()
    sock = forced(port, family)
    sock.connect((host, port))
    assert sock.getsockname()[:2] == sock.getpeername()[:2]
    assert selfguard.is_self_connected(sock) is True


def test_an_ordinary_connection_is_not_self_connected():
    """A client connected to a real server is not self-connected."""
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as client:
        accepted, _ = srv.accept()
        with accepted:
            assert selfguard.is_self_connected(client) is False
            assert selfguard.is_self_connected(accepted) is False


@pytest.mark.parametrize(
    "make",
    [
        lambda: socket.socket(),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        lambda: socket.socketpair()[0],
    ],
    ids=["unconnected-tcp", "udp", "unix-socketpair"],
)
def test_other_sockets_are_not_self_connected(make):
    """Unconnected, UDP and AF_UNIX sockets answer False without raising."""
    sock = make()
    try:
        assert selfguard.is_self_connected(sock) is False
    finally:
        sock.close()


def test_a_closed_socket_is_not_self_connected(forced, free_port):
    """A socket closed after self-connecting answers False instead of raising."""
    port = free_port()
    sock = forced(port)
    sock.connect(("127.0.0.1", port))
    close_rst(sock)
    assert selfguard.is_self_connected(sock) is False


def test_objects_without_socket_methods_are_not_self_connected():
    """Anything that is not a socket answers False."""
    assert selfguard.is_self_connected(object()) is False
