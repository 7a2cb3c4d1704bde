"""PciConfig and PciDevice config space against PCI Local Bus 3.0 §6.1–6.2, §6.7."""

from __future__ import annotations

import pytest

from xenopus.devices.pci import PciBar, PciConfig, PciDevice
from xenopus.devices.pci import config as c


class Region:
    def read(self, base: int, offset: int, size: int) -> int:
        return 0

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        pass


def cfg() -> PciConfig:
    # virtio-net's modern ID (virtio 1.2 §4.1.2: 0x1040 + 1) and class 02/00/00 (Ethernet).
    return PciConfig(
        0x1AF4,
        0x1041,
        0x020000,
        revision=1,
        subsystem_vendor_id=0x1AF4,
        subsystem_id=0x0001,
        interrupt_pin=1,
    )


def test_header_offsets_are_the_type0_layout() -> None:
    # §6.1 figure 6-1.
    assert (c.VENDOR_ID, c.DEVICE_ID, c.COMMAND, c.STATUS) == (0x00, 0x02, 0x04, 0x06)
    assert (c.REVISION_ID, c.CLASS_CODE, c.HEADER_TYPE, c.BAR0) == (0x08, 0x09, 0x0E, 0x10)
    assert (c.SUBSYSTEM_VENDOR_ID, c.SUBSYSTEM_ID, c.CAPABILITIES) == (0x2C, 0x2E, 0x34)
    assert (c.INTERRUPT_LINE, c.INTERRUPT_PIN) == (0x3C, 0x3D)


def test_header_fields_read_back_little_endian() -> None:
    s = cfg()
    assert s.read(0x00, 4) == 0x1041_1AF4
    assert s.read(0x08, 4) == 0x0200_0001  # class code in bits 31:8, revision in 7:0
    assert s.read(0x2C, 4) == 0x0001_1AF4
    assert s.read(0x3D, 1) == 1
    assert s.read(0x0E, 1) == 0  # header type 0, single function
    assert len(s.data) == 4096


def test_read_only_fields_ignore_writes() -> None:
    s = cfg()
    for off in (0x00, 0x08, 0x2C, 0x34):
        before = s.read(off, 4)
        s.write(off, 4, 0xFFFFFFFF)
        assert s.read(off, 4) == before
    s.write(0x3D, 1, 4)  # interrupt pin is read-only
    assert s.interrupt_pin == 1
    s.write(0x3C, 1, 11)  # interrupt line is read/write
    assert s.interrupt_line == 11


def test_command_register_writable_bits() -> None:
    s = cfg()
    s.write(c.COMMAND, 2, 0xFFFF)
    # §6.2.2: I/O, memory, bus master, parity, SERR#, interrupt disable are implemented;
    # special cycles, MWI, VGA snoop and fast back-to-back are hardwired to 0 here.
    assert s.command == 0b0000_0101_0100_0111


def test_status_error_bits_are_write_one_to_clear() -> None:
    s = cfg()
    s.set(c.STATUS, 2, 0xF900 | c.STATUS_CAP_LIST)  # device model raised every error bit
    s.write(c.STATUS, 2, 0x2000 | c.STATUS_CAP_LIST)  # clear "received master abort" only
    assert s.status == 0xD900 | c.STATUS_CAP_LIST
    s.write(c.STATUS, 2, 0)  # zeros change nothing
    assert s.status == 0xD900 | c.STATUS_CAP_LIST
    s.write(c.STATUS, 2, 0xFFFF)  # cap list (bit 4) is read-only and survives
    assert s.status == c.STATUS_CAP_LIST


def test_capability_chain() -> None:
    s = cfg()
    assert s.status & c.STATUS_CAP_LIST == 0
    assert s.read(c.CAPABILITIES, 1) == 0
    a = s.add_capability(c.CAP_VENDOR, bytes([14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]))
    b = s.add_capability(c.CAP_MSIX, bytes(10))
    assert a == 0x40  # first after the 64-byte header
    assert b % 4 == 0 and b >= a + 15  # §6.7: dword aligned, after the 15-byte first one
    assert s.status & c.STATUS_CAP_LIST
    assert s.read(c.CAPABILITIES, 1) == a
    assert s.read(a, 2) == b << 8 | c.CAP_VENDOR  # ID, then next pointer
    assert s.read(b, 2) == c.CAP_MSIX  # next = 0 ends the list
    assert s.read(a + 2, 1) == 14
    assert s.capabilities() == [(c.CAP_VENDOR, a), (c.CAP_MSIX, b)]


