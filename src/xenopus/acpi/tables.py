"""The ACPI tables a xenopus guest finds: RSDP, XSDT, FADT, DSDT, MADT and MCFG.

A hardware-reduced ACPI platform (ACPI 6.3 §4.1): no PM1/GPE blocks, no FACS, no SCI;
power-off, reset and the power button go through the register block of
`xenopus.devices.acpi_power`, which the FADT and the DSDT's GED describe. Section
numbers are ACPI 6.3's; table revisions are the ones ACPI 6.3 defines (FADT 6.3, MADT 5),
which acpica's `iasl` knows. MCFG is the PCI Firmware Specification 3.0's (§4.1.2).

Everything is placed contiguously at `platform.ACPI_TABLES_BASE`, RSDP first (also where a
legacy RSDP scan of 0xE0000-0xFFFFF finds it, §5.2.5.1).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from xenopus.acpi import aml
from xenopus.acpi.aml import (
    IO,
    And,
    Buffer,
    Call,
    CreateDWordField,
    Device,
    EisaId,
    Else,
    If,
    Interrupt,
    IRQNoFlags,
    LEqual,
    Local,
    Memory32Fixed,
    Method,
    Name,
    Notify,
    OperationRegion,
    Or,
    Package,
    ResourceTemplate,
    Return,
    Scope,
    Store,
    String,
)
from xenopus.devices import acpi_power, cpu_hotplug, platform
from xenopus.memory.guest import GuestMemory

OEM_ID = b"XENOPS"
OEM_TABLE_ID = b"XENOPUS "
OEM_REVISION = 1
CREATOR_ID = b"XNPS"
CREATOR_REVISION = 1
# FADT "Hypervisor Vendor Identity" (§5.2.9): the vendor's name, no version.
HYPERVISOR_VENDOR = b"Xenopus\0"

RSDP_REVISION = 2  # ACPI 2.0+ RSDP with the XSDT address
XSDT_REVISION = 1
FADT_REVISION = 6
FADT_MINOR_REVISION = 3
DSDT_REVISION = 2  # 64-bit AML integers
MADT_REVISION = 5
MCFG_REVISION = 1

TABLE_ALIGN = 16

# PCI Firmware Spec 3.0 §4.5.1: _OSC for PCI/PCIe host bridges.
PCI_HOST_BRIDGE_OSC_UUID = "33DB4D5B-1FF7-401C-9657-7441C03DD766"
OSC_UNRECOGNIZED_UUID = 1 << 2  # §6.2.11 _OSC status DWORD

# The DSDT's names for what the power device and the guest kit refer to.
POWER_BUTTON_PATH = "\\_SB.PWRB"
POWER_BUTTON_NOTIFY = 0x80  # §5.6.6 table 5.x: power button pressed (S0 → sleep/off)
CPU_SCAN_PATH = "\\_SB.CSCN"  # the GED's _EVT calls it on a CPU hotplug event
# §5.6.6 table 5.x device object notifications
NOTIFY_DEVICE_CHECK = 0x01  # re-evaluate _STA: the device appeared (§6.3.1)
NOTIFY_EJECT_REQUEST = 0x03  # offline it, then _EJ0 (§6.3.3)
# §6.3.7 _STA: present, enabled, shown in the UI, functioning
STA_PRESENT_ENABLED = 0x0F


class TableHeader(ctypes.LittleEndianStructure):
    """System Description Table Header (§5.2.6, table 5-29), 36 bytes."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("length", ctypes.c_uint32),
        ("revision", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),
        ("oem_id", ctypes.c_char * 6),
        ("oem_table_id", ctypes.c_char * 8),
        ("oem_revision", ctypes.c_uint32),
        ("creator_id", ctypes.c_char * 4),
        ("creator_revision", ctypes.c_uint32),
    ]


