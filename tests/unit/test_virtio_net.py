"""virtio-net (virtio 1.2 §5.1): header and config layouts, MACs, and the device driven
through hand-built split virtqueues in guest memory against a real tap.

The guest here is the test itself acting as driver: it lays out descriptor tables and
rings per §2.7, posts buffers, kicks through eventfds and waits for the device's queue
interrupts. The tap lives in a namespace made by the test, where PEER_IP/PEER_MAC (the
"guest") is reachable through a static neighbour entry.
"""

from __future__ import annotations

import os
import queue
import re
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.unit.test_tap import (  # noqa: F401 - fixtures
    HOST_IP,
    PEER_IP,
    PEER_MAC,
    Link,
    checksum,
    host_socket,
    link,
    needs_tun,
    ns,
    parse_udp,
    udp_frame,
    wait_readable,
)
from xenopus.devices.mac import XEN_OUI, MacError, format_mac, generate_mac, parse_mac
from xenopus.devices.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap
from xenopus.devices.virtio.device import VIRTIO_F_VERSION_1
from xenopus.devices.virtio.net import (
    NET_HDR,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    VirtioNet,
)
from xenopus.devices.virtio.queue import SplitQueue
from xenopus.memory.guest import GuestMemory

# §2.7.5 struct virtq_desc, §2.7.6 avail ring, §2.7.8 used ring (le fields).
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
F_NEXT, F_WRITE = 1, 2


# -- layouts (numbers from the spec, not from the module) ------------------------------


