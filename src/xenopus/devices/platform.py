"""The guest-physical platform layout: where every platform device and window lives.

One place for the addresses the device models, the PCI host bridge, the ACPI tables and
the memory map must agree on. Nothing here is discovered by the guest except through
the ACPI tables (MADT, MCFG, DSDT `_CRS`) built from these constants.

    0x000E0000 - 0x000FFFFF  ACPI tables (inside the legacy hole the e820 map reserves)
    0xC0000000 - 0xDFFFFFFF  32-bit PCI MMIO window (BARs); starts at the RAM hole
    0xE0000000 - 0xE00FFFFF  PCI ECAM (MCFG), bus 0 only
    0xFEB00000 - 0xFEB00FFF  ACPI hardware-reduced register block (sleep, reset, GED;
                             CPU hotplug from 0xFEB00100)
    0xFEC00000               IOAPIC
    0xFED00000               (HPET's conventional page: left free)
    0xFEE00000               local APICs
    64 GiB up (above RAM)    64-bit PCI MMIO window, see `mmio64_window`

The fixed I/O ports of the legacy PC devices, of the debug ports and of the Xen
hypercall trap live here too: a device model takes its port from this table (or is
handed its base by the bus), never from a literal of its own.

    0x0060, 0x0064           i8042 data and command/status
    0x0070 - 0x0071          CMOS RTC index and data
    0x0080                   POST codes (a sink)
    0x00E2                   Xen hypercall-page trap (xen/hypercall.py)
    0x00E9                   debug console
    0x03F8 - 0x03FF          COM1 (16550A)
    0x0CF8 - 0x0CFF          PCI configuration mechanism #1
    0x1000 - 0xFFFF          PCI I/O BARs
"""

from __future__ import annotations

from dataclasses import dataclass

from xenopus.memory.guest import MMIO_HOLE_START, GiB, MiB

# Interrupt controllers (Intel SDM vol. 3 §10.4.1 default LAPIC base; 82093AA IOAPIC).
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
# KVM's in-kernel IOAPIC resets with ID 0; the MADT must say the same.
IOAPIC_ID = 0
IOAPIC_GSI_BASE = 0

# PCI Express enhanced configuration access (PCIe base spec §7.2.2): 1 MiB per bus.
ECAM_BASE = 0xE0000000
ECAM_BUSES = 1
ECAM_SIZE = ECAM_BUSES * MiB
PCI_SEGMENT = 0
PCI_BUS_FIRST = 0
PCI_BUS_LAST = PCI_BUS_FIRST + ECAM_BUSES - 1

# 32-bit BAR window: from the bottom of the RAM hole up to ECAM.
MMIO32_BASE = MMIO_HOLE_START
MMIO32_SIZE = ECAM_BASE - MMIO32_BASE

# 64-bit BAR window: above RAM, naturally aligned so large BARs fit.
MMIO64_MIN_BASE = 64 * GiB
MMIO64_SIZE = 64 * GiB

# Port I/O: configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2), and the ports
# BARs are placed in, above everything ISA/legacy devices use.
PCI_CONFIG_PORT = 0xCF8
PCI_CONFIG_PORT_SIZE = 8
PCI_IO_BASE = 0x1000
PCI_IO_SIZE = 0x10000 - PCI_IO_BASE
# The I/O windows the root bridge's _CRS announces, (base, size), around the
# configuration ports as on a PC: ISA devices in the low one, BARs in the high one.
PCI_IO_WINDOWS = ((0x0000, PCI_CONFIG_PORT), (0x0D00, 0x10000 - 0x0D00))

# ACPI hardware-reduced register block, one page: the sleep, reset and GED registers
# (xenopus.devices.acpi_power) first, the CPU hotplug status bytes
# (xenopus.devices.cpu_hotplug, one per vCPU) from +0x100.
ACPI_REGS_BASE = 0xFEB00000
ACPI_REGS_SIZE = 0x1000
ACPI_POWER_SIZE = 0x100
CPU_HOTPLUG_BASE = ACPI_REGS_BASE + ACPI_POWER_SIZE
CPU_HOTPLUG_SIZE = ACPI_REGS_SIZE - ACPI_POWER_SIZE  # bytes past the vCPUs read 0
# The GED's interrupt (and the FADT SCI_INT): ISA IRQ 9, the conventional SCI line,
# free of PIT 0, i8042 1/12, COM1 4 and RTC 8. Level-triggered, active-high.
ACPI_GED_IRQ = 9

