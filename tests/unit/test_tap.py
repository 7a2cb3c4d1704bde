"""The tap backend: ioctl ABI, offloads, and frames through a tap in a private netns.

Each tap test runs in a network namespace made for it (the test thread enters it with
setns, so the tap, the sockets and rtnetlink all live there) and removed afterwards,
which also destroys every interface in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from xenopus.devices import tap as tapmod
from xenopus.devices.tap import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    VNET_HDR_LEN,
    Tap,
    TapError,
    ifreq,
)

HAVE_TUN = os.path.exists(tapmod.TUN_DEVICE)
# The tests run as root (namespaces, taps); only a kernel without the tun driver skips.
needs_tun = pytest.mark.skipif(
    not HAVE_TUN, reason="needs /dev/net/tun (the tun driver) to create taps"
)

CLONE_NEWNET = 0x40000000  # <linux/sched.h>
_libc = ctypes.CDLL(None, use_errno=True)

HOST_IP = "10.77.0.1"
PEER_IP = "10.77.0.2"  # made up: only a static neighbour entry says where it is
PEER_MAC = bytes.fromhex("020000000002")
ETH_P_IP = 0x0800
IPPROTO_UDP = 17

# RFC 791 / RFC 768 / IEEE 802.3 headers, for building and checking frames.
ETH = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UDP = struct.Struct("!HHHH")
VNET_HDR = struct.Struct("<BBHHHHH")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns() -> Iterator[str]:
    """A fresh named network namespace, entered by this thread; left and deleted after."""
    name = f"xtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    # No IPv6 on the new interfaces: their router solicitations and MLD reports would be
    # frames on the tap besides the ones a test sends.
    for conf in ("all", "default"):
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1"],
            check=False,
        )
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(home)
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ns() -> Iterator[str]:
    with netns() as name:
        yield name


@dataclass
class Link:
    """A tap in the test namespace, up, with HOST_IP/24 and PEER_IP as a static neighbour."""

    tap: Tap
    mac: bytes
    index: int


def setup_link(tap: Tap) -> Link:
    from pyroute2 import IPRoute

    tap.set_up()
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=tap.name)[0]
        ipr.addr("add", index=index, address=HOST_IP, prefixlen=24)
        ipr.neigh("add", dst=PEER_IP, lladdr=PEER_MAC.hex(":"), ifindex=index, state=0x80)
        mac = bytes.fromhex(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS").replace(":", ""))
    return Link(tap, mac, index)


@pytest.fixture
def link(ns: str) -> Iterator[Link]:
    tap = Tap.open("xtap0")
    try:
        yield setup_link(tap)
    finally:
        tap.close()


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(
    dst_mac: bytes, src_mac: bytes, src: str, dst: str, sport: int, dport: int, payload: bytes
) -> bytes:
    """An Ethernet/IPv4/UDP frame with correct checksums."""
    sip, dip = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = UDP.size + len(payload)
    pseudo = sip + dip + struct.pack("!BBH", 0, IPPROTO_UDP, ulen)
    ucsum = checksum(pseudo + UDP.pack(sport, dport, ulen, 0) + payload) or 0xFFFF
    ip = IPV4.pack(0x45, 0, IPV4.size + ulen, 1, 0, 64, IPPROTO_UDP, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ETH.pack(dst_mac, src_mac, ETH_P_IP) + ip + UDP.pack(sport, dport, ulen, ucsum) + payload


@dataclass
class Udp:
    dst_mac: bytes
    src: str
    dst: str
    dport: int
    ip_header: bytes
    udp_header: bytes
    payload: bytes


def parse_udp(frame: bytes) -> Udp | None:
    """The UDP datagram in an Ethernet/IPv4 frame, or None for anything else."""
    dst_mac, _, etype = ETH.unpack_from(frame)
    if etype != ETH_P_IP or len(frame) < ETH.size + IPV4.size:
        return None
    ihl = (frame[ETH.size] & 0xF) * 4
    ip = frame[ETH.size : ETH.size + ihl]
    if ip[9] != IPPROTO_UDP:
        return None
    u = frame[ETH.size + ihl : ETH.size + ihl + UDP.size]
    _, dport, ulen, _ = UDP.unpack(u)
    payload = frame[ETH.size + ihl + UDP.size : ETH.size + ihl + ulen]
    return Udp(
        dst_mac, socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), dport, ip, u, payload
    )


def wait_readable(fd: int, timeout: float = 5.0) -> None:
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        raise TimeoutError(f"fd {fd} not readable within {timeout} s")


def read_udp_frame(tap: Tap, dport: int, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """(vnet header, frame) of the next UDP frame to `dport` read from the tap, skipping
    the IPv6 chatter a new interface sends."""
    deadline = time.monotonic() + timeout
    hdr, frame = bytearray(VNET_HDR_LEN), bytearray(65536)
    while True:
        wait_readable(tap.fd, max(0.0, deadline - time.monotonic()))
        n = tap.read_into([memoryview(hdr), memoryview(frame)])
        if n is None:
            continue
        data = bytes(frame[: n - VNET_HDR_LEN])
        udp = parse_udp(data)
        if udp is not None and udp.dport == dport:
            return bytes(hdr), data


def host_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST_IP, port))
    return s


# -- ABI -----------------------------------------------------------------------------


def test_ioctl_numbers_match_if_tun_h() -> None:
    # <linux/if_tun.h> with asm-generic/ioctl.h: _IOW('T', 202, int) = 0x400454ca, etc.
    assert tapmod.TUNSETIFF == 0x400454CA
    assert tapmod.TUNGETFEATURES == 0x800454CF
    assert tapmod.TUNSETOFFLOAD == 0x400454D0
    assert tapmod.TUNGETIFF == 0x800454D2
    assert tapmod.TUNSETVNETHDRSZ == 0x400454D8


def test_flags_and_ifreq_layout() -> None:
    assert (IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE) == (0x2, 0x1000, 0x4000, 0x100)
    assert (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, tapmod.TUN_F_TSO_ECN, tapmod.TUN_F_UFO) == (
        1,
        2,
        4,
        8,
        0x10,
    )
    # struct ifreq on x86-64: 16-byte name + a 24-byte union (struct ifmap), flags at 16.
    assert ctypes.sizeof(ifreq) == 40
    assert ifreq.ifr_flags.offset == 16
    assert VNET_HDR.size == VNET_HDR_LEN == 12


def test_name_too_long() -> None:
    with pytest.raises(TapError, match="longer than 15"):
        Tap.open("x" * 16)


# -- taps in a namespace ---------------------------------------------------------------


@needs_tun
def test_open_sets_tap_vnet_hdr_nonblocking(ns: str) -> None:
    with Tap.open("xtap0") as tap:
        assert tap.name == "xtap0"
        assert tap.vnet_hdr_len == VNET_HDR_LEN
        req = ifreq()
        fcntl.ioctl(tap.fd, tapmod.TUNGETIFF, req)
        assert req.ifr_name == b"xtap0"
        assert (
            req.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        )
        assert os.get_blocking(tap.fd) is False
        assert tap.features() & IFF_VNET_HDR
        assert tap.read_into([memoryview(bytearray(64))]) is None  # nothing yet, no block
    assert tap.fd == -1


@needs_tun
def test_kernel_picks_a_name(ns: str) -> None:
    with Tap.open() as a, Tap.open() as b:
        assert a.name.startswith("tap") and b.name.startswith("tap") and a.name != b.name


@needs_tun
def test_multi_queue_opens_share_one_interface(ns: str) -> None:
    with Tap.open("xmq0", multi_queue=True) as q0, Tap.open("xmq0", multi_queue=True) as q1:
        assert q0.name == q1.name == "xmq0"
        req = ifreq()
        fcntl.ioctl(q1.fd, tapmod.TUNGETIFF, req)
        assert req.ifr_flags & IFF_MULTI_QUEUE


@needs_tun
def test_offload_refused_without_csum(ns: str) -> None:
    with Tap.open("xtap0") as tap:
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        assert tap.offload == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        with pytest.raises(TapError, match="xtap0: TUNSETOFFLOAD"):
            tap.set_offload(TUN_F_TSO4)  # TSO needs the checksum offload
        assert tap.offload == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


@needs_tun
def test_frame_from_host_socket_arrives_complete_without_offload(link: Link) -> None:
    with host_socket() as s:
        s.sendto(b"hello tap", (PEER_IP, 7777))
        hdr, frame = read_udp_frame(link.tap, 7777)
    flags, gso_type, *_ = VNET_HDR.unpack(hdr)
    assert (flags, gso_type) == (0, 0)  # nothing left for the reader to finish
    udp = parse_udp(frame)
    assert udp is not None
    assert udp.dst_mac == PEER_MAC  # resolved by the static neighbour entry
    assert (udp.src, udp.dst, udp.payload) == (HOST_IP, PEER_IP, b"hello tap")
    assert checksum(udp.ip_header) == 0
    pseudo = udp.ip_header[12:20] + struct.pack("!BBH", 0, IPPROTO_UDP, len(udp.udp_header) + 9)
    assert checksum(pseudo + udp.udp_header + udp.payload) == 0


@needs_tun
def test_checksum_offload_leaves_partial_checksum_in_vnet_header(link: Link) -> None:
    link.tap.set_offload(TUN_F_CSUM)
    with host_socket() as s:
        s.sendto(b"partial", (PEER_IP, 7777))
        hdr, frame = read_udp_frame(link.tap, 7777)
    flags, gso_type, _, _, csum_start, csum_offset, _ = VNET_HDR.unpack(hdr)
    # virtio 1.2 §5.1.6.2: NEEDS_CSUM, checksum from csum_start stored at +csum_offset
    assert flags == 1 and gso_type == 0
    assert csum_start == ETH.size + IPV4.size
    assert csum_offset == 6  # the UDP checksum field


@needs_tun
def test_frame_written_to_tap_reaches_host_socket(link: Link) -> None:
    with host_socket(7778) as s:
        frame = udp_frame(link.mac, PEER_MAC, PEER_IP, HOST_IP, 5555, 7778, b"from the wire")
        n = link.tap.write([bytes(VNET_HDR_LEN), frame])
        assert n == VNET_HDR_LEN + len(frame)
        wait_readable(s.fileno())
        data, (src, sport) = s.recvfrom(2048)
    assert (data, src, sport) == (b"from the wire", PEER_IP, 5555)


@needs_tun
def test_bridge_attachment_and_errors(ns: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname="xbr0", kind="bridge")
        bridge = ipr.link_lookup(ifname="xbr0")[0]
    with Tap.open("xtap0") as tap:
        with pytest.raises(TapError, match="bridge xenbr0 does not exist"):
            tap.attach_to_bridge("xenbr0")
        with pytest.raises(TapError, match="lo is not a bridge.*xtap0"):
            tap.attach_to_bridge("lo")
        tap.attach_to_bridge("xbr0")
        with IPRoute() as ipr:
            info = ipr.get_links(ipr.link_lookup(ifname="xtap0")[0])[0]
        assert info.get_attr("IFLA_MASTER") == bridge
        assert info["flags"] & 1  # IFF_UP
    with pytest.raises(TapError, match="tap xtap0 does not exist"):
        tapmod.set_link_up("xtap0")  # gone with its fd


@needs_tun
def test_open_vif_names_sizes_and_addresses_a_vif_as_xl(ns: str) -> None:
    from pyroute2 import IPRoute

    from xenopus.domain.devspec import VifSpec
    from xenopus.domain.vif import open_vif

    # No vifname: Xen's vifDOMID.DEVID; no mac: one in 00:16:3e, the same on every open.
    tap, mac = open_vif("web", VifSpec(mtu=1400), 7, 1)
    with tap:
        assert tap.name == "vif7.1" and mac[:3] == b"\x00\x16\x3e"
        with IPRoute() as ipr:
            info = ipr.get_links(ipr.link_lookup(ifname="vif7.1")[0])[0]
        assert info.get_attr("IFLA_MTU") == 1400 and info["flags"] & 1  # up
    again, mac_again = open_vif("web", VifSpec(), 7, 1)
    again.close()
    assert mac_again == mac
    named, given = open_vif("web", VifSpec(vifname="xvif0", mac="00:16:3e:01:02:03"), 7, 0)
    named.close()
    assert named.name == "xvif0" and given == bytes.fromhex("00163e010203")
    # A step that fails closes the tap again: its name is free for the next open.
    with pytest.raises(TapError, match="bridge nobr0 does not exist"):
        open_vif("web", VifSpec(vifname="xvif1", bridge="nobr0"), 7, 2)
    with pytest.raises(TapError, match="tap xvif1 does not exist"):
        tapmod.set_link_up("xvif1")
