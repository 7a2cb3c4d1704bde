"""A Linux tap interface as a network backend (Documentation/networking/tuntap.rst).

The tap is opened with IFF_VNET_HDR and a 12-byte vnet header, the size of virtio 1.x's
`struct virtio_net_hdr` (§5.1.6, with num_buffers), so every frame crosses the fd with
the very header the guest reads or writes: no translation, no copy. The fd is
non-blocking; the device's worker waits on it with select/poll.

Bridge attachment and link state go through rtnetlink (pyroute2's IPRoute).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import functools
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from xenopus.kvm.ioctl import _IOR, _IOW, CData

T = TypeVar("T")

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16  # <linux/if.h>

# <linux/if_tun.h>: the ioctl type is 'T'.
_TUN = ord("T")
TUNSETIFF = _IOW(_TUN, 202, ctypes.c_int)
TUNGETFEATURES = _IOR(_TUN, 207, ctypes.c_uint)
TUNSETOFFLOAD = _IOW(_TUN, 208, ctypes.c_uint)
TUNGETIFF = _IOR(_TUN, 210, ctypes.c_uint)
TUNSETVNETHDRSZ = _IOW(_TUN, 216, ctypes.c_int)

# TUNSETIFF flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# TUNSETOFFLOAD flags: what the kernel may hand us (and so the guest) unfinished —
# partial checksums and unsegmented GSO frames.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# struct virtio_net_hdr_v1 with num_buffers (virtio 1.2 §5.1.6).
VNET_HDR_LEN = 12


class ifreq(ctypes.Structure):  # noqa: N801 - the kernel's name
    """struct ifreq (<linux/if.h>): the name and the union, of which tun uses ifr_flags.

    The union's largest member is struct ifmap (24 bytes on x86-64), so the struct is 40."""

    _fields_ = [
        ("ifr_name", ctypes.c_char * IFNAMSIZ),
        ("ifr_flags", ctypes.c_short),
        ("_union_rest", ctypes.c_ubyte * 22),
    ]


class TapError(Exception):
    """A tap or bridge operation failed; the message names the interface."""