# Legacy devices the DSDT describes, at the ports and ISA IRQs of every PC (the i8042
# tells its two ports apart by address).
COM1_PORT = 0x3F8
COM1_PORT_SIZE = 8  # the 16550A's eight registers
COM1_IRQ = 4
RTC_PORT = 0x70  # index; the data port follows
RTC_PORT_SIZE = 2
RTC_IRQ = 8
I8042_DATA_PORT = 0x60
I8042_CMD_PORT = 0x64  # status when read
I8042_KBD_IRQ = 1
I8042_AUX_IRQ = 12
PIT_IRQ = 0

# Debug ports: Bochs's "port E9 hack" console (QEMU's isa-debugcon), and port 0x80 where
# firmware and Linux's io_delay write POST codes.
DEBUGCON_PORT = 0xE9
POST_PORT = 0x80

# The port the hypercall page's stubs leave through (`out %al, $0xE2`); why this one:
# xen/hypercall.py's module docstring.
XEN_HYPERCALL_PORT = 0xE2

# Where the ACPI tables live: the top of the legacy BIOS area, as on a PC
# (ACPI 6.5 §5.2.5.1: the RSDP of a legacy-BIOS system is found in 0xE0000-0xFFFFF).
# Xen's special pages (HVM params STORE_PFN and CONSOLE_PFN): in the reserved legacy hole,
# below the ACPI tables, so the guest's memory map never hands them out as RAM.
XEN_STORE_PAGE = 0xDE000
XEN_CONSOLE_PAGE = 0xDF000

ACPI_TABLES_BASE = 0xE0000
# 124 KiB, ending a page short of 1 MiB: the page at 0xFF000 stays free for a PVH image
# whose first PT_LOAD segment starts there (its ELF headers just below 1 MiB, an
# ordinary linker output that Xen and QEMU's microvm load).
ACPI_TABLES_SIZE = 0x1F000

# What we place in the legacy hole: the Xen special pages, then the ACPI tables. A PVH
# kernel's segment may load anywhere else in it (Xen's PVH domains have no legacy hole).
PLATFORM_AREA_START = XEN_STORE_PAGE
PLATFORM_AREA_END = ACPI_TABLES_BASE + ACPI_TABLES_SIZE

# MADT Interrupt Source Override flags (ACPI 6.5 §5.2.12.5, table 5.26 "MPS INTI flags").
POLARITY_CONFORMS = 0b00
POLARITY_HIGH = 0b01
POLARITY_LOW = 0b11
TRIGGER_CONFORMS = 0b00 << 2
TRIGGER_EDGE = 0b01 << 2
TRIGGER_LEVEL = 0b11 << 2


@dataclass(frozen=True)
class IsaOverride:
    """An ISA IRQ that does not arrive on the identically numbered IOAPIC pin, or not
    with ISA's edge/active-high signalling."""

    irq: int
    gsi: int
    flags: int


# The PIT's IRQ 0 arrives on IOAPIC pin 2 (as on every PC since the 8259 cascade took
# pin 0); the GSI routing table must route GSI 0 to IOAPIC pin 2 to match. The GED/SCI
# line is level-triggered active-high, like a PCI line that is not inverted.
ISA_OVERRIDES = (
    IsaOverride(irq=PIT_IRQ, gsi=2, flags=POLARITY_CONFORMS | TRIGGER_CONFORMS),
    IsaOverride(irq=ACPI_GED_IRQ, gsi=ACPI_GED_IRQ, flags=POLARITY_HIGH | TRIGGER_LEVEL),
)


def mmio64_window(ram_end: int) -> tuple[int, int]:
    """(base, size) of the 64-bit BAR window for a guest whose RAM ends at `ram_end`.

    At 64 GiB, or at the next multiple of the window size above RAM for bigger guests.
    """
    base = max(MMIO64_MIN_BASE, -(-ram_end // MMIO64_SIZE) * MMIO64_SIZE)
    return base, MMIO64_SIZE


# --- arm64 (QEMU virt's layout, hw/arm/virt.c base_memmap and a15irqmap) -------------------
# The GIC and RAM are the machine's (vm/arm64.py); the devices sit where virt puts them, so a
# device tree or an earlycon= written for `-M virt` fits. SPI n is GIC INTID 32 + n.
ARM64_PL011_BASE = 0x0900_0000
ARM64_PL011_SPI = 1
ARM64_PL011_CLOCK_HZ = 24_000_000  # virt's apb-pclk fixed clock
ARM64_PL031_BASE = 0x0901_0000
ARM64_PL031_SPI = 2
# virt's virtio-mmio transports: 32 windows of 0x200 from 0x0A000000, SPIs 16-47.
ARM64_VIRTIO_MMIO_BASE = 0x0A00_0000
ARM64_VIRTIO_MMIO_STRIDE = 0x200
ARM64_VIRTIO_MMIO_COUNT = 32
ARM64_VIRTIO_MMIO_SPI = 16
