"""The virtio-pci modern transport (virtio 1.2 §4.1), driven the way a driver does: find
the vendor capabilities in config space (§4.1.4: cap_vndr 0x09, cfg_type @3, bar @4,
offset le32 @8, length le32 @12; notify_off_multiplier le32 @16), then use the common
configuration at the offsets of §4.1.4.3."""

from __future__ import annotations

import errno
import os
import queue
import threading

import pytest

from tests.unit.test_virtqueue import VqDriver
from xenopus.devices.virtio.blk import VirtioBlk
from xenopus.devices.virtio.console import VirtioConsole
from xenopus.devices.virtio.pci import VirtioPciDevice
from xenopus.devices.virtio.rng import VirtioRng
from xenopus.kvm.system import KvmError
from xenopus.memory.guest import GuestMemory

TIMEOUT = 5.0

# §4.1.4.3 struct virtio_pci_common_cfg
DEVICE_FEATURE_SELECT, DEVICE_FEATURE = 0x00, 0x04
DRIVER_FEATURE_SELECT, DRIVER_FEATURE = 0x08, 0x0C
CONFIG_MSIX_VECTOR, NUM_QUEUES, DEVICE_STATUS, CONFIG_GENERATION = 0x10, 0x12, 0x14, 0x15
QUEUE_SELECT, QUEUE_SIZE, QUEUE_MSIX_VECTOR, QUEUE_ENABLE = 0x16, 0x18, 0x1A, 0x1C
QUEUE_NOTIFY_OFF, QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x1E, 0x20, 0x28, 0x30
# §2.1 status bits
ACK, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET = 1, 2, 4, 8, 0x40
VERSION_1, EVENT_IDX, INDIRECT = 32, 29, 28
NO_VECTOR = 0xFFFF
BAR_ADDR = 0x8_0000_0000


class FakeRoute:
    def __init__(self, fired: queue.Queue[int], gsi: int):
        self.fired, self.gsi = fired, gsi
        self.address = self.data = 0

    def update(self, address: int, data: int) -> None:
        self.address, self.data = address, data

    def mask(self) -> None:
        pass

    def unmask(self) -> None:
        pass

    def trigger(self) -> None:
        self.fired.put(self.data)

    def release(self) -> None:
        pass


class FakeRouting:
    def __init__(self) -> None:
        self.fired: queue.Queue[int] = queue.Queue()
        self.n = 0

    def allocate_msi(self) -> FakeRoute:
        self.n += 1
        return FakeRoute(self.fired, 23 + self.n)