class Tap:
    """One queue of a tap interface: a non-blocking fd carrying vnet-header frames."""

    def __init__(self, fd: int, name: str, vnet_hdr_len: int):
        self.fd = fd
        self.name = name
        self.vnet_hdr_len = vnet_hdr_len
        self.offload = 0

    @classmethod
    def open(
        cls, name: str | None = None, *, vnet_hdr: bool = True, multi_queue: bool = False
    ) -> Tap:
        """Create (or, for a persistent or multi-queue tap, attach to) tap `name`.

        With no name the kernel picks one (tap0, tap1, ...). With `multi_queue` each
        further open of the same name adds a queue."""
        wanted = name or "tap%d"
        raw = wanted.encode()
        if len(raw) >= IFNAMSIZ:
            raise TapError(f"tap name {wanted!r} is longer than {IFNAMSIZ - 1} bytes")
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(f"tap {wanted}: cannot open {TUN_DEVICE}: {e.strerror}") from e
        try:
            req = ifreq(ifr_name=raw, ifr_flags=IFF_TAP | IFF_NO_PI)
            if vnet_hdr:
                req.ifr_flags |= IFF_VNET_HDR
            if multi_queue:
                req.ifr_flags |= IFF_MULTI_QUEUE
            _ioctl(fd, TUNSETIFF, req, wanted, "TUNSETIFF")
            actual = req.ifr_name.decode()
            hdr_len = 0
            if vnet_hdr:
                _ioctl(fd, TUNSETVNETHDRSZ, ctypes.c_int(VNET_HDR_LEN), actual, "TUNSETVNETHDRSZ")
                hdr_len = VNET_HDR_LEN
        except BaseException:
            os.close(fd)
            raise
        tap = cls(fd, actual, hdr_len)
        if vnet_hdr:
            tap.set_offload(0)  # nothing unfinished until the guest says it copes
        return tap

    def fileno(self) -> int:
        return self.fd

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: the TUN_F_* offloads the reader (the guest) accepts.

        TSO/UFO/USO need TUN_F_CSUM; the kernel refuses them alone."""
        if not self.vnet_hdr_len and flags:
            raise TapError(f"tap {self.name}: offloads need a vnet header")
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)  # the argument is the value itself
        except OSError as e:
            raise TapError(f"tap {self.name}: TUNSETOFFLOAD {flags:#x}: {e.strerror}") from e
        self.offload = flags

    def features(self) -> int:
        """TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports."""
        out = ctypes.c_uint()
        _ioctl(self.fd, TUNGETFEATURES, out, self.name, "TUNGETFEATURES")
        return out.value

    def read_into(self, views: Sequence[memoryview]) -> int | None:
        """readv one frame (vnet header first) into `views`; None when none is waiting.

        A frame longer than the views is truncated by the kernel: the return is then
        the total length of the views."""
        try:
            return os.readv(self.fd, views)
        except BlockingIOError:
            return None

    def write(self, views: Sequence[memoryview | bytes]) -> int:
        """writev one frame (vnet header first). Raises BlockingIOError when the tap's
        queue is full, OSError (EINVAL) for a frame the kernel rejects."""
        return os.writev(self.fd, views)

    def set_up(self) -> None:
        set_link_up(self.name)

    def set_mtu(self, mtu: int) -> None:
        set_link_mtu(self.name, mtu)

    def attach_to_bridge(self, bridge: str) -> None:
        attach_to_bridge(self.name, bridge)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ioctl(
    fd: int, request: int, arg: CData, name: str, what: str
) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as e:
        hint = " (needs CAP_NET_ADMIN)" if e.errno == errno.EPERM else ""
        raise TapError(f"tap {name}: {what}: {e.strerror}{hint}") from e


def _link_index(ipr: object, name: str, what: str) -> int:
    found = ipr.link_lookup(ifname=name)  # type: ignore[attr-defined]
    if not found:
        raise TapError(f"{what} {name} does not exist")
    return found[0]


def _off_the_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """pyroute2's IPRoute runs an asyncio loop of its own, which it cannot do on a thread
    where one is already running (the domain process's main thread): such calls go to a
    short-lived thread instead."""

    @functools.wraps(fn)
    def call(*args: object) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(fn, *args).result()

    return call


@_off_the_loop
def set_link_up(name: str) -> None:
    """Bring interface `name` administratively up (RTM_NEWLINK with IFF_UP)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        index = _link_index(ipr, name, "tap")
        try:
            ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            raise TapError(f"tap {name}: cannot set link up: {e}") from e


@_off_the_loop
def set_link_mtu(name: str, mtu: int) -> None:
    """Set interface `name`'s MTU (RTM_NEWLINK with IFLA_MTU), as a vif's `mtu=` asks."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        index = _link_index(ipr, name, "tap")
        try:
            ipr.link("set", index=index, mtu=mtu)
        except NetlinkError as e:
            raise TapError(f"tap {name}: cannot set MTU {mtu}: {e}") from e


@_off_the_loop
def attach_to_bridge(name: str, bridge: str) -> None:
    """Enslave interface `name` to Linux bridge `bridge` (IFLA_MASTER) and bring it up."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        index = _link_index(ipr, name, "tap")
        master = _link_index(ipr, bridge, "bridge")
        links = ipr.get_links(master)
        kind = links[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") if links else None
        if kind != "bridge":
            raise TapError(
                f"{bridge} is not a bridge (it is {kind or 'a plain interface'}), cannot attach tap {name}"
            )
        try:
            ipr.link("set", index=index, master=master, state="up")
        except NetlinkError as e:
            raise TapError(f"cannot attach tap {name} to bridge {bridge}: {e}") from e