class Rsdp(ctypes.LittleEndianStructure):
    """Root System Description Pointer (§5.2.5.3, table 5-27), 36 bytes."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 8),
        ("checksum", ctypes.c_uint8),  # over the first 20 bytes (the ACPI 1.0 part)
        ("oem_id", ctypes.c_char * 6),
        ("revision", ctypes.c_uint8),
        ("rsdt_address", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("xsdt_address", ctypes.c_uint64),
        ("extended_checksum", ctypes.c_uint8),  # over all 36 bytes
        ("reserved", ctypes.c_uint8 * 3),
    ]


RSDP_V1_LENGTH = 20


class Gas(ctypes.LittleEndianStructure):
    """Generic Address Structure (§5.2.3.2, table 5-25), 12 bytes."""

    _pack_ = 1
    _fields_ = [
        ("space_id", ctypes.c_uint8),
        ("bit_width", ctypes.c_uint8),
        ("bit_offset", ctypes.c_uint8),
        ("access_size", ctypes.c_uint8),
        ("address", ctypes.c_uint64),
    ]


GAS_SYSTEM_MEMORY = 0
GAS_ACCESS_BYTE = 1


class Fadt(ctypes.LittleEndianStructure):
    """Fixed ACPI Description Table (§5.2.9, table 5-34), 276 bytes."""

    _pack_ = 1
    _fields_ = [
        ("header", TableHeader),
        ("firmware_ctrl", ctypes.c_uint32),
        ("dsdt", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint8),
        ("preferred_pm_profile", ctypes.c_uint8),
        ("sci_int", ctypes.c_uint16),
        ("smi_cmd", ctypes.c_uint32),
        ("acpi_enable", ctypes.c_uint8),
        ("acpi_disable", ctypes.c_uint8),
        ("s4bios_req", ctypes.c_uint8),
        ("pstate_cnt", ctypes.c_uint8),
        ("pm1a_evt_blk", ctypes.c_uint32),
        ("pm1b_evt_blk", ctypes.c_uint32),
        ("pm1a_cnt_blk", ctypes.c_uint32),
        ("pm1b_cnt_blk", ctypes.c_uint32),
        ("pm2_cnt_blk", ctypes.c_uint32),
        ("pm_tmr_blk", ctypes.c_uint32),
        ("gpe0_blk", ctypes.c_uint32),
        ("gpe1_blk", ctypes.c_uint32),
        ("pm1_evt_len", ctypes.c_uint8),
        ("pm1_cnt_len", ctypes.c_uint8),
        ("pm2_cnt_len", ctypes.c_uint8),
        ("pm_tmr_len", ctypes.c_uint8),
        ("gpe0_blk_len", ctypes.c_uint8),
        ("gpe1_blk_len", ctypes.c_uint8),
        ("gpe1_base", ctypes.c_uint8),
        ("cst_cnt", ctypes.c_uint8),
        ("p_lvl2_lat", ctypes.c_uint16),
        ("p_lvl3_lat", ctypes.c_uint16),
        ("flush_size", ctypes.c_uint16),
        ("flush_stride", ctypes.c_uint16),
        ("duty_offset", ctypes.c_uint8),
        ("duty_width", ctypes.c_uint8),
        ("day_alrm", ctypes.c_uint8),
        ("mon_alrm", ctypes.c_uint8),
        ("century", ctypes.c_uint8),
        ("iapc_boot_arch", ctypes.c_uint16),
        ("reserved1", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
        ("reset_reg", Gas),
        ("reset_value", ctypes.c_uint8),
        ("arm_boot_arch", ctypes.c_uint16),
        ("minor_version", ctypes.c_uint8),
        ("x_firmware_ctrl", ctypes.c_uint64),
        ("x_dsdt", ctypes.c_uint64),
        ("x_pm1a_evt_blk", Gas),
        ("x_pm1b_evt_blk", Gas),
        ("x_pm1a_cnt_blk", Gas),
        ("x_pm1b_cnt_blk", Gas),
        ("x_pm2_cnt_blk", Gas),
        ("x_pm_tmr_blk", Gas),
        ("x_gpe0_blk", Gas),
        ("x_gpe1_blk", Gas),
        ("sleep_control_reg", Gas),
        ("sleep_status_reg", Gas),
        ("hypervisor_vendor", ctypes.c_char * 8),
    ]


# FADT Flags (§5.2.9.4 table 5-35).
FADT_WBINVD = 1 << 0
FADT_PWR_BUTTON = 1 << 4  # set: the power button is a control-method device (or none)
FADT_SLP_BUTTON = 1 << 5
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20

# IA-PC Boot Architecture Flags (§5.2.9.3 table 5-36).
BOOT_ARCH_8042 = 1 << 1
BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5

# The RTC's century register (IBM PC AT CMOS index 0x32, xenopus.devices.rtc.CENTURY).
RTC_CENTURY_INDEX = 0x32


class MadtHeader(ctypes.LittleEndianStructure):
    """Multiple APIC Description Table, fixed part (§5.2.12, table 5-43)."""

    _pack_ = 1
    _fields_ = [
        ("header", TableHeader),
        ("lapic_address", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


MADT_PCAT_COMPAT = 1 << 0

# Interrupt Controller Structure types (§5.2.12 table 5-45).
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_SOURCE_OVERRIDE = 2
MADT_LOCAL_APIC_NMI = 4


class MadtLocalApic(ctypes.LittleEndianStructure):
    """Processor Local APIC Structure (§5.2.12.2, table 5-46), 8 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("processor_uid", ctypes.c_uint8),
        ("apic_id", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
    ]


