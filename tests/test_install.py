"""install()/uninstall(): exact restoration, idempotence, coexistence with other patches, thread safety."""

from __future__ import annotations

import _socket
import copy
import pickle
import socket
import threading

import pytest
import wrapt

import selfguard

from helpers import outcome

PATCHED = ("connect", "connect_ex", "getsockopt", "bind")


def test_install_patches_and_uninstall_restores_the_originals_exactly():
    """After uninstall() socket.socket has no attribute of ours: the inherited C methods show through."""
    selfguard.install()
    assert all(isinstance(vars(socket.socket)[name], wrapt.FunctionWrapper) for name in PATCHED)
    selfguard.uninstall()
    assert not any(name in vars(socket.socket) for name in PATCHED)
    assert socket.socket.connect is _socket.socket.connect
    assert socket.socket.connect_ex is _socket.socket.connect_ex


def test_install_twice_patches_once_and_applies_the_new_options(forced, free_port):
    """A second install() keeps the same wrappers and only changes the options."""
    selfguard.install()
    first = vars(socket.socket)["connect"]
    selfguard.install(mode="relent")
    assert first is vars(socket.socket)["connect"]
    port = free_port()
    sock = forced(port)
    sock.connect(("127.0.0.1", port))  # relent: no exception
    assert 3 == selfguard.stats()["self_connects"]


def test_uninstall_twice_and_without_install_is_harmless():
    """uninstall() when nothing is installed does nothing."""
    selfguard.uninstall()
    selfguard.uninstall()
    assert not selfguard.is_installed()


def test_is_installed_follows_install_and_uninstall():
    """is_installed() follows install() and uninstall()."""
    assert not selfguard.is_installed()
    assert selfguard.install() is True
    assert selfguard.is_installed()
    selfguard.uninstall()
    assert not selfguard.is_installed()


def test_a_patch_applied_on_top_survives_uninstall(forced, free_port):
    """uninstall() leaves another library's wrapper in place and ours goes quiet beneath it."""
    calls = []

    def theirs(wrapped, instance, args, kwargs):
        calls.append(args)
        return wrapped(*args, **kwargs)

    selfguard.install()
    wrapt.wrap_function_wrapper(socket.socket, "connect", theirs)
    try:
        their_wrapper = vars(socket.socket)["connect"]
        selfguard.uninstall()
        assert their_wrapper is vars(socket.socket)["connect"]
        assert not selfguard.is_installed()
        port = free_port()
        sock = forced(port)
        sock.connect(("127.0.0.1", port))  # unguarded now: the self-connect goes through
        assert selfguard.is_self_connected(sock)
        assert calls and 0 == selfguard.stats()["self_connects"]

        # Installing again reuses our wrapper beneath theirs instead of stacking a second one.
        selfguard.install()
        assert their_wrapper is vars(socket.socket)["connect"]
        port = free_port()
        with pytest.raises(selfguard.SelfConnectError):
            forced(port).connect(("127.0.0.1", port))
        assert 3 == selfguard.stats()["self_connects"]
    finally:
        selfguard.uninstall()
        del socket.socket.connect  # theirs, and ours inside it


def test_install_patches_again_after_someone_removed_the_chain_ours_was_in(forced, free_port):
    """If another library removes its wrapper together with ours, the next install() guards again."""
    selfguard.install()
    wrapt.wrap_function_wrapper(
        socket.socket, "connect", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
    )
    selfguard.uninstall()
    del socket.socket.connect  # theirs, and ours inside it
    selfguard.install()
    port = free_port()
    with pytest.raises(selfguard.SelfConnectError):
        forced(port).connect(("127.0.0.1", port))


def test_a_patch_applied_before_install_is_restored_not_deleted():
    """If socket.socket already had its own connect, uninstall() puts that one back."""

    def theirs(self, address):
        return _socket.socket.connect(self, address)

    socket.socket.connect = theirs
    try:
        selfguard.install()
        selfguard.uninstall()
        assert theirs is vars(socket.socket)["connect"]
    finally:
        del socket.socket.connect


def test_install_and_uninstall_from_many_threads_leave_a_consistent_state():
    """Concurrent install()/uninstall() calls never leave a half-patched class."""
    barrier = threading.Barrier(8)

    def toggle():
        barrier.wait()
        for _ in range(200):
            selfguard.install()
            selfguard.uninstall()

    threads = [threading.Thread(target=toggle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not any(name in vars(socket.socket) for name in PATCHED)
    selfguard.install()
    assert all(name in vars(socket.socket) for name in PATCHED)


ALL_WRAPPED = ("connect", "connect_ex", "getsockopt", "bind", "sendto", "sendmsg")


def pickling(sock: socket.socket) -> list[object]:
    """What pickling each wrapped method gives, through the class and bound to *sock*."""
    seen: list[object] = []
    for name in ALL_WRAPPED:
        seen.append(outcome(lambda: pickle.dumps(getattr(socket.socket, name))))
        seen.append(outcome(lambda: pickle.dumps(getattr(sock, name))))
    return seen


def test_the_wrapped_methods_pickle_as_the_stdlib_methods_do():
    """pickle.dumps(socket.socket.connect) gives the stdlib's bytes; a bound method raises the stdlib's TypeError."""
    with socket.socket() as sock:
        bare = pickling(sock)
        selfguard.install()
        guarded = pickling(sock)
    assert bare == guarded
    assert (TypeError, None, "cannot pickle 'socket' object") == bare[1]


def test_the_wrapped_methods_copy_as_the_stdlib_methods_do():
    """copy.copy() and copy.deepcopy() give the method itself back, bound or not, as for the stdlib's (atomic)."""
    with socket.socket() as sock:
        selfguard.install()
        for name in ALL_WRAPPED:
            for method in (vars(socket.socket)[name], getattr(socket.socket, name), getattr(sock, name)):
                assert copy.copy(method) is method
                assert copy.deepcopy({"method": method})["method"] is method


def test_a_wrapper_of_ours_put_back_is_reused_and_undone_exactly():
    """Saved, replaced, re-guarded, then put back (as monkeypatch undoes): one layer, and uninstall() leaves it bare."""
    selfguard.install()
    ours = vars(socket.socket)["connect"]
    socket.socket.connect = _socket.socket.connect  # someone's replacement (a saved bare method)
    selfguard.install()  # guards their replacement
    socket.socket.connect = ours  # their undo puts back what they saved
    selfguard.install()
    seen = (selfguard.status(), vars(socket.socket)["connect"] is ours, ours.__wrapped__ is _socket.socket.connect)
    selfguard.uninstall()
    assert ("active", True, True) == seen
    assert not any(name in vars(socket.socket) for name in ALL_WRAPPED)