def test_net_hdr_is_the_12_byte_layout_of_5_1_6() -> None:
    # flags u8 @0, gso_type u8 @1, hdr_len @2, gso_size @4, csum_start @6, csum_offset @8,
    # num_buffers @10, all le16.
    raw = NET_HDR.pack(0x01, 0x04, 0x0201, 0x0403, 0x0605, 0x0807, 0x0A09)
    assert len(raw) == 12
    assert raw == bytes([1, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def test_feature_bits_of_5_1_3() -> None:
    from xenopus.devices.virtio import net

    expect = {
        "CSUM": 0,
        "GUEST_CSUM": 1,
        "MAC": 5,
        "GUEST_TSO4": 7,
        "GUEST_TSO6": 8,
        "GUEST_ECN": 9,
        "GUEST_UFO": 10,
        "HOST_TSO4": 11,
        "HOST_TSO6": 12,
        "HOST_ECN": 13,
        "HOST_UFO": 14,
        "MRG_RXBUF": 15,
        "STATUS": 16,
    }
    for name, number in expect.items():
        assert getattr(net, f"VIRTIO_NET_F_{name}") == number, name
    assert (net.VIRTIO_NET_HDR_F_NEEDS_CSUM, net.VIRTIO_NET_HDR_F_DATA_VALID) == (1, 2)
    assert (
        net.VIRTIO_NET_HDR_GSO_TCPV4,
        net.VIRTIO_NET_HDR_GSO_UDP,
        net.VIRTIO_NET_HDR_GSO_TCPV6,
        net.VIRTIO_NET_HDR_GSO_ECN,
    ) == (1, 3, 4, 0x80)


# -- MAC addresses --------------------------------------------------------------------


def test_parse_mac() -> None:
    assert parse_mac("00:16:3e:0a:Bc:ff") == bytes([0, 0x16, 0x3E, 0x0A, 0xBC, 0xFF])
    assert format_mac(parse_mac("00:16:3e:0a:bc:ff")) == "00:16:3e:0a:bc:ff"


@pytest.mark.parametrize(
    "text, why",
    [
        ("00:16:3e:0a:bc", "six"),
        ("00:16:3e:0a:bc:ff:01", "six"),
        ("00:16:3e:0a:bc:1ff", "six"),
        ("00-16-3e-0a-bc-ff", "six"),
        ("00:16:3e:0a:bc:gg", "six"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "zero"),
    ],
)
def test_parse_mac_refuses(text: str, why: str) -> None:
    with pytest.raises(MacError, match=why):
        parse_mac(text)


def test_generate_mac_in_xen_oui() -> None:
    a = generate_mac("dom1/vif0")
    assert a[:3] == bytes([0x00, 0x16, 0x3E])
    assert a == generate_mac("dom1/vif0")  # deterministic per seed
    assert a != generate_mac("dom1/vif1")
    macs = {generate_mac() for _ in range(8)} | {generate_mac(f"d/{i}") for i in range(64)}
    for m in macs:
        assert m[:3] == XEN_OUI and not m[3] & 0x80 and not m[0] & 1
        assert parse_mac(format_mac(m)) == m
    assert len({generate_mac() for _ in range(8)}) > 1  # random without a seed


# -- a driver made of guest memory -----------------------------------------------------


class DriverQueue:
    """The driver's half of a split virtqueue (§2.7) laid out in guest memory."""

    def __init__(self, mem: GuestMemory, base: int, size: int, name: str):
        self.mem, self.size = mem, size
        self.desc = base
        self.avail = base + DESC.size * size
        self.used = (self.avail + 4 + 2 * size + 2 + 3) & ~3
        mem.fill(base, 0x3000)
        self.next = 0
        self.avail_idx = 0
        self.seen = 0
        self.q = SplitQueue(mem, size, name)
        self.q.desc_addr, self.q.avail_addr, self.q.used_addr = self.desc, self.avail, self.used
        self.q.enable()

    def post(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Make one chain of (gpa, length, device-writable) available; returns its head."""
        idx = [(self.next + i) % self.size for i in range(len(bufs))]
        self.next = (self.next + len(bufs)) % self.size
        for i, (gpa, length, writable) in enumerate(bufs):
            flags = (F_WRITE if writable else 0) | (F_NEXT if i + 1 < len(bufs) else 0)
            nxt = idx[i + 1] if i + 1 < len(bufs) else 0
            self.mem.write(self.desc + DESC.size * idx[i], DESC.pack(gpa, length, flags, nxt))
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), idx[0])
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)
        return idx[0]

    def take_used(self) -> list[tuple[int, int]]:
        """New (id, len) used elements since the last call."""
        out = []
        end = self.mem.read_u16(self.used + 2)
        while self.seen != end:
            slot = self.used + 4 + USED_ELEM.size * (self.seen % self.size)
            out.append(USED_ELEM.unpack(self.mem.read(slot, USED_ELEM.size)))
            self.seen = (self.seen + 1) & 0xFFFF
        return out


class Sink:
    """InterruptSink: queue interrupts into a Queue the test waits on."""

    def __init__(self) -> None:
        self.events: queue.Queue[int | str] = queue.Queue()

    def signal_queue(self, queue_index: int) -> None:
        self.events.put(queue_index)

    def signal_config(self) -> None:
        self.events.put("config")

    def wait(self, what: int | str, timeout: float = 5.0) -> None:
        while True:
            try:
                got = self.events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no interrupt {what!r} within {timeout} s") from None
            if got == what:
                return


BASE = 1 << VIRTIO_F_VERSION_1
RXQ_AT, TXQ_AT, BUF_AT = 0x10000, 0x20000, 0x100000
QSIZE = 64


@dataclass
class Rig:
    dev: VirtioNet
    mem: GuestMemory
    rx: DriverQueue
    tx: DriverQueue
    sink: Sink
    kicks: list[int]
    link: Link
    free: int = BUF_AT

    def buffer(self, size: int) -> int:
        gpa, self.free = self.free, self.free + ((size + 63) & ~63)
        return gpa

    def activate(self, features: int) -> None:
        assert self.dev.negotiate(features | BASE)
        self.dev.activate([self.rx.q, self.tx.q], self.kicks)

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kicks[index], 1)

    def send_frame(self, frame: bytes, header: bytes = bytes(12)) -> int:
        hdr, body = self.buffer(len(header)), self.buffer(len(frame))
        self.mem.write(hdr, header)
        self.mem.write(body, frame)
        return self.tx.post([(hdr, len(header), False), (body, len(frame), False)])


@pytest.fixture
def rig(link: Link) -> Iterator[Rig]:  # noqa: F811 - the imported fixture
    mem = GuestMemory.create(4 << 20)
    kicks = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
    dev = VirtioNet(link.tap, PEER_MAC)
    sink = Sink()
    dev.bind(sink)
    r = Rig(
        dev,
        mem,
        DriverQueue(mem, RXQ_AT, QSIZE, "rx"),
        DriverQueue(mem, TXQ_AT, QSIZE, "tx"),
        sink,
        kicks,
        link,
    )
    try:
        yield r
    finally:
        dev.close()
        for fd in kicks:
            os.close(fd)


def host_datagram(payload: bytes, port: int = 7777) -> None:
    with host_socket() as s:
        s.sendto(payload, (PEER_IP, port))


def gather_frame(
    rig: Rig, used: list[tuple[int, int]], heads: dict[int, list[tuple[int, int]]]
) -> bytes:
    """The bytes the device wrote, in used-ring order, across each chain's buffers."""
    out = bytearray()
    for head, length in used:
        for gpa, size in heads[head]:
            take = min(size, length)
            out += rig.mem.read(gpa, take)
            length -= take
    return bytes(out)


def epoll_events(epfd: int, fd: int) -> int:
    """The event mask `fd` is registered with in epoll `epfd` (/proc fdinfo, fs/eventpoll.c)."""
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        for line in f:
            m = re.match(r"tfd:\s+(\d+)\s+events:\s+([0-9a-f]+)", line)
            if m and int(m.group(1)) == fd:
                return int(m.group(2), 16)
    raise LookupError(f"fd {fd} is not in epoll {epfd}")


# -- device ---------------------------------------------------------------------------


@needs_tun
def test_config_space_and_features(rig: Rig) -> None:
    dev = rig.dev
    # §5.1.4: mac[6] at 0, le16 status at 6 (VIRTIO_NET_S_LINK_UP = 1)
    assert bytes(dev.config_read(i, 1) for i in range(6)) == PEER_MAC
    assert dev.config_read(6, 2) == 1
    for f in (
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ):
        assert dev.features & 1 << f
    gen = dev.config_generation
    dev.set_link(False)
    assert dev.config_read(6, 2) == 0 and dev.config_generation != gen
    rig.sink.wait("config")


@needs_tun
def test_rx_spreads_a_frame_over_merged_buffers(rig: Rig) -> None:
    rig.activate(1 << VIRTIO_NET_F_MRG_RXBUF)
    heads = {}
    for _ in range(24):  # 24 x 128 bytes: enough for an MTU frame
        gpa = rig.buffer(128)
        heads[rig.rx.post([(gpa, 128, True)])] = [(gpa, 128)]
    rig.kick(0)
    payload = bytes(range(256)) + b"merged"  # 262 + 42 bytes of headers + 12 = 316
    host_datagram(payload)
    rig.sink.wait(0)
    used = rig.rx.take_used()
    assert [n for _, n in used] == [128, 128, 60]
    assert [h for h, _ in used] == list(heads)[:3]  # in the order they were posted
    data = gather_frame(rig, used, heads)
    flags, gso, _, _, _, _, num_buffers = NET_HDR.unpack_from(data)
    assert (flags, gso, num_buffers) == (0, 0, 3)
    udp = parse_udp(data[12:])
    assert udp is not None and udp.payload == payload and udp.dst_mac == PEER_MAC
    assert rig.dev.stats.rx_frames == 1


@needs_tun
def test_rx_without_mrg_rxbuf_uses_one_chain_with_a_split_header(rig: Rig) -> None:
    rig.activate(0)
    hdr, body = rig.buffer(12), rig.buffer(1514)
    rig.mem.fill(hdr, 12, 0xAA)
    head = rig.rx.post([(hdr, 12, True), (body, 1514, True)])
    rig.kick(0)
    host_datagram(b"single")
    rig.sink.wait(0)
    [(got, n)] = rig.rx.take_used()
    assert got == head and n == 12 + 14 + 20 + 8 + 6
    flags, _, _, _, _, _, num_buffers = NET_HDR.unpack(rig.mem.read(hdr, 12))
    assert flags == 0 and num_buffers == 1  # §5.1.6.4: 1 without MRG_RXBUF
    udp = parse_udp(rig.mem.read(body, n - 12))
    assert udp is not None and udp.payload == b"single"


@needs_tun
def test_rx_waits_for_buffers_without_polling_the_tap(rig: Rig) -> None:
    # A transmit queued before DRIVER_OK: the worker's first round runs receiveq (which
    # finds no buffers) and then transmitq, so its interrupt orders us after both.
    # (to a bound port: a closed one would answer with an ICMP error towards the guest)
    listener = host_socket(7782)
    rig.send_frame(udp_frame(rig.link.mac, PEER_MAC, PEER_IP, HOST_IP, 1, 7782, b"x"))
    rig.activate(1 << VIRTIO_NET_F_MRG_RXBUF)
    rig.sink.wait(1)
    wait_readable(listener.fileno())
    listener.close()
    worker = rig.dev._worker
    assert worker is not None
    # not polled for input (epoll always keeps ERR|HUP in the mask)
    assert not epoll_events(worker.ep.fileno(), rig.link.tap.fd) & select.EPOLLIN
    host_datagram(b"kept for later")
    wait_readable(rig.link.tap.fd)  # queued in the tap, nobody reading
    gpa = rig.buffer(2048)
    rig.rx.post([(gpa, 2048, True)])
    rig.rx.post([(rig.buffer(2048), 2048, True)])
    rig.kick(0)
    rig.sink.wait(0)
    [(_, n)] = rig.rx.take_used()
    udp = parse_udp(rig.mem.read(gpa + 12, n - 12))
    assert udp is not None and udp.payload == b"kept for later"
    # a buffer left for the next frame: the tap is polled again
    assert epoll_events(worker.ep.fileno(), rig.link.tap.fd) & select.EPOLLIN
    assert rig.dev.stats.rx_dropped == 0


@needs_tun
def test_tx_frame_reaches_host_socket(rig: Rig) -> None:
    rig.activate(0)
    with host_socket(7779) as s:
        frame = udp_frame(rig.link.mac, PEER_MAC, PEER_IP, HOST_IP, 4444, 7779, b"from the guest")
        head = rig.send_frame(frame)
        rig.kick(1)
        rig.sink.wait(1)
        assert rig.tx.take_used() == [(head, 0)]
        wait_readable(s.fileno())
        assert s.recvfrom(2048) == (b"from the guest", (PEER_IP, 4444))
    assert rig.dev.stats.tx_frames == 1


@needs_tun
def test_tx_header_goes_to_the_tap_as_is(rig: Rig) -> None:
    """NEEDS_CSUM with only the pseudo-header sum in the UDP checksum (§5.1.6.2): had the
    header been dropped the kernel would check a wrong checksum and drop the datagram."""
    rig.activate(1 << VIRTIO_NET_F_CSUM)
    with host_socket(7780) as s:
        payload = b"checksum me"
        frame = bytearray(udp_frame(rig.link.mac, PEER_MAC, PEER_IP, HOST_IP, 4444, 7780, payload))
        ulen = 8 + len(payload)
        pseudo = (
            socket.inet_aton(PEER_IP) + socket.inet_aton(HOST_IP) + struct.pack("!BBH", 0, 17, ulen)
        )
        partial = ~checksum(pseudo) & 0xFFFF  # the folded, uncomplemented sum
        struct.pack_into("!H", frame, 34 + 6, partial)
        hdr = NET_HDR.pack(1, 0, 0, 0, 34, 6, 0)
        rig.send_frame(bytes(frame), hdr)
        rig.kick(1)
        wait_readable(s.fileno())
        assert s.recv(2048) == payload


@needs_tun
def test_tx_malformed_chain_is_refused_and_the_queue_goes_on(rig: Rig) -> None:
    rig.activate(0)
    bad = rig.tx.post([(rig.buffer(64), 64, True)])  # a writable transmit buffer
    with host_socket(7781) as s:
        good = rig.send_frame(udp_frame(rig.link.mac, PEER_MAC, PEER_IP, HOST_IP, 1, 7781, b"ok"))
        rig.kick(1)
        wait_readable(s.fileno())
        assert s.recv(64) == b"ok"
    rig.sink.wait(1)
    assert rig.tx.take_used() == [(bad, 0), (good, 0)]
    assert rig.dev.stats.tx_errors == 1 and not rig.dev.needs_reset_flag


@needs_tun
def test_guest_offloads_reach_the_tap(rig: Rig) -> None:
    rig.activate(
        (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
    )
    tap: Tap = rig.link.tap
    assert tap.offload == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    gpa = rig.buffer(4096)
    rig.rx.post([(gpa, 4096, True)])  # short of 65562, but an MTU frame fits
    rig.kick(0)
    host_datagram(b"offloaded")
    rig.sink.wait(0)
    flags, _, _, _, csum_start, csum_offset, num_buffers = NET_HDR.unpack(rig.mem.read(gpa, 12))
    assert (flags, csum_start, csum_offset, num_buffers) == (1, 34, 6, 1)  # NEEDS_CSUM
    rig.dev.reset()
    assert tap.offload == 0


@needs_tun
def test_no_guest_csum_means_no_tap_offload(rig: Rig) -> None:
    rig.activate(1 << VIRTIO_NET_F_GUEST_TSO4)  # TSO without CSUM: §5.1.3.1 forbids it
    assert rig.link.tap.offload == 0


@needs_tun
def test_rx_malformed_chain_is_refused_and_the_next_one_used(rig: Rig) -> None:
    rig.activate(0)
    bad = rig.rx.post([(rig.buffer(2048), 2048, False)])  # device-readable: not a rx buffer
    gpa = rig.buffer(2048)
    good = rig.rx.post([(gpa, 2048, True)])
    rig.kick(0)
    host_datagram(b"after the bad one")
    rig.sink.wait(0)
    used = rig.rx.take_used()
    while len(used) < 2:  # the refusal may have been signalled on its own
        rig.sink.wait(0)
        used += rig.rx.take_used()
    assert used[0] == (bad, 0) and used[1][0] == good
    udp = parse_udp(rig.mem.read(gpa + 12, used[1][1] - 12))
    assert udp is not None and udp.payload == b"after the bad one"
    assert not rig.dev.needs_reset_flag


def test_a_restored_device_keeps_its_own_mac_as_a_clone_needs(link: Link) -> None:  # noqa: F811
    """The MAC is configuration, not state: a device restored from another's state (a
    clone, built under a new name) shows its own MAC, with a new config generation."""
    saved = VirtioNet(Tap(os.dup(link.tap.fd), link.tap.name, link.tap.vnet_hdr_len), PEER_MAC)
    state = saved.save_state()
    saved.close()
    own = bytes.fromhex("00163e000001")
    clone = VirtioNet(Tap(os.dup(link.tap.fd), link.tap.name, link.tap.vnet_hdr_len), own)
    same = VirtioNet(Tap(os.dup(link.tap.fd), link.tap.name, link.tap.vnet_hdr_len), PEER_MAC)
    try:
        clone.restore_state(state)
        assert bytes(clone.config[:6]) == own
        assert bytes(clone.config[6:]) == bytes(state["config"][6:])  # the rest as saved
        assert clone.config_generation == (state["config_generation"] + 1) & 0xFF
        same.restore_state(state)  # a plain restore: nothing changes
        assert bytes(same.config) == bytes(state["config"])
        assert same.config_generation == state["config_generation"]
    finally:
        clone.close()
        same.close()