class FakeMachine:
    """memory, allocate_msi, ioeventfd: what the transport uses of a Machine. Doorbells are
    plain eventfds the test writes to, as KVM would on a guest write; MSIs come from (and
    are seen in) `irq`."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.irq = FakeRouting()
        self.doorbells: dict[int, tuple[int, int]] = {}  # fd -> (addr, length)
        self.foreign: set[tuple[int, int]] = set()  # other devices' doorbells

    def allocate_msi(self) -> FakeRoute:
        return self.irq.allocate_msi()

    def ioeventfd(
        self, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None
    ) -> int:
        # KVM refuses a second ioeventfd of the same address, length and datamatch
        # (virt/kvm/eventfd.c, ioeventfd_check_collision): EEXIST.
        if (addr, length) in self.doorbells.values() or (addr, length) in self.foreign:
            raise KvmError(f"KVM_IOEVENTFD {addr:#x}: File exists", errno.EEXIST)
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.doorbells[fd] = (addr, length)
        return fd

    def remove_ioeventfd(self, fd: int) -> None:
        del self.doorbells[fd]
        os.close(fd)

    def doorbell_at(self, addr: int) -> int:
        (fd,) = [fd for fd, (a, n) in self.doorbells.items() if a == addr and n == 2]
        return fd


@pytest.fixture
def mem():
    m = GuestMemory.create(16 << 20)
    yield m
    m.close()


class Guest:
    """A driver's view of one virtio-pci function."""

    def __init__(self, pci: VirtioPciDevice):
        self.pci = pci
        self.caps = self._caps()
        self.bar = pci.bar_handler(0)

    def _caps(self) -> dict[int, dict[str, int]]:
        caps = {}
        off = self.pci.config_read(0x34, 1)
        while off:
            if self.pci.config_read(off, 1) == 0x09:
                kind = self.pci.config_read(off + 3, 1)
                caps[kind] = {
                    "at": off,
                    "bar": self.pci.config_read(off + 4, 1),
                    "offset": self.pci.config_read(off + 8, 4),
                    "length": self.pci.config_read(off + 12, 4),
                    "len": self.pci.config_read(off + 2, 1),
                }
                if kind == 2:
                    caps[kind]["multiplier"] = self.pci.config_read(off + 16, 4)
            elif self.pci.config_read(off, 1) == 0x11:
                caps[0x11] = {"at": off}
            off = self.pci.config_read(off + 1, 1)
        return caps

    def rd(self, off: int, size: int) -> int:
        return self.bar.read(0, self.caps[1]["offset"] + off, size)

    def wr(self, off: int, size: int, value: int) -> None:
        self.bar.write(0, self.caps[1]["offset"] + off, size, value)

    def status(self) -> int:
        return self.rd(DEVICE_STATUS, 1)

    def features(self) -> int:
        self.wr(DEVICE_FEATURE_SELECT, 4, 0)
        lo = self.rd(DEVICE_FEATURE, 4)
        self.wr(DEVICE_FEATURE_SELECT, 4, 1)
        return self.rd(DEVICE_FEATURE, 4) << 32 | lo

    def negotiate(self, features: int) -> bool:
        """§3.1.1 steps 1–6; True if the device kept FEATURES_OK."""
        self.wr(DEVICE_STATUS, 1, 0)
        self.wr(DEVICE_STATUS, 1, ACK)
        self.wr(DEVICE_STATUS, 1, ACK | DRIVER)
        for sel in (0, 1):
            self.wr(DRIVER_FEATURE_SELECT, 4, sel)
            self.wr(DRIVER_FEATURE, 4, (features >> (32 * sel)) & 0xFFFFFFFF)
        self.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK)
        return bool(self.status() & FEATURES_OK)

    def setup_queue(self, index: int, d: VqDriver, vector: int = NO_VECTOR) -> None:
        self.wr(QUEUE_SELECT, 2, index)
        self.wr(QUEUE_SIZE, 2, d.size)
        self.wr(QUEUE_MSIX_VECTOR, 2, vector)
        for reg, addr in ((QUEUE_DESC, d.desc_addr), (QUEUE_DRIVER, d.avail_addr)):
            self.wr(reg, 4, addr & 0xFFFFFFFF)  # 64-bit fields as two halves, like Linux
            self.wr(reg + 4, 4, addr >> 32)
        self.wr(QUEUE_DEVICE, 8, d.used_addr)
        self.wr(QUEUE_ENABLE, 2, 1)

    def doorbell(self, index: int) -> int:
        self.wr(QUEUE_SELECT, 2, index)
        n = self.caps[2]
        bar = self.pci.bar_address(n["bar"])
        return bar + n["offset"] + self.rd(QUEUE_NOTIFY_OFF, 2) * n["multiplier"]


def make(mem: GuestMemory, dev=None) -> tuple[VirtioPciDevice, FakeMachine, Guest]:
    machine = FakeMachine(mem)
    pci = VirtioPciDevice(dev or VirtioRng(), machine)
    pci.set_bar_address(0, BAR_ADDR)  # what the host bridge does when it adds the device
    pci.config_write(0x04, 2, 0x6)  # memory decoding, bus master
    return pci, machine, Guest(pci)


