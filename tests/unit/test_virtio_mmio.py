"""The virtio-mmio transport (virtio 1.2 §4.2), driven the way Linux's virtio_mmio driver
does it: the register offsets of §4.2.2 ("MMIO Device Register Layout"), written here
from the spec, not taken from the module under test."""

from __future__ import annotations

import os
import queue

import pytest

from tests.unit.test_virtio_pci import ACK, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, VERSION_1
from tests.unit.test_virtio_pci import FakeMachine as PciFakeMachine
from tests.unit.test_virtqueue import VqDriver
from xenopus.devices.virtio.blk import VirtioBlk
from xenopus.devices.virtio.mmio import VirtioMmioDevice
from xenopus.devices.virtio.rng import VirtioRng
from xenopus.memory.guest import GuestMemory

TIMEOUT = 5.0
BASE = 0x0A00_0000
# §4.2.2
MAGIC, VERSION, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY = 0x030, 0x034, 0x038, 0x044, 0x050
INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x060, 0x064, 0x070
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x080, 0x090, 0x0A0
SHM_LEN_LOW, CONFIG_GENERATION, CONFIG = 0x0B0, 0x0FC, 0x100


class FakeMachine(PciFakeMachine):
    """memory and ioeventfds (with their datamatch) as the arm64 machine gives them."""

    def __init__(self, memory: GuestMemory):
        super().__init__(memory)
        self.datamatch: dict[int, int | None] = {}

    def ioeventfd(self, addr: int, length: int, *, pio: bool = False,
                  datamatch: int | None = None) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.doorbells[fd] = (addr, length)
        self.datamatch[fd] = datamatch
        return fd


@pytest.fixture
def mem():
    m = GuestMemory.create(16 << 20)
    yield m
    m.close()


def make(mem: GuestMemory, dev=None) -> tuple[VirtioMmioDevice, FakeMachine, queue.Queue[int]]:
    machine = FakeMachine(mem)
    raised: queue.Queue[int] = queue.Queue()
    t = VirtioMmioDevice(dev or VirtioRng(), machine, BASE, lambda: raised.put(1))
    return t, machine, raised


def rd(t: VirtioMmioDevice, off: int) -> int:
    return t.read(BASE, off, 4)


def wr(t: VirtioMmioDevice, off: int, value: int) -> None:
    t.write(BASE, off, 4, value)


def negotiate(t: VirtioMmioDevice, features: int) -> bool:
    """§3.1.1 steps 1-6 (§4.2.3.1 for the selector registers)."""
    wr(t, STATUS, 0)
    wr(t, STATUS, ACK)
    wr(t, STATUS, ACK | DRIVER)
    for sel in (0, 1):
        wr(t, DRIVER_FEATURES_SEL, sel)
        wr(t, DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFFFFFF)
    wr(t, STATUS, ACK | DRIVER | FEATURES_OK)
    return bool(rd(t, STATUS) & FEATURES_OK)


def setup_queue(t: VirtioMmioDevice, index: int, d: VqDriver) -> None:
    """§4.2.3.2: select, check QueueReady is 0, read QueueNumMax, set QueueNum and the
    three addresses in halves, then QueueReady = 1."""
    wr(t, QUEUE_SEL, index)
    assert rd(t, QUEUE_READY) == 0
    assert rd(t, QUEUE_NUM_MAX) >= d.size
    wr(t, QUEUE_NUM, d.size)
    for reg, addr in ((QUEUE_DESC, d.desc_addr), (QUEUE_DRIVER, d.avail_addr),
                      (QUEUE_DEVICE, d.used_addr)):
        wr(t, reg, addr & 0xFFFFFFFF)
        wr(t, reg + 4, addr >> 32)
    wr(t, QUEUE_READY, 1)


