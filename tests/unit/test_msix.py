"""MSI-X (PCI Local Bus 3.0 §6.8.2): capability layout, table, masking and pending bits,
against a fake routing object that records what would reach KVM."""

from __future__ import annotations

import struct

import pytest

from xenopus.devices.pci import Msix, PciBar, PciConfig, PciDevice
from xenopus.devices.pci import config as c


class FakeRoute:
    def __init__(self, gsi: int, log: list[tuple]) -> None:
        self.gsi = gsi
        self.log = log
        self.address = self.data = None
        self.masked = False
        self.fired = 0

    def update(self, address: int, data: int) -> None:
        self.address, self.data = address, data
        self.log.append(("update", self.gsi, address, data))

    def mask(self) -> None:
        self.masked = True
        self.log.append(("mask", self.gsi))

    def unmask(self) -> None:
        self.masked = False
        self.log.append(("unmask", self.gsi))

    def trigger(self) -> None:
        assert not self.masked, "a masked route must not be triggered"
        self.fired += 1

    def release(self) -> None:
        self.log.append(("release", self.gsi))


class FakeRouting:
    def __init__(self) -> None:
        self.routes: list[FakeRoute] = []
        self.log: list[tuple] = []

    def allocate_msi(self) -> FakeRoute:
        r = FakeRoute(24 + len(self.routes), self.log)
        self.routes.append(r)
        return r


class Other:
    def read(self, base: int, offset: int, size: int) -> int:
        return 0xABCD

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self.last = (offset, value)


VECTORS = 3
TABLE, PBA = 0x2000, 0x3000


@pytest.fixture
def dev() -> PciDevice:
    msix = Msix(VECTORS, 1, TABLE, PBA, FakeRouting())
    return PciDevice(
        PciConfig(0x1AF4, 0x1041, 0x020000),
        [PciBar(0, 0x1000, "mmio32", Other()), PciBar(1, 0x4000, "mmio32", Other())],
        msix,
    )


def routing(dev: PciDevice) -> FakeRouting:
    assert dev.msix is not None
    return dev.msix.routing  # type: ignore[return-value]


def cap(dev: PciDevice) -> int:
    return next(off for cid, off in dev.config.capabilities() if cid == c.CAP_MSIX)


def set_control(dev: PciDevice, value: int) -> None:
    dev.config_write(cap(dev) + 2, 2, value)


def write_entry(dev: PciDevice, v: int, address: int, data: int, masked: bool) -> None:
    h = dev.bar_handler(1)
    base = TABLE + 16 * v
    h.write(0, base, 4, address & 0xFFFFFFFF)
    h.write(0, base + 4, 4, address >> 32)
    h.write(0, base + 8, 4, data)
    h.write(0, base + 12, 4, int(masked))


def pba(dev: PciDevice) -> int:
    return dev.bar_handler(1).read(0, PBA, 8)


def test_capability_layout(dev: PciDevice) -> None:
    off = cap(dev)
    # §6.8.2: ID 0x11, message control with N-1 in bits 10:0, table and PBA offset|BIR.
    assert dev.config_read(off, 1) == 0x11
    assert dev.config_read(off + 2, 2) == VECTORS - 1
    assert dev.config_read(off + 4, 4) == TABLE | 1
    assert dev.config_read(off + 8, 4) == PBA | 1
    dev.config_write(off + 2, 2, 0xFFFF)  # only enable (15) and function mask (14) stick
    assert dev.config_read(off + 2, 2) == 0xC000 | (VECTORS - 1)
    dev.config_write(off + 4, 4, 0)  # table offset/BIR is read-only
    assert dev.config_read(off + 4, 4) == TABLE | 1


def test_table_resets_masked_and_reads_back(dev: PciDevice) -> None:
    h = dev.bar_handler(1)
    for v in range(VECTORS):
        # §6.8.2.9: vector control's mask bit is set at reset, everything else zero.
        assert struct.pack("<4I", *(h.read(0, TABLE + 16 * v + 4 * i, 4) for i in range(4))) == (
            bytes(12) + b"\x01\0\0\0"
        )
    write_entry(dev, 1, 0xFEE0_1000, 0x4041, masked=True)
    assert h.read(0, TABLE + 16, 8) == 0xFEE0_1000  # QWORD access to lo/hi
    assert h.read(0, TABLE + 24, 4) == 0x4041
    assert pba(dev) == 0
    h.write(0, PBA, 8, 0xFF)  # PBA is read-only
    assert pba(dev) == 0
    # The rest of the BAR still reaches the device's own handler.
    assert h.read(0, 0x10, 4) == 0xABCD


