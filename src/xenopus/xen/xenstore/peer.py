"""Who is at the other end of a Unix socket: the kernel's SO_PEERCRED, read apart from
the server (server.py) so that a domain process checks its daemon without importing
the store."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple


class Peer(NamedTuple):
    """A Unix-socket client, as the kernel saw it connect (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))