def test_ids_and_header(mem: GuestMemory, tmp_path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    pci, _, _ = make(mem, VirtioBlk(str(img)))
    assert pci.config_read(0x00, 2) == 0x1AF4  # §4.1.2 vendor
    assert pci.config_read(0x02, 2) == 0x1040 + 2  # 0x1040 + virtio-blk's ID 2
    assert pci.config_read(0x08, 1) >= 1  # §4.1.2.1 revision
    assert pci.config_read(0x2C, 2) == 0x1AF4
    assert pci.config_read(0x0B, 1) == 0x01  # base class: mass storage
    assert pci.config_read(0x10, 4) & 0x6 == 0x4  # BAR0: 64-bit memory
    pci.close()


def test_capabilities(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    assert set(g.caps) == {1, 2, 3, 5, 0x11}  # rng has no device config (§5.4.4)
    for kind in (1, 2, 3):
        assert g.caps[kind]["bar"] == 0
    assert g.caps[1]["length"] >= 0x38  # the common config up to queue_device
    assert g.caps[2]["multiplier"] > 0 and g.caps[2]["len"] >= 20
    assert g.caps[5]["len"] >= 20  # virtio_pci_cfg_cap: cap + 4 data bytes
    # MSI-X: table size field (N-1) = one vector per queue + one for config.
    assert pci.config_read(g.caps[0x11]["at"] + 2, 2) & 0x7FF == 1
    pci.close()


def test_feature_negotiation(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    f = g.features()
    assert f >> VERSION_1 & 1 and f >> EVENT_IDX & 1 and f >> INDIRECT & 1
    assert not g.negotiate(f | 1 << 40)  # a bit the device does not offer
    assert not g.negotiate(f & ~(1 << VERSION_1))  # modern devices need VERSION_1
    assert g.negotiate(1 << VERSION_1 | 1 << EVENT_IDX)
    # §3.1.1: feature bits are fixed after FEATURES_OK.
    g.wr(DRIVER_FEATURE_SELECT, 4, 0)
    g.wr(DRIVER_FEATURE, 4, 1 << INDIRECT)
    assert g.rd(DRIVER_FEATURE, 4) == 1 << EVENT_IDX
    pci.close()


def test_queue_registers(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    assert g.rd(NUM_QUEUES, 2) == 1
    g.wr(QUEUE_SELECT, 2, 0)
    assert g.rd(QUEUE_SIZE, 2) == 64  # the maximum, until the driver writes a smaller one
    g.wr(QUEUE_SIZE, 2, 16)
    assert g.rd(QUEUE_SIZE, 2) == 16
    for bad in (24, 128, 0):  # not a power of 2, above the maximum, zero
        g.wr(QUEUE_SIZE, 2, bad)
        assert g.rd(QUEUE_SIZE, 2) == 16
    g.wr(QUEUE_DESC, 4, 0x1234_5000)
    g.wr(QUEUE_DESC + 4, 4, 0x1)
    assert g.rd(QUEUE_DESC, 4) == 0x1234_5000 and g.rd(QUEUE_DESC + 4, 4) == 1
    g.wr(QUEUE_DRIVER, 8, 0xAB_0000_2000)
    assert g.rd(QUEUE_DRIVER + 4, 4) == 0xAB and g.rd(QUEUE_DRIVER, 4) == 0x2000
    g.wr(QUEUE_MSIX_VECTOR, 2, 1)
    assert g.rd(QUEUE_MSIX_VECTOR, 2) == 1
    g.wr(QUEUE_MSIX_VECTOR, 2, 7)  # no such vector: NO_VECTOR (§4.1.5.1.2)
    assert g.rd(QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    g.wr(QUEUE_SELECT, 2, 5)  # no such queue: size 0 (§4.1.4.3.2)
    assert g.rd(QUEUE_SIZE, 2) == 0
    pci.close()


def test_driver_ok_activates_and_zero_resets(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    d = VqDriver(mem, size=16)
    assert g.negotiate(1 << VERSION_1 | 1 << EVENT_IDX)
    g.setup_queue(0, d)
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    dev = pci.device
    assert dev.active and g.status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    q = dev.queues[0]
    assert (q.desc_addr, q.avail_addr, q.used_addr, q.size) == (
        d.desc_addr,
        d.avail_addr,
        d.used_addr,
        16,
    )
    assert q.event_idx and not q.indirect
    assert dev.has(EVENT_IDX) and not dev.has(INDIRECT)  # negotiated features survive
    g.wr(DEVICE_STATUS, 1, 0)  # §2.4 reset
    assert g.status() == 0 and not dev.active and dev.queues == []
    g.wr(QUEUE_SELECT, 2, 0)
    assert g.rd(QUEUE_SIZE, 2) == 64 and g.rd(QUEUE_ENABLE, 2) == 0
    assert g.rd(QUEUE_DESC, 4) == 0 and g.rd(QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    g.wr(DRIVER_FEATURE_SELECT, 4, 1)
    assert g.rd(DRIVER_FEATURE, 4) == 0
    pci.close()


def test_driver_ok_without_features_ok_is_ignored(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | DRIVER_OK)
    assert not g.status() & DRIVER_OK and not pci.device.active
    pci.close()


def test_doorbells_are_ioeventfds_and_follow_the_bar(mem: GuestMemory) -> None:
    pci, machine, g = make(mem)
    bell = g.doorbell(0)
    assert bell >= BAR_ADDR
    machine.doorbell_at(bell)  # exactly one 2-byte ioeventfd there
    new = 0x9_0000_0000
    pci.config_write(0x10, 4, new & 0xFFFFFFFF | 0x4)
    pci.config_write(0x14, 4, new >> 32)
    assert pci.bar_address(0) == new
    assert [a for a, _ in machine.doorbells.values()] == [g.doorbell(0)]
    assert g.doorbell(0) == bell - BAR_ADDR + new
    pci.config_write(0x04, 2, 0x4)  # memory decoding off: no doorbells
    assert machine.doorbells == {}
    pci.close()


def test_end_to_end_msix(mem: GuestMemory) -> None:
    """Feature negotiation, queue setup, a kick on the doorbell eventfd, the worker fills
    the buffer and interrupts through the queue's MSI-X vector."""
    pci, machine, g = make(mem)
    d = VqDriver(mem, size=16)
    msix = g.caps[0x11]["at"]
    table = pci.config_read(msix + 4, 4) & ~7  # table offset (BIR in bits 2:0)
    for v, data in ((0, 0x41), (1, 0x42)):
        e = table + 16 * v
        g.bar.write(0, e, 4, 0xFEE0_0000)
        g.bar.write(0, e + 8, 4, data)
        g.bar.write(0, e + 12, 4, 0)  # unmask
    pci.config_write(msix + 2, 2, 1 << 15)  # MSI-X enable
    assert g.negotiate(1 << VERSION_1)
    g.wr(CONFIG_MSIX_VECTOR, 2, 1)
    g.setup_queue(0, d, vector=0)
    w = d.buffer(48)
    d.post(d.chain([(*w, True)]))
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        assert machine.irq.fired.get(timeout=TIMEOUT) == 0x41  # the work queued before
        assert d.used_elem(0) == (0, 48)
        d.post(d.chain([(*w, True)]))
        os.eventfd_write(machine.doorbell_at(g.doorbell(0)), 1)  # as KVM does on a kick
        assert machine.irq.fired.get(timeout=TIMEOUT) == 0x41
        assert d.used_idx == 2
        pci.device.needs_reset("test")
        assert machine.irq.fired.get(timeout=TIMEOUT) == 0x42  # config vector
        assert g.status() & NEEDS_RESET  # §2.1.2
    finally:
        pci.close()


def test_intx_fallback_and_isr(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    lines: queue.Queue[bool] = queue.Queue()
    pci.intx = lines.put
    d = VqDriver(mem, size=16)
    assert g.negotiate(1 << VERSION_1)
    g.setup_queue(0, d)
    w = d.buffer(8)
    d.post(d.chain([(*w, True)]))
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        assert lines.get(timeout=TIMEOUT) is True
        isr = g.caps[3]["offset"]
        assert g.bar.read(0, isr, 1) == 1  # §4.1.4.5: queue interrupt bit
        assert lines.get(timeout=TIMEOUT) is False  # the read cleared it and the line
        assert g.bar.read(0, isr, 1) == 0
    finally:
        pci.close()


def test_slow_path_notify_write(mem: GuestMemory) -> None:
    """A doorbell write that exits to userspace (not the ioeventfd's width) still kicks."""
    pci, machine, g = make(mem)
    lines: queue.Queue[bool] = queue.Queue()
    pci.intx = lines.put
    d = VqDriver(mem, size=16)
    assert g.negotiate(1 << VERSION_1)
    g.setup_queue(0, d)
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        w = d.buffer(8)
        d.post(d.chain([(*w, True)]))
        g.bar.write(0, g.doorbell(0) - BAR_ADDR, 4, 0)
        assert lines.get(timeout=TIMEOUT) is True and d.used_idx == 1
    finally:
        pci.close()


def test_pci_cfg_window(mem: GuestMemory) -> None:
    """§4.1.4.9: bar/offset/length in the capability, data at cap + 16."""
    pci, _, g = make(mem)
    cap = g.caps[5]["at"]
    pci.config_write(cap + 4, 1, 0)  # bar
    pci.config_write(cap + 8, 4, g.caps[1]["offset"] + NUM_QUEUES)
    pci.config_write(cap + 12, 4, 2)
    assert pci.config_read(cap + 16, 4) & 0xFFFF == 1
    pci.config_write(cap + 8, 4, g.caps[1]["offset"] + DEVICE_STATUS)
    pci.config_write(cap + 12, 4, 1)
    pci.config_write(cap + 16, 4, ACK)
    assert g.status() == ACK
    pci.config_write(cap + 12, 4, 3)  # not 1, 2 or 4: ignored
    pci.config_write(cap + 16, 4, 0)
    assert g.status() == ACK
    pci.close()


def test_rings_outside_ram_at_driver_ok(mem: GuestMemory) -> None:
    pci, _, g = make(mem)
    d = VqDriver(mem, size=16)
    d.used_addr = 1 << 40
    assert g.negotiate(1 << VERSION_1)
    g.setup_queue(0, d)
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        assert g.status() & NEEDS_RESET
        g.wr(DEVICE_STATUS, 1, 0)
        assert g.status() == 0
    finally:
        pci.close()


def test_one_bad_ring_stops_every_queue(mem: GuestMemory) -> None:
    # §2.1.2: DEVICE_NEEDS_RESET means the driver cannot use the device; a good queue
    # beside the bad one must not go on being served.
    pci, _, g = make(mem, VirtioConsole(lambda _: None))
    good = VqDriver(mem, size=16)
    bad = VqDriver(mem, size=16, base=0x40000)
    bad.used_addr = 1 << 40
    assert g.negotiate(1 << VERSION_1)
    g.setup_queue(0, good)
    g.setup_queue(1, bad)
    g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        assert g.status() & NEEDS_RESET
        assert all(q.broken for q in pci.device.queues)
    finally:
        pci.close()


def test_reset_from_vcpu_while_worker_runs(mem: GuestMemory) -> None:
    pci, machine, g = make(mem)
    d = VqDriver(mem, size=16)
    for _ in range(20):
        assert g.negotiate(1 << VERSION_1)
        g.setup_queue(0, d)
        g.wr(DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        os.eventfd_write(machine.doorbell_at(g.doorbell(0)), 1)
        g.wr(DEVICE_STATUS, 1, 0)
        assert not pci.device.active
    assert [t for t in threading.enumerate() if t.name == "virtio-rng"] == []
    pci.close()


def test_bar_moved_onto_another_doorbell_leaves_none_behind(mem: GuestMemory) -> None:
    """A guest moves the BAR onto another device's doorbell (KVM: EEXIST), then elsewhere
    and home: every move must drop the old ioeventfds first, or one left at home swallows
    the kicks there (tests/vm/test_hostile.py, case bar, found this)."""
    pci, machine, g = make(mem)
    home, other = BAR_ADDR, 0x9_0000_0000
    machine.foreign.add((g.doorbell(0) - home + other, 2))

    def move(addr: int) -> None:
        pci.config_write(0x10, 4, addr & 0xFFFFFFFF | 0x4)
        pci.config_write(0x14, 4, addr >> 32)

    move(other)
    assert machine.doorbells == {}  # refused there, and the ones at home are gone
    assert pci._doorbells == [None]
    move(other + 0x100000)
    move(home)
    assert list(machine.doorbells.values()) == [(g.doorbell(0), 2)]
    pci.close()
    assert machine.doorbells == {}