def test_nothing_is_routed_while_disabled(dev: PciDevice) -> None:
    write_entry(dev, 0, 0xFEE00000, 0x30, masked=False)
    assert routing(dev).routes == []
    assert dev.msix is not None and dev.msix.notify(0) is False  # caller may use INTx


def test_enable_programs_unmasked_vectors_and_notify_fires(dev: PciDevice) -> None:
    m = dev.msix
    assert m is not None
    write_entry(dev, 0, 0xFEE00000, 0x30, masked=False)
    write_entry(dev, 2, 0xFEE01000, 0x31, masked=True)
    set_control(dev, 0x8000)
    [r0] = routing(dev).routes  # vector 2 is masked: not routed yet
    assert (r0.address, r0.data) == (0xFEE00000, 0x30)
    assert m.notify(0) is True
    assert r0.fired == 1
    assert m.notify(2) is True  # masked: pending, not fired
    assert pba(dev) == 0b100
    write_entry(dev, 2, 0xFEE01000, 0x31, masked=False)  # unmask delivers it (§6.8.2.9)
    r2 = routing(dev).routes[1]
    assert (r2.address, r2.data, r2.fired) == (0xFEE01000, 0x31, 1)
    assert pba(dev) == 0
    assert m.notify(7) is False  # no such vector


def test_mask_then_unmask_keeps_one_pending_message(dev: PciDevice) -> None:
    m = dev.msix
    assert m is not None
    write_entry(dev, 1, 0xFEE00000, 0x41, masked=False)
    set_control(dev, 0x8000)
    [r] = routing(dev).routes
    h = dev.bar_handler(1)
    h.write(0, TABLE + 16 + 12, 4, 1)  # mask vector 1
    assert r.masked
    m.notify(1)
    m.notify(1)
    assert r.fired == 0 and pba(dev) == 0b10
    # While masked the driver retargets it; the route follows on unmask.
    h.write(0, TABLE + 16 + 8, 4, 0x42)
    h.write(0, TABLE + 16 + 12, 4, 0)
    assert (r.data, r.fired, r.masked) == (
        0x42,
        1,
        False,
    )  # two notifies, one pending bit: one message
    assert pba(dev) == 0


def test_function_mask(dev: PciDevice) -> None:
    m = dev.msix
    assert m is not None
    write_entry(dev, 0, 0xFEE00000, 0x30, masked=False)
    set_control(dev, 0xC000)  # enabled, function masked
    assert routing(dev).routes == []
    m.notify(0)
    assert pba(dev) == 1
    set_control(dev, 0x8000)
    [r] = routing(dev).routes
    assert r.fired == 1 and pba(dev) == 0
    set_control(dev, 0xC000)
    assert r.masked
    set_control(dev, 0x0000)  # disabled: notify reports it
    assert m.notify(0) is False


def test_reset_and_close(dev: PciDevice) -> None:
    m = dev.msix
    assert m is not None
    write_entry(dev, 0, 0xFEE00000, 0x30, masked=False)
    set_control(dev, 0x8000)
    dev.reset()
    assert not m.enabled and dev.config_read(cap(dev) + 2, 2) == VECTORS - 1
    assert m.masked(0) and routing(dev).routes[0].masked
    dev.close()
    assert ("release", 24) in routing(dev).log


def test_geometry_checks() -> None:
    with pytest.raises(ValueError):
        Msix(4, 0, 0x0, 0x20, FakeRouting())  # PBA inside the 64-byte table
    with pytest.raises(ValueError):
        Msix(4, 0, 0x4, 0x100, FakeRouting())  # unaligned table
    with pytest.raises(ValueError):  # table does not fit the BAR
        PciDevice(
            PciConfig(1, 2, 3),
            [PciBar(0, 0x1000, "mmio32", None)],
            Msix(300, 0, 0x0, 0x2000, FakeRouting()),
        )