def test_capability_overflow_refused() -> None:
    s = cfg()
    with pytest.raises(ValueError):
        s.add_capability(c.CAP_VENDOR, bytes(256))


def size_bar(dev: PciDevice, reg: int) -> int:
    """§6.2.5.1's algorithm: save, write all ones, read back, restore."""
    saved = dev.config_read(reg, 4)
    dev.config_write(reg, 4, 0xFFFFFFFF)
    value = dev.config_read(reg, 4)
    dev.config_write(reg, 4, saved)
    assert dev.config_read(reg, 4) == saved
    return value


def device() -> PciDevice:
    return PciDevice(
        cfg(),
        [
            PciBar(0, 0x1000, "mmio32", Region()),
            PciBar(1, 0x20, "io", Region()),
            PciBar(2, 0x4000, "mmio64", Region(), prefetchable=True),
            PciBar(4, 1 << 33, "mmio64", Region()),
        ],
    )


def test_bar_sizing_32bit_memory() -> None:
    # 4 KiB, non-prefetchable, 32-bit: bits 11:4 hardwired 0, type bits 0.
    assert size_bar(device(), 0x10) == 0xFFFFF000


def test_bar_sizing_io() -> None:
    # 32 ports: bit 0 = 1 (I/O), bits 4:2 hardwired 0, upper 16 bits hardwired 0 (16-bit
    # decode); Linux's pci_size() of 0xFFE1 with mask ~3 gives 0x20.
    v = size_bar(device(), 0x14)
    assert v == 0x0000FFE1
    mask = v & ~0x3 & 0xFFFF
    assert (~mask & 0xFFFF) + 1 == 0x20


def test_bar_sizing_64bit_prefetchable() -> None:
    d = device()
    # Low dword: bits 13:4 zero for 16 KiB, type 10b (64-bit) and prefetchable bit 3.
    assert size_bar(d, 0x18) == 0xFFFFC00C
    assert size_bar(d, 0x1C) == 0xFFFFFFFF
    lo, hi = 0xFFFFC00C & ~0xF, 0xFFFFFFFF
    assert (~(hi << 32 | lo) & (2**64 - 1)) + 1 == 0x4000


def test_bar_sizing_large_64bit() -> None:
    d = device()
    assert size_bar(d, 0x20) == 0x00000004  # 8 GiB: every low address bit is below the size
    assert size_bar(d, 0x24) == 0xFFFFFFFE
    mask = 0xFFFFFFFE << 32
    assert (~mask & (2**64 - 1)) + 1 == 1 << 33


def test_unimplemented_bars_and_rom_read_zero() -> None:
    # §6.2.5.1: an unimplemented BAR is hardwired to 0, which sizing reads back as 0.
    d = PciDevice(cfg(), [PciBar(0, 0x1000, "mmio32", Region())])
    for reg in (0x14, 0x18, 0x1C, 0x20, 0x24, c.ROM_ADDRESS):
        assert size_bar(d, reg) == 0


def test_bar_addresses_and_change_hook() -> None:
    d = device()
    seen: list[tuple[int, list[int]]] = []
    d.on_change = lambda dev: seen.append(
        (dev.config.command, [dev.bar_address(i) for i in (0, 2)])
    )
    d.config_write(0x10, 4, 0xC0001000)
    assert d.bar_address(0) == 0xC0001000
    d.config_write(0x18, 4, 0x00000000)
    d.config_write(0x1C, 4, 0x10)
    assert d.bar_address(2) == 0x10_0000_0000
    d.config_write(c.COMMAND, 2, c.CMD_MEMORY)
    assert len(seen) == 3  # the write of 0 to BAR2's low half changed nothing
    assert seen[-1] == (c.CMD_MEMORY, [0xC0001000, 0x10_0000_0000])
    assert d.decoding(d.bars[0]) and not d.decoding(d.bars[1])
    d.config_write(c.INTERRUPT_LINE, 1, 5)  # not a BAR or decoding change
    assert len(seen) == 3


def test_bar_declarations_are_checked() -> None:
    with pytest.raises(ValueError):
        PciBar(0, 0x1800, "mmio32", Region())  # not a power of two
    with pytest.raises(ValueError):
        PciBar(5, 0x1000, "mmio64", Region())  # needs BAR 6
    with pytest.raises(ValueError):
        PciBar(0, 0x1000, "rom", Region())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PciDevice(
            cfg(), [PciBar(0, 0x1000, "mmio64", Region()), PciBar(1, 0x1000, "mmio32", Region())]
        )