LAPIC_ENABLED = 1 << 0
# ACPI 6.3 table 5-47: a processor not Enabled at boot that may be brought up later. Linux
# (arch/x86/kernel/acpi/boot.c acpi_is_processor_usable, ACPI >= 6.3 tables) ignores a
# disabled LAPIC without it, so the vCPUs `xl vcpu-set` can bring up would not exist.
LAPIC_ONLINE_CAPABLE = 1 << 1


class MadtIoApic(ctypes.LittleEndianStructure):
    """I/O APIC Structure (§5.2.12.3, table 5-48), 12 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("io_apic_id", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("address", ctypes.c_uint32),
        ("gsi_base", ctypes.c_uint32),
    ]


class MadtIntSourceOverride(ctypes.LittleEndianStructure):
    """Interrupt Source Override Structure (§5.2.12.5, table 5-49), 10 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("bus", ctypes.c_uint8),  # 0: ISA
        ("source", ctypes.c_uint8),
        ("gsi", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
    ]


class MadtLocalApicNmi(ctypes.LittleEndianStructure):
    """Local APIC NMI Structure (§5.2.12.7, table 5-53), 6 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("processor_uid", ctypes.c_uint8),  # 0xFF: all processors
        ("flags", ctypes.c_uint16),
        ("lint", ctypes.c_uint8),
    ]


ALL_PROCESSORS = 0xFF
NMI_LINT = 1  # NMI is wired to LINT1 on every PC (Intel SDM vol. 3 §10.5.1)


class McfgAllocation(ctypes.LittleEndianStructure):
    """MCFG configuration space base address allocation (PCI Firmware 3.0 table 4-3)."""

    _pack_ = 1
    _fields_ = [
        ("base_address", ctypes.c_uint64),
        ("segment", ctypes.c_uint16),
        ("start_bus", ctypes.c_uint8),
        ("end_bus", ctypes.c_uint8),
        ("reserved", ctypes.c_uint32),
    ]


MCFG_RESERVED = 8  # after the header (PCI Firmware 3.0 table 4-2)


@dataclass(frozen=True)
class AcpiPci:
    """The PCI host bridge as the DSDT and MCFG announce it; (base, size) windows."""

    mmio64: tuple[int, int]
    ecam_base: int = platform.ECAM_BASE
    segment: int = platform.PCI_SEGMENT
    bus_first: int = platform.PCI_BUS_FIRST
    bus_last: int = platform.PCI_BUS_LAST
    mmio32: tuple[int, int] = (platform.MMIO32_BASE, platform.MMIO32_SIZE)
    io: tuple[tuple[int, int], ...] = platform.PCI_IO_WINDOWS

    @classmethod
    def default(cls, ram_end: int) -> AcpiPci:
        return cls(mmio64=platform.mmio64_window(ram_end))


@dataclass(frozen=True)
class AcpiPlatform:
    """What the tables describe. LAPIC ids are 0..vcpus-1, as KVM assigns them."""

    vcpus: int
    pci: AcpiPci | None = None
    # vCPUs enabled at boot (None: all); the rest are listed disabled, present for
    # hotplug (Xen's libacpi build_madt: LAPIC enabled only for hvm_info's vcpu_online)
    online: int | None = None
    serial: bool = True
    rtc: bool = True
    i8042: bool = True
    power_base: int = platform.ACPI_REGS_BASE
    power_irq: int = platform.ACPI_GED_IRQ
    cpu_hotplug_base: int = platform.CPU_HOTPLUG_BASE
    # The MADT lists the IO-APIC (and the ISA overrides onto its GSIs). Off for a PV shim
    # domain, as Xen's own libxl leaves it out of a PVH guest's MADT (libacpi build_madt
    # without ACPI_HAS_IOAPIC): Xen finding one runs check_timer (io_apic.c), which wants
    # more than 4 PIT ticks through it in a 10-tick mdelay and else panics "IO-APIC +
    # timer doesn't work!", as it did on a loaded nested host. The shim needs none: its
    # events come by the vector callback and its time from the Xen clock.
    io_apic: bool = True


@dataclass(frozen=True)
class Table:
    """One ACPI table as laid out in guest memory."""

    signature: str
    address: int
    data: bytes


@dataclass
class AcpiTables:
    """The tables placed from `base`; `image()` is the bytes to copy there."""

    base: int
    rsdp_address: int
    tables: list[Table] = field(default_factory=list)

    def image(self) -> bytes:
        end = max(t.address + len(t.data) for t in self.tables)
        out = bytearray(end - self.base)
        for t in self.tables:
            out[t.address - self.base : t.address - self.base + len(t.data)] = t.data
        return bytes(out)

    def get(self, signature: str) -> Table:
        for t in self.tables:
            if t.signature == signature:
                return t
        raise KeyError(signature)


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` (with a zero in its place) sum to 0 mod 256 (§5.2.6)."""
    return -sum(data) & 0xFF


