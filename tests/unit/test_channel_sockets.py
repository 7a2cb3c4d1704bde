"""The daemon's cleanup of a gone domain's channel sockets (domain/channel.py): it removes
the socket the domain bound, and leaves one another domain bound at the same path since
(a migration to this same host: the receiver replaced it before the source went)."""

from __future__ import annotations

import socket
from pathlib import Path

from xenopus.domain.channel import open_channel, remove_sockets, socket_ids
from xenopus.domain.devspec import ChannelSpec


def test_the_sockets_a_domain_bound_are_removed(tmp_path: Path) -> None:
    spec = ChannelSpec("org.test.a", "socket", str(tmp_path / "a.sock"))
    end = open_channel(1, spec)
    ids = socket_ids([spec])
    assert set(ids) == {spec.path}
    end.close()
    remove_sockets([spec], ids)
    assert not Path(spec.path).exists()


def test_a_socket_another_domain_bound_since_is_left(tmp_path: Path) -> None:
    spec = ChannelSpec("org.test.b", "socket", str(tmp_path / "b.sock"))
    source = open_channel(1, spec)
    ids = socket_ids([spec])
    receiver = open_channel(1, spec)  # replaces the source's socket at the path
    try:
        source.close()
        remove_sockets([spec], ids)  # the source is gone: its cleanup
        assert Path(spec.path).exists()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(spec.path)  # the receiver's still listens there
    finally:
        receiver.close()
    remove_sockets([spec], socket_ids([spec]))
    assert not Path(spec.path).exists()


def test_without_ids_the_socket_at_the_path_is_removed(tmp_path: Path) -> None:
    """A domain a restarted daemon adopted has no ids noted: its path is cleaned as before."""
    spec = ChannelSpec("org.test.c", "socket", str(tmp_path / "c.sock"))
    open_channel(1, spec).close()
    remove_sockets([spec])
    assert not Path(spec.path).exists()
