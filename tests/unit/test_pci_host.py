"""PciHostBridge: mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2), ECAM (PCIe base spec
§7.2.2), absent functions, BAR placement and re-registration."""

from __future__ import annotations

import logging

import pytest

from xenopus.devices import platform as p
from xenopus.devices.bus import Bus
from xenopus.devices.pci import PciBar, PciConfig, PciDevice, PciHostBridge
from xenopus.devices.pci import config as c


class Region:
    """A BAR handler that records its accesses (offsets relative to the BAR)."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int, int]] = []

    def read(self, base: int, offset: int, size: int) -> int:
        return 0x5A5A0000 | offset

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self.writes.append((base, offset, size, value))


class Dev(PciDevice):
    name = "test-dev"

    def __init__(self) -> None:
        self.mem, self.io, self.mem64 = Region(), Region(), Region()
        super().__init__(
            PciConfig(0x1AF4, 0x1042, 0x010000, interrupt_pin=1),
            [
                PciBar(0, 0x1000, "mmio32", self.mem),
                PciBar(1, 0x20, "io", self.io),
                PciBar(2, 0x100000, "mmio64", self.mem64, prefetchable=True),
            ],
        )


@pytest.fixture
def host() -> PciHostBridge:
    return PciHostBridge(Bus("pio"), Bus("mmio"), ram_end=1 << 30)


def cf8(host: PciHostBridge, bus: int, dev: int, fn: int, reg: int) -> None:
    host.pio.write(0xCF8, 4, 1 << 31 | bus << 16 | dev << 11 | fn << 8 | reg)


def mech1_read(host: PciHostBridge, dev: int, reg: int, size: int, fn: int = 0) -> int:
    cf8(host, 0, dev, fn, reg & ~3)
    return host.pio.read(0xCFC + (reg & 3), size)


def ecam(dev: int, reg: int, fn: int = 0, bus: int = 0) -> int:
    return p.ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg)


def test_platform_layout_used() -> None:
    assert (p.PCI_CONFIG_PORT, p.PCI_CONFIG_PORT_SIZE) == (0xCF8, 8)


def test_host_bridge_function(host: PciHostBridge) -> None:
    assert mech1_read(host, 0, 0x00, 4) == 0x0008_1B36
    assert mech1_read(host, 0, 0x08, 4) >> 8 == 0x060000  # Appendix D: host bridge 06/00/00
    assert host.mmio.read(ecam(0, 0x00), 4) == 0x0008_1B36


def test_config_address_latch(host: PciHostBridge) -> None:
    host.pio.write(0xCF8, 4, 0x80001237)
    assert host.pio.read(0xCF8, 4) == 0x80001234  # bits 1:0 read as 0
    # A byte or word access to 0xCF8-0xCFB is not CONFIG_ADDRESS (§3.2.2.3.2).
    host.pio.write(0xCF8, 2, 0)
    host.pio.write(0xCF9, 1, 0x06)
    assert host.pio.read(0xCF8, 4) == 0x80001234


def test_enable_bit_clear_reads_ones(host: PciHostBridge) -> None:
    host.pio.write(0xCF8, 4, 0x00000000)  # enable bit 31 clear: not a config cycle
    assert host.pio.read(0xCFC, 4) == 0xFFFFFFFF


def test_byte_and_word_lanes_of_config_data(host: PciHostBridge) -> None:
    host.add(Dev(), slot=3)
    cf8(host, 0, 3, 0, 0x00)
    assert host.pio.read(0xCFC, 2) == 0x1AF4
    assert host.pio.read(0xCFE, 2) == 0x1042
    assert host.pio.read(0xCFD, 1) == 0x1A
    assert host.pio.read(0xCFF, 1) == 0x10
    cf8(host, 0, 3, 0, 0x3C)
    host.pio.write(0xCFC, 1, 0x0B)  # interrupt line
    assert host.mmio.read(ecam(3, 0x3C), 1) == 0x0B
    assert host.pio.read(0xCFD, 1) == 1  # interrupt pin INTA#


def test_mechanism1_and_ecam_reach_the_same_registers(host: PciHostBridge) -> None:
    dev = Dev()
    df = host.add(dev, slot=5)
    assert df == 5 << 3
    for reg in range(0, 0x40, 4):
        assert mech1_read(host, 5, reg, 4) == host.mmio.read(ecam(5, reg), 4), hex(reg)
    host.mmio.write(ecam(5, 0x0C), 1, 0x10)  # cache line size via ECAM ...
    assert mech1_read(host, 5, 0x0C, 1) == 0x10  # ... seen through 0xCFC
    # ECAM reaches the extended space (>= 0x100); mechanism #1 cannot.
    dev.config.set(0x100, 4, 0x12345678)
    assert host.mmio.read(ecam(5, 0x100), 4) == 0x12345678


def test_absent_functions_read_all_ones(host: PciHostBridge) -> None:
    assert mech1_read(host, 7, 0x00, 4) == 0xFFFFFFFF
    assert mech1_read(host, 0, 0x00, 2, fn=1) == 0xFFFF  # function 1 of the bridge
    assert host.mmio.read(ecam(31, 0x00), 4) == 0xFFFFFFFF
    cf8(host, 1, 0, 0, 0)  # bus 1 does not exist
    assert host.pio.read(0xCFC, 4) == 0xFFFFFFFF
    host.mmio.write(ecam(7, 0x04), 2, 0xFFFF)  # ignored, no crash
    # ECAM on a bus beyond the window is not claimed at all: the MMIO bus gives ones.
    assert host.mmio.read(p.ECAM_BASE + p.ECAM_SIZE, 4) == 0xFFFFFFFF


def test_placement_is_aligned_in_the_windows(host: PciHostBridge) -> None:
    a, b = Dev(), Dev()
    host.add(a)
    host.add(b)
    for d in (a, b):
        m32, io, m64 = d.bar_address(0), d.bar_address(1), d.bar_address(2)
        assert p.MMIO32_BASE <= m32 < p.MMIO32_BASE + p.MMIO32_SIZE and m32 % 0x1000 == 0
        assert p.PCI_IO_BASE <= io < p.PCI_IO_BASE + p.PCI_IO_SIZE and io % 0x20 == 0
        # A small 64-bit BAR sits below 4 GiB while the 32-bit window has room.
        assert p.MMIO32_BASE <= m64 < p.MMIO32_BASE + p.MMIO32_SIZE and m64 % 0x100000 == 0
        assert d.config.command & (c.CMD_MEMORY | c.CMD_IO) == c.CMD_MEMORY | c.CMD_IO
    assert a.bar_address(0) != b.bar_address(0) and a.bar_address(1) != b.bar_address(1)
    # Registered where they are, relative offsets reach the handler.
    host.mmio.write(a.bar_address(0) + 0x10, 4, 7)
    assert a.mem.writes == [(a.bar_address(0), 0x10, 4, 7)]
    assert host.pio.read(b.bar_address(1) + 2, 2) == (0x5A5A0002 & 0xFFFF)
    assert host.mmio.read(a.bar_address(2) + 0x40, 4) == 0x5A5A0040


def test_large_64bit_bar_goes_above_4g(host: PciHostBridge) -> None:
    big = 2 * p.MMIO32_SIZE  # cannot fit in the 32-bit window
    d = PciDevice(PciConfig(0x1AF4, 0x1042, 0x010000), [PciBar(0, big, "mmio64", Region())])
    host.add(d)
    m64_base, m64_size = p.mmio64_window(1 << 30)
    assert m64_base <= d.bar_address(0) < m64_base + m64_size and d.bar_address(0) % big == 0


def test_bar_move_reregisters(host: PciHostBridge) -> None:
    d = Dev()
    host.add(d, slot=2)
    old = d.bar_address(0)
    new = 0xD0000000
    host.mmio.write(ecam(2, 0x10), 4, new)
    assert d.bar_address(0) == new
    host.mmio.write(new + 4, 4, 1)
    assert d.mem.writes[-1] == (new, 4, 4, 1)
    assert host.mmio.lookup(old) is None  # the old range is gone
    # A 64-bit BAR moved through both halves.
    cf8(host, 0, 2, 0, 0x18)
    host.pio.write(0xCFC, 4, 0x0000000C)
    cf8(host, 0, 2, 0, 0x1C)
    host.pio.write(0xCFC, 4, 0x20)
    assert host.mmio.read(0x20_0000_0000 + 8, 4) == 0x5A5A0008


def test_decoding_toggle_unregisters_and_restores(host: PciHostBridge) -> None:
    d = Dev()
    host.add(d, slot=2)
    mem, io = d.bar_address(0), d.bar_address(1)
    host.mmio.write(ecam(2, c.COMMAND), 2, c.CMD_IO)  # memory decoding off
    assert host.mmio.lookup(mem) is None and host.pio.lookup(io) is not None
    host.mmio.write(ecam(2, c.COMMAND), 2, 0)
    assert host.pio.lookup(io) is None
    # §6.2.5.1 sizing with decoding off moves nothing onto the bus.
    host.mmio.write(ecam(2, 0x10), 4, 0xFFFFFFFF)
    assert host.mmio.read(ecam(2, 0x10), 4) == 0xFFFFF000
    assert host.mmio.lookup(0xFFFFF000) is None
    host.mmio.write(ecam(2, 0x10), 4, mem)
    host.mmio.write(ecam(2, c.COMMAND), 2, c.CMD_MEMORY | c.CMD_IO)
    assert host.mmio.lookup(mem) is not None and host.pio.lookup(io) is not None


def test_overlapping_bar_is_refused_gracefully(
    host: PciHostBridge, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Dev(), Dev()
    host.add(a, slot=1)
    host.add(b, slot=2)
    with caplog.at_level(logging.WARNING, "xenopus.devices.pci"):
        host.mmio.write(ecam(2, 0x10), 4, a.bar_address(0))  # onto a's BAR 0
        host.mmio.write(ecam(2, 0x10), 4, p.ECAM_BASE)  # onto the ECAM window itself
    assert "left unmapped" in caplog.text
    host.mmio.write(a.bar_address(0), 4, 9)
    assert a.mem.writes and not b.mem.writes  # a still owns its range
    assert host.mmio.read(ecam(2, 0x00), 2) == 0x1AF4  # ECAM still works
    host.mmio.write(ecam(2, 0x10), 4, 0xD1000000)  # and b can still move somewhere free
    host.mmio.write(0xD1000000, 4, 3)
    assert b.mem.writes == [(0xD1000000, 0, 4, 3)]


def test_intx_swizzle_and_line(host: PciHostBridge) -> None:
    raised: list[tuple[int, bool]] = []
    h = PciHostBridge(Bus("pio"), Bus("mmio"), lambda gsi, level: raised.append((gsi, level)))
    d = Dev()
    h.add(d, slot=6)
    assert d.config.interrupt_line == 16 + (6 + 1 - 1) % 4
    assert d.intx is not None
    d.intx(True)
    assert raised == [(d.config.interrupt_line, True)]


def test_slot_errors(host: PciHostBridge) -> None:
    with pytest.raises(ValueError):
        host.add(Dev(), slot=0)  # the host bridge's
    with pytest.raises(ValueError):
        host.add(Dev(), slot=32)
