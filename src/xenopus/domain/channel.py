"""The host ends of a domain's PV channels (xl.cfg `channel=`, xen-pv-channel(7)).

Opened by the domain process before its jail (which leaves it no host path to bind and
no way to make a pty), and kept across the guest's incarnations as its taps are: a
Unix socket listening at the channel's path, or a pty whose other end is for the host's
tools. `xen/backends/channel.py` carries the bytes between them and the guest's ring.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass

from xenopus.domain.devspec import ChannelSpec


class ChannelError(ValueError):
    """A channel's host end cannot be made; the message names the channel."""


@dataclass
class ChannelEnd:
    """Channel `devid`'s host end: `listener` (connection = socket), or a pty's
    `master` with its `tty` path (connection = pty; its slave kept open so that the
    master does not read EIO while no host tool has it)."""

    devid: int
    spec: ChannelSpec
    listener: socket.socket | None = None
    master: int | None = None
    slave: int | None = None
    tty: str = ""

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None


def open_channel(devid: int, spec: ChannelSpec) -> ChannelEnd:
    """Channel `devid`'s host end. A socket left at its path by an earlier domain is
    replaced; anything else there is refused."""
    end = ChannelEnd(devid, spec)
    where = f"channel {devid} ({spec.name})"
    try:
        if spec.connection == "socket":
            assert spec.path is not None
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(os.lstat(spec.path).st_mode):
                    raise ChannelError(f"{where}: {spec.path} exists and is not a socket")
                os.unlink(spec.path)
            end.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            end.listener.bind(spec.path)
            os.chmod(spec.path, 0o600)  # the host's tools (root) reach it; no one else
            end.listener.listen(1)
        else:
            end.master, end.slave = os.openpty()
            os.set_inheritable(end.master, False)
            os.set_inheritable(end.slave, False)
            import tty  # only for a pty channel

            tty.setraw(end.slave)  # bytes pass unchanged, as xenconsoled's ptys (cfmakeraw)
            os.set_blocking(end.master, False)
            end.tty = os.ttyname(end.slave)
    except OSError as e:
        end.close()
        raise ChannelError(f"{where}: {e.strerror or e}") from None
    except BaseException:
        end.close()
        raise
    return end


def open_channels(specs: list[ChannelSpec]) -> list[ChannelEnd]:
    """Every channel's host end, devid 1 onwards (console 0 is the domain's own, as
    libxl numbers them); all or none."""
    ends: list[ChannelEnd] = []
    try:
        for i, spec in enumerate(specs):
            ends.append(open_channel(i + 1, spec))
    except BaseException:
        close_channels(ends)
        raise
    return ends


def close_channels(ends: list[ChannelEnd]) -> None:
    for end in ends:
        end.close()


SocketId = tuple[int, int]  # st_dev, st_ino


def socket_ids(specs: list[ChannelSpec]) -> dict[str, SocketId]:
    """Which socket is at each socket channel's path now: the daemon notes them once the
    domain's process has bound them, so that its cleanup removes that socket only."""
    ids = {}
    for spec in specs:
        if spec.connection == "socket" and spec.path:
            with contextlib.suppress(OSError):
                st = os.lstat(spec.path)
                if stat.S_ISSOCK(st.st_mode):
                    ids[spec.path] = (st.st_dev, st.st_ino)
    return ids


def remove_sockets(specs: list[ChannelSpec], ids: dict[str, SocketId] | None = None) -> None:
    """The sockets the channels left behind (the daemon's cleanup, when the domain is
    gone: its jailed process cannot reach the host's paths). With `ids` (`socket_ids`),
    a path holding another socket is left alone: a domain migrated to this same host has
    replaced it with its own before this one went."""
    for spec in specs:
        if spec.connection == "socket" and spec.path:
            with contextlib.suppress(OSError):
                st = os.lstat(spec.path)
                mine = ids is None or spec.path not in ids or ids[spec.path] == (st.st_dev, st.st_ino)
                if stat.S_ISSOCK(st.st_mode) and mine:
                    os.unlink(spec.path)