def _header(signature: bytes, length: int, revision: int) -> TableHeader:
    return TableHeader(
        signature=signature,
        length=length,
        revision=revision,
        oem_id=OEM_ID,
        oem_table_id=OEM_TABLE_ID,
        oem_revision=OEM_REVISION,
        creator_id=CREATOR_ID,
        creator_revision=CREATOR_REVISION,
    )


_CHECKSUM_OFFSET = TableHeader.checksum.offset


def _checksummed(table: bytes) -> bytes:
    """`table` (header first, checksum byte zero) with its header checksum filled in."""
    data = bytearray(table)
    data[_CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table: the header, then `body`, with length and checksum filled in."""
    size = ctypes.sizeof(TableHeader)
    return _checksummed(bytes(_header(signature, size + len(body), revision)) + body)


def _finish(table: ctypes.Structure, extra: bytes = b"") -> bytes:
    """A ctypes table whose first field is `header`: set length, then checksum."""
    table.header.length = ctypes.sizeof(table) + len(extra)
    return _checksummed(bytes(table) + extra)


# --- DSDT -------------------------------------------------------------------------


def _pci_root(pci: AcpiPci) -> Device:
    windows: list[aml.Aml] = [
        aml.word_bus_number(pci.bus_first, pci.bus_last),
        IO(platform.PCI_CONFIG_PORT, platform.PCI_CONFIG_PORT, 1, platform.PCI_CONFIG_PORT_SIZE),
    ]
    windows += [aml.word_io(base, base + size - 1) for base, size in pci.io]
    base, size = pci.mmio32
    windows.append(aml.dword_memory(base, base + size - 1))
    base, size = pci.mmio64
    windows.append(aml.qword_memory(base, base + size - 1))
    cdw1 = "CDW1"
    # §6.2.11: grant whatever the OS asks for on the PCI host bridge UUID (the status
    # DWORD is returned as given, so no error bit); refuse other UUIDs.
    osc = Method(
        "_OSC",
        4,
        [
            CreateDWordField(aml.Arg(3), 0, cdw1),
            If(LEqual(aml.Arg(0), aml.to_uuid(PCI_HOST_BRIDGE_OSC_UUID)), [Return(aml.Arg(3))]),
            Else(
                [
                    Or(aml.NameRef(cdw1), OSC_UNRECOGNIZED_UUID, cdw1),
                    Return(aml.Arg(3)),
                ]
            ),
        ],
    )
    return Device(
        "PCI0",
        [
            Name("_HID", EisaId("PNP0A08")),  # PCI Express root bridge
            Name("_CID", EisaId("PNP0A03")),  # compatible: PCI root bridge
            Name("_SEG", pci.segment),
            Name("_BBN", pci.bus_first),
            Name("_UID", 0),
            Name("_CRS", ResourceTemplate(windows)),
            osc,
        ],
    )


def _motherboard(p: AcpiPlatform) -> Device:
    """PNP0C02 claims the address ranges no other device does, so the OS keeps out:
    ECAM (Linux accepts MCFG only if its area is reserved like this) and the ACPI
    register page."""
    ranges: list[aml.Aml] = [Memory32Fixed(p.power_base, platform.ACPI_REGS_SIZE)]
    if p.pci:
        ecam_size = (p.pci.bus_last - p.pci.bus_first + 1) << 20  # 1 MiB per bus
        ranges.insert(0, Memory32Fixed(p.pci.ecam_base, ecam_size))
    return Device(
        "MRES",
        [Name("_HID", EisaId("PNP0C02")), Name("_UID", 0), Name("_CRS", ResourceTemplate(ranges))],
    )


def _ged(p: AcpiPlatform) -> Device:
    """Generic Event Device (§5.6.9): its interrupt runs _EVT, which reads (and so
    clears) the latched events, notifies the power button and scans the CPUs."""
    event_reg = p.power_base + acpi_power.GED_EVENT
    return Device(
        "GED",
        [
            Name("_HID", String("ACPI0013")),
            Name("_UID", 0),
            # Level-triggered, active-high: the line stays up while an event is latched.
            Name("_CRS", ResourceTemplate([Interrupt([p.power_irq])])),
            OperationRegion("EREG", aml.SYSTEM_MEMORY, event_reg, acpi_power.GED_EVENT_SIZE),
            aml.Field("EREG", [("EVTS", 8 * acpi_power.GED_EVENT_SIZE)], access=aml.DWORD_ACC),
            Method(
                "_EVT",
                1,
                [
                    Store(aml.NameRef("EVTS"), Local(0)),
                    If(
                        And(Local(0), acpi_power.GED_POWER_BUTTON),
                        [Notify(POWER_BUTTON_PATH, POWER_BUTTON_NOTIFY)],
                    ),
                    If(And(Local(0), acpi_power.GED_CPU_HOTPLUG), [Call(CPU_SCAN_PATH)]),
                ],
                serialized=True,
            ),
        ],
    )


def _legacy_devices(p: AcpiPlatform) -> list[aml.Aml]:
    devices: list[aml.Aml] = []
    if p.serial:
        port = platform.COM1_PORT
        crs = [IO(port, port, 1, platform.COM1_PORT_SIZE), IRQNoFlags([platform.COM1_IRQ])]
        devices.append(
            Device(
                "COM1",
                [
                    Name("_HID", EisaId("PNP0501")),  # 16550A-compatible UART
                    Name("_UID", 1),
                    Name("_CRS", ResourceTemplate(crs)),
                ],
            )
        )
    if p.rtc:
        port = platform.RTC_PORT
        crs = [IO(port, port, 1, platform.RTC_PORT_SIZE), IRQNoFlags([platform.RTC_IRQ])]
        devices.append(
            Device("RTC", [Name("_HID", EisaId("PNP0B00")), Name("_CRS", ResourceTemplate(crs))])
        )
    if p.i8042:
        crs = [
            IO(platform.I8042_DATA_PORT, platform.I8042_DATA_PORT, 1, 1),
            IO(platform.I8042_CMD_PORT, platform.I8042_CMD_PORT, 1, 1),
            IRQNoFlags([platform.I8042_KBD_IRQ]),
        ]
        devices.append(
            Device("KBD", [Name("_HID", EisaId("PNP0303")), Name("_CRS", ResourceTemplate(crs))])
        )
    return devices


def _cpu_name(i: int) -> str:
    return f"C{i:03X}"


def _processors(p: AcpiPlatform) -> list[aml.Aml]:
    """Processor devices (§8.4), _UID matching the MADT's processor UIDs, hot-pluggable
    (§6.3) through the status bytes of `xenopus.devices.cpu_hotplug`: each device's own
    byte is its field CSTS (ENABLED, INSERT, REMOVE read; EJECT and the acknowledgements
    written), and `CSCN` notifies every device with an event pending."""
    out: list[aml.Aml] = [
        OperationRegion("CPHR", aml.SYSTEM_MEMORY, p.cpu_hotplug_base, p.vcpus),
    ]
    scan: list[aml.Aml] = []
    for i in range(p.vcpus):
        name = _cpu_name(i)
        sts = f"\\_SB.{name}.CSTS"
        # §6.2.10 _MAT: the MADT entry as it is once the vCPU is present, Enabled (Linux
        # maps the hot-added processor's APIC ID from it, processor_core.c map_mat_entry;
        # the MADT's own entry of an offline vCPU is not Enabled).
        mat = MadtLocalApic(type=MADT_LOCAL_APIC, length=ctypes.sizeof(MadtLocalApic),
                            processor_uid=i, apic_id=i, flags=LAPIC_ENABLED)
        body: list[aml.Aml] = [
            Name("_HID", String("ACPI0007")),
            Name("_UID", i),
            # ReservedField up to byte i: the field is this vCPU's status byte alone.
            aml.Field("\\_SB.CPHR", [(None, 8 * i), ("CSTS", 8)] if i else [("CSTS", 8)],
                      access=aml.BYTE_ACC, update=aml.WRITE_AS_ZEROS),
            Method("_STA", 0, [If(And(aml.NameRef("CSTS"), cpu_hotplug.ENABLED),
                                  [Return(STA_PRESENT_ENABLED)]),
                               Return(0)]),
            Name("_MAT", Buffer(bytes(mat))),
        ]
        if i != cpu_hotplug.BOOT_VCPU:
            body.append(Method("_EJ0", 1, [Store(cpu_hotplug.EJECT, "CSTS")]))
            scan += [
                If(And(aml.NameRef(sts), cpu_hotplug.INSERT),
                   [Notify(f"\\_SB.{name}", NOTIFY_DEVICE_CHECK),
                    Store(cpu_hotplug.INSERT, sts)]),
                If(And(aml.NameRef(sts), cpu_hotplug.REMOVE),
                   [Notify(f"\\_SB.{name}", NOTIFY_EJECT_REQUEST),
                    Store(cpu_hotplug.REMOVE, sts)]),
            ]
        out.append(Device(name, body))
    # Acknowledge after notifying: an event the host raises meanwhile latches the GED
    # again, so a later scan sees it.
    out.append(Method("CSCN", 0, scan, serialized=True))
    return out


def dsdt_aml(p: AcpiPlatform) -> bytes:
    """The DSDT's definition block body (AML after the header)."""
    sb: list[aml.Aml] = _processors(p)
    if p.pci:
        sb.append(_pci_root(p.pci))
    sb.append(_motherboard(p))
    sb += _legacy_devices(p)
    sb.append(Device("PWRB", [Name("_HID", EisaId("PNP0C0C")), Name("_UID", 0)]))
    sb.append(_ged(p))
    s5 = acpi_power.SLP_TYP_S5
    body: list[aml.Aml] = [
        Scope("\\_SB", sb),
        # §7.4.2.4: SLP_TYPa, SLP_TYPb; the hardware-reduced sleep control register
        # takes SLP_TYPa.
        Name("\\_S5", Package([s5, s5, 0, 0])),
    ]
    return b"".join(t.encode() for t in body)


# --- fixed tables --------------------------------------------------------------------


def _gas(address: int) -> Gas:
    return Gas(
        space_id=GAS_SYSTEM_MEMORY, bit_width=8, bit_offset=0,
        access_size=GAS_ACCESS_BYTE, address=address,
    )  # fmt: skip


def fadt(p: AcpiPlatform, dsdt_address: int) -> bytes:
    boot_arch = BOOT_ARCH_VGA_NOT_PRESENT
    if p.i8042:
        boot_arch |= BOOT_ARCH_8042
    if not p.rtc:
        boot_arch |= BOOT_ARCH_CMOS_RTC_NOT_PRESENT
    t = Fadt(
        header=_header(b"FACP", 0, FADT_REVISION),
        # No FACS: optional on hardware-reduced platforms (§5.2.10).
        dsdt=dsdt_address,
        # Unused on a hardware-reduced platform, but Linux sets the SCI up from this
        # line: name the GED's, so the two agree (level, active-high: the MADT override).
        sci_int=p.power_irq,
        century=RTC_CENTURY_INDEX if p.rtc else 0,
        iapc_boot_arch=boot_arch,
        flags=FADT_WBINVD
        | FADT_PWR_BUTTON
        | FADT_SLP_BUTTON
        | FADT_RESET_REG_SUP
        | FADT_HW_REDUCED_ACPI,
        reset_reg=_gas(p.power_base + acpi_power.RESET),
        reset_value=acpi_power.RESET_VALUE,
        minor_version=FADT_MINOR_REVISION,
        x_dsdt=dsdt_address,
        sleep_control_reg=_gas(p.power_base + acpi_power.SLEEP_CONTROL),
        sleep_status_reg=_gas(p.power_base + acpi_power.SLEEP_STATUS),
        hypervisor_vendor=HYPERVISOR_VENDOR,
    )
    return _finish(t)


def madt(p: AcpiPlatform) -> bytes:
    if not 1 <= p.vcpus <= 255:
        raise ValueError(f"MADT: {p.vcpus} vCPUs; xAPIC entries cover 1-255")
    entries = bytearray()

    def add(entry: ctypes.Structure) -> None:
        entry.type = _MADT_TYPES[type(entry)]
        entry.length = ctypes.sizeof(entry)
        entries.extend(bytes(entry))

    online = p.vcpus if p.online is None else p.online
    for i in range(p.vcpus):
        flags = LAPIC_ENABLED if i < online else LAPIC_ONLINE_CAPABLE
        add(MadtLocalApic(processor_uid=i, apic_id=i, flags=flags))
    if p.io_apic:
        # §5.2.12.3 I/O APIC structure; §5.2.12.5 Interrupt Source Overrides map ISA IRQs
        # onto GSIs, which exist only as IO-APIC inputs (§5.2.13), so both or neither.
        add(
            MadtIoApic(
                io_apic_id=platform.IOAPIC_ID,
                address=platform.IOAPIC_BASE,
                gsi_base=platform.IOAPIC_GSI_BASE,
            )
        )
        for o in platform.ISA_OVERRIDES:
            add(MadtIntSourceOverride(bus=0, source=o.irq, gsi=o.gsi, flags=o.flags))
    add(MadtLocalApicNmi(processor_uid=ALL_PROCESSORS, flags=0, lint=NMI_LINT))
    t = MadtHeader(
        header=_header(b"APIC", 0, MADT_REVISION),
        lapic_address=platform.LAPIC_BASE,
        flags=MADT_PCAT_COMPAT,
    )
    return _finish(t, bytes(entries))


_MADT_TYPES: dict[type, int] = {
    MadtLocalApic: MADT_LOCAL_APIC,
    MadtIoApic: MADT_IO_APIC,
    MadtIntSourceOverride: MADT_INT_SOURCE_OVERRIDE,
    MadtLocalApicNmi: MADT_LOCAL_APIC_NMI,
}


def mcfg(pci: AcpiPci) -> bytes:
    alloc = McfgAllocation(
        base_address=pci.ecam_base,
        segment=pci.segment,
        start_bus=pci.bus_first,
        end_bus=pci.bus_last,
    )
    return _sdt(b"MCFG", MCFG_REVISION, bytes(MCFG_RESERVED) + bytes(alloc))


def xsdt(addresses: list[int]) -> bytes:
    return _sdt(b"XSDT", XSDT_REVISION, b"".join(a.to_bytes(8, "little") for a in addresses))


def rsdp(xsdt_address: int) -> bytes:
    r = Rsdp(
        signature=b"RSD PTR ",
        oem_id=OEM_ID,
        revision=RSDP_REVISION,
        length=ctypes.sizeof(Rsdp),
        xsdt_address=xsdt_address,
    )
    data = bytearray(bytes(r))
    data[Rsdp.checksum.offset] = checksum(data[:RSDP_V1_LENGTH])
    data[Rsdp.extended_checksum.offset] = checksum(data)
    return bytes(data)


def _align(value: int) -> int:
    return -(-value // TABLE_ALIGN) * TABLE_ALIGN


def build_tables(p: AcpiPlatform, base: int = platform.ACPI_TABLES_BASE) -> AcpiTables:
    """Build and place every table from `base`; the RSDP comes first."""
    dsdt = _sdt(b"DSDT", DSDT_REVISION, dsdt_aml(p))
    # Tables the XSDT lists, in the order they are placed; FADT first (§5.2.8).
    listed: list[tuple[str, bytes | None]] = [("FACP", None), ("APIC", madt(p))]
    if p.pci:
        listed.append(("MCFG", mcfg(p.pci)))

    at = base
    rsdp_at = at
    at = _align(at + ctypes.sizeof(Rsdp))
    xsdt_at = at
    at = _align(at + ctypes.sizeof(TableHeader) + 8 * len(listed))
    dsdt_at = at
    at = _align(at + len(dsdt))
    placed: list[Table] = []
    for sig, data in listed:
        if data is None:  # the FADT, now that the DSDT has an address
            data = fadt(p, dsdt_at)
        placed.append(Table(sig, at, data))
        at = _align(at + len(data))

    tables = [
        Table("RSDP", rsdp_at, rsdp(xsdt_at)),
        Table("XSDT", xsdt_at, xsdt([t.address for t in placed])),
        Table("DSDT", dsdt_at, dsdt),
        *placed,
    ]
    end = max(t.address + len(t.data) for t in tables)
    if base == platform.ACPI_TABLES_BASE and end > base + platform.ACPI_TABLES_SIZE:
        raise ValueError(
            f"ACPI tables need {end - base} bytes; only {platform.ACPI_TABLES_SIZE} reserved"
        )
    return AcpiTables(base=base, rsdp_address=rsdp_at, tables=tables)


def install(memory: GuestMemory, p: AcpiPlatform) -> int:
    """Write the tables at ACPI_TABLES_BASE; returns the RSDP's guest-physical address
    (for `load_kernel(..., rsdp_paddr=...)`)."""
    tables = build_tables(p)
    memory.write(tables.base, tables.image())
    return tables.rsdp_address


def installed_rsdp() -> int:
    """Where `install` puts the RSDP (first, at ACPI_TABLES_BASE): a guest whose RAM is
    about to be replaced by a saved image's, tables included, is built without writing
    them and still tells its kernel loader where they are."""
    return platform.ACPI_TABLES_BASE