def test_identification(mem: GuestMemory, tmp_path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    t, _, _ = make(mem, VirtioBlk(str(img)))
    try:
        assert rd(t, MAGIC) == 0x74726976  # "virt"
        assert rd(t, VERSION) == 2  # not the legacy interface
        assert rd(t, DEVICE_ID) == 2  # §5.2 block device
        assert rd(t, SHM_LEN_LOW) == 0xFFFFFFFF  # §4.2.2: no shared memory region
        # The device configuration from 0x100: virtio-blk's capacity in sectors (§5.2.4).
        assert t.read(BASE, CONFIG, 8) == 8
        assert rd(t, QUEUE_NUM_MAX) > 0
        wr(t, QUEUE_SEL, 1)
        assert rd(t, QUEUE_NUM_MAX) == 0  # §4.2.2: no such queue
    finally:
        t.close()


def test_features(mem: GuestMemory) -> None:
    t, _, _ = make(mem)
    try:
        wr(t, DEVICE_FEATURES_SEL, 1)
        assert rd(t, DEVICE_FEATURES) & 1  # VIRTIO_F_VERSION_1 is bit 32
        assert not negotiate(t, 0)  # a modern-only device refuses a legacy driver
        assert negotiate(t, 1 << VERSION_1)
        assert rd(t, CONFIG_GENERATION) == 0
    finally:
        t.close()


def test_doorbells_are_ioeventfds_matching_the_queue_index(mem: GuestMemory) -> None:
    t, machine, _ = make(mem)
    try:
        ((fd, (addr, length)),) = machine.doorbells.items()
        assert (addr, length, machine.datamatch[fd]) == (BASE + QUEUE_NOTIFY, 4, 0)
    finally:
        t.close()
    assert machine.doorbells == {}


def test_end_to_end_with_interrupt_status_and_ack(mem: GuestMemory) -> None:
    """A request the driver queued before DRIVER_OK, then one kicked on the doorbell:
    each used buffer raises the interrupt with InterruptStatus bit 0 until acknowledged."""
    t, machine, raised = make(mem)
    d = VqDriver(mem, size=16)
    assert negotiate(t, 1 << VERSION_1)
    setup_queue(t, 0, d)
    w = d.buffer(32)
    d.post(d.chain([(*w, True)]))
    wr(t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        assert raised.get(timeout=TIMEOUT)
        assert d.used_elem(0) == (0, 32)
        assert rd(t, INTERRUPT_STATUS) == 1
        wr(t, INTERRUPT_ACK, 1)
        assert rd(t, INTERRUPT_STATUS) == 0
        d.post(d.chain([(*w, True)]))
        (fd,) = machine.doorbells
        os.eventfd_write(fd, 1)  # as KVM does on the guest's QueueNotify write
        assert raised.get(timeout=TIMEOUT) and d.used_idx == 2
        t.device.needs_reset("test")
        assert raised.get(timeout=TIMEOUT)
        assert rd(t, INTERRUPT_STATUS) & 2  # configuration change
        assert rd(t, STATUS) & NEEDS_RESET  # §2.1.2
        wr(t, STATUS, 0)  # §4.2.3.1: writing 0 resets
        assert rd(t, STATUS) == 0 and rd(t, INTERRUPT_STATUS) == 0
        wr(t, QUEUE_SEL, 0)
        assert rd(t, QUEUE_READY) == 0
    finally:
        t.close()


def test_notify_that_reaches_userspace_still_kicks(mem: GuestMemory) -> None:
    t, _, raised = make(mem)
    d = VqDriver(mem, size=16)
    assert negotiate(t, 1 << VERSION_1)
    setup_queue(t, 0, d)
    wr(t, STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    try:
        w = d.buffer(8)
        d.post(d.chain([(*w, True)]))
        wr(t, QUEUE_NOTIFY, 0)
        assert raised.get(timeout=TIMEOUT) and d.used_idx == 1
    finally:
        t.close()


def test_narrow_register_access_is_ignored(mem: GuestMemory) -> None:
    """§4.2.2.2: control registers are accessed 32 bits wide; others read 0, write nothing."""
    t, _, _ = make(mem)
    try:
        assert t.read(BASE, MAGIC, 2) == 0
        t.write(BASE, STATUS, 1, ACK)
        assert rd(t, STATUS) == 0
    finally:
        t.close()
