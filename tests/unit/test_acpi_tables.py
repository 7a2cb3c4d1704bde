"""ACPI tables: layouts against the offsets of ACPI 6.3 §5.2 (and PCI Firmware 3.0 for
MCFG), checksums, placement in guest memory, and acpica's own tools (`iasl -d`,
`acpiexec`) reading every table without an error or a warning."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from xenopus.acpi import AcpiPci, AcpiPlatform, build_tables, install
from xenopus.acpi import tables as t
from xenopus.devices import acpi_power, platform
from xenopus.memory.guest import GuestMemory

GiB = 1 << 30
FULL = AcpiPlatform(vcpus=4, pci=AcpiPci.default(2 * GiB))
BARE = AcpiPlatform(vcpus=1, pci=None, serial=False, rtc=False, i8042=False)
SHIM = AcpiPlatform(vcpus=1, pci=AcpiPci.default(GiB), io_apic=False)  # a PV shim domain's

INSTALL_HINT = "acpica-tools is missing: scripts/install-deps (run by `make test`) installs it"


def u8(data: bytes, off: int) -> int:
    return data[off]


def u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0]


def u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def u64(data: bytes, off: int) -> int:
    return struct.unpack_from("<Q", data, off)[0]


def test_struct_sizes_match_the_spec() -> None:
    assert ctypes.sizeof(t.TableHeader) == 36  # §5.2.6
    assert ctypes.sizeof(t.Rsdp) == 36  # §5.2.5.3
    assert ctypes.sizeof(t.Gas) == 12  # §5.2.3.2
    assert ctypes.sizeof(t.Fadt) == 276  # §5.2.9, through Hypervisor Vendor Identity
    assert ctypes.sizeof(t.MadtLocalApic) == 8  # §5.2.12.2
    assert ctypes.sizeof(t.MadtIoApic) == 12  # §5.2.12.3
    assert ctypes.sizeof(t.MadtIntSourceOverride) == 10  # §5.2.12.5
    assert ctypes.sizeof(t.MadtLocalApicNmi) == 6  # §5.2.12.7
    assert ctypes.sizeof(t.McfgAllocation) == 16  # PCI Firmware 3.0 table 4-3


def test_every_checksum_is_zero_mod_256() -> None:
    for p in (FULL, BARE):
        for table in build_tables(p).tables:
            if table.signature == "RSDP":
                continue
            assert sum(table.data) % 256 == 0, table.signature
            assert u32(table.data, 4) == len(table.data), table.signature


def test_header_fields_at_spec_offsets() -> None:
    dsdt = build_tables(FULL).get("DSDT").data
    assert dsdt[0:4] == b"DSDT"
    assert u8(dsdt, 8) == 2  # revision 2: 64-bit integers in AML
    assert dsdt[10:16] == b"XENOPS"  # OEMID at 10
    assert dsdt[16:24] == b"XENOPUS "  # OEM Table ID at 16
    assert dsdt[28:32] == b"XNPS"  # Creator ID at 28


def test_rsdp_layout() -> None:
    tables = build_tables(FULL)
    rsdp = tables.get("RSDP")
    d = rsdp.data
    assert rsdp.address == tables.rsdp_address == platform.ACPI_TABLES_BASE
    assert rsdp.address % 16 == 0  # §5.2.5.1: on a 16-byte boundary
    assert len(d) == 36 and d[:8] == b"RSD PTR "
    assert sum(d[:20]) % 256 == 0  # checksum over the ACPI 1.0 part
    assert sum(d) % 256 == 0  # extended checksum over everything
    assert u8(d, 15) == 2  # revision
    assert u32(d, 20) == 36  # length
    assert u64(d, 24) == tables.get("XSDT").address  # XsdtAddress at 24


def test_xsdt_lists_the_tables() -> None:
    tables = build_tables(FULL)
    x = tables.get("XSDT").data
    addresses = [u64(x, off) for off in range(36, len(x), 8)]
    by_address = {tab.address: tab.signature for tab in tables.tables}
    assert [by_address[a] for a in addresses] == ["FACP", "APIC", "MCFG"]
    bare = build_tables(BARE)
    x = bare.get("XSDT").data
    assert len(x) == 36 + 2 * 8  # no MCFG without PCI


def test_fadt_fields() -> None:
    tables = build_tables(FULL)
    f = tables.get("FACP").data
    regs = platform.ACPI_REGS_BASE
    assert len(f) == 276 and u8(f, 8) == 6 and u8(f, 131) == 3  # FADT 6.3
    flags = u32(f, 112)
    assert flags & (1 << 20)  # HW_REDUCED_ACPI
    assert flags & (1 << 10)  # RESET_REG_SUP
    assert u32(f, 40) == u64(f, 140) == tables.get("DSDT").address  # DSDT, X_DSDT
    # No legacy PM blocks: PM1a_EVT_BLK (56) through GPE1_BLK (84), and X_ forms.
    assert f[56:88] == bytes(32) and f[148:244] == bytes(96)

    def gas(off: int) -> tuple[int, int, int, int, int]:
        return struct.unpack_from("<BBBBQ", f, off)

    # (space 0 = SystemMemory, 8 bits, offset 0, access size 1 = byte, address)
    assert gas(116) == (0, 8, 0, 1, regs + acpi_power.RESET)
    assert u8(f, 128) == acpi_power.RESET_VALUE
    assert gas(244) == (0, 8, 0, 1, regs + acpi_power.SLEEP_CONTROL)
    assert gas(256) == (0, 8, 0, 1, regs + acpi_power.SLEEP_STATUS)
    assert f[268:276] == b"Xenopus\0"  # Hypervisor Vendor Identity
    assert u16(f, 46) == platform.ACPI_GED_IRQ  # SCI_INT


def test_fadt_boot_arch_follows_the_devices() -> None:
    # §5.2.9.3: bit 1 "8042", bit 2 "VGA Not Present", bit 5 "CMOS RTC Not Present".
    full = u16(build_tables(FULL).get("FACP").data, 109)
    bare = u16(build_tables(BARE).get("FACP").data, 109)
    assert full & 0b10 and not full & (1 << 5) and full & 0b100
    assert not bare & 0b10 and bare & (1 << 5)
    assert u8(build_tables(FULL).get("FACP").data, 108) == 0x32  # RTC century index


def madt_entries(d: bytes) -> list[tuple[int, bytes]]:
    out = []
    off = 44
    while off < len(d):
        kind, length = d[off], d[off + 1]
        assert length >= 2
        out.append((kind, d[off : off + length]))
        off += length
    assert off == len(d)
    return out


@pytest.mark.parametrize("vcpus", [1, 4, 255])
def test_madt(vcpus: int) -> None:
    d = build_tables(AcpiPlatform(vcpus=vcpus)).get("APIC").data
    assert u32(d, 36) == 0xFEE00000  # Local Interrupt Controller Address
    assert u32(d, 40) & 1  # PCAT_COMPAT
    entries = madt_entries(d)
    lapics = [e for k, e in entries if k == 0]
    assert len(lapics) == vcpus
    for i, e in enumerate(lapics):
        assert len(e) == 8 and e[2] == i and e[3] == i and u32(e, 4) & 1  # UID, id, Enabled
    (ioapic,) = [e for k, e in entries if k == 1]
    assert len(ioapic) == 12 and u32(ioapic, 4) == 0xFEC00000 and u32(ioapic, 8) == 0
    overrides = {e[3]: (u32(e, 4), u16(e, 8)) for k, e in entries if k == 2}
    assert all(len(e) == 10 and e[2] == 0 for k, e in entries if k == 2)  # bus 0 = ISA
    assert overrides[0] == (2, 0)  # IRQ0 → GSI2, conforming
    assert overrides[9] == (9, 0b1101)  # level (11) active-high (01)
    (nmi,) = [e for k, e in entries if k == 4]
    assert len(nmi) == 6 and nmi[2] == 0xFF and nmi[5] == 1  # all CPUs, LINT1


def test_madt_lists_the_vcpus_for_hotplug_online_capable(tmp_path: Path) -> None:
    """vCPUs past `online` (maxvcpus beyond vcpus) are not Enabled but Online Capable
    (ACPI 6.3 table 5-47; Linux skips a disabled LAPIC without it in ACPI 6.3 tables), and
    an enabled one must not carry the bit; iasl reads both flags back."""
    p = AcpiPlatform(vcpus=3, online=1)
    lapics = [e for k, e in madt_entries(build_tables(p).get("APIC").data) if k == 0]
    assert [u32(e, 4) for e in lapics] == [0b01, 0b10, 0b10]
    files = write_tables(p, tmp_path)
    run([tool("iasl"), "-d", files["APIC"].name], tmp_path)
    dsl = files["APIC"].with_suffix(".dsl").read_text()
    enabled = re.findall(r"Processor Enabled : (\d)", dsl)
    capable = re.findall(r"Runtime Online Capable : (\d)", dsl)
    assert (enabled, capable) == (["1", "0", "0"], ["0", "1", "1"]), dsl


def test_madt_without_an_io_apic() -> None:
    """io_apic=False (a PV shim domain's): no I/O APIC structure and no ISA overrides,
    which name its GSIs; the LAPICs and the LAPIC NMI stay."""
    with_ioapic = madt_entries(build_tables(AcpiPlatform(vcpus=2)).get("APIC").data)
    d = build_tables(AcpiPlatform(vcpus=2, io_apic=False)).get("APIC").data
    kinds = [k for k, _ in madt_entries(d)]
    assert kinds == [0, 0, 4], kinds
    assert {1, 2} <= {k for k, _ in with_ioapic}
    assert t.checksum(d) == 0 and u32(d, 4) == len(d)


def test_madt_refuses_too_many_cpus() -> None:
    with pytest.raises(ValueError):
        build_tables(AcpiPlatform(vcpus=256))


def test_mcfg() -> None:
    d = build_tables(FULL).get("MCFG").data
    assert len(d) == 44 + 16
    assert d[36:44] == bytes(8)
    assert u64(d, 44) == platform.ECAM_BASE
    assert u16(d, 52) == 0  # segment
    assert (d[54], d[55]) == (0, platform.ECAM_BUSES - 1)


def test_dsdt_carries_s5_and_the_ged() -> None:
    d = build_tables(FULL).get("DSDT").data
    # Name(\_S5, Package(4){5, 5, 0, 0}): SLP_TYP 5 is what the power device powers off on.
    assert acpi_power.SLP_TYP_S5 == 5
    assert b"\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00" in d
    assert b"\x0dACPI0013\x00" in d
    # The GED's event register is the power device's, read as one DWORD.
    event = (platform.ACPI_REGS_BASE + acpi_power.GED_EVENT).to_bytes(4, "little")
    assert b"\x5b\x80EREG\x00\x0c" + event + b"\x0a\x04" in d
    assert b"PCI0" not in build_tables(BARE).get("DSDT").data


def test_tables_fit_the_reserved_window() -> None:
    tables = build_tables(AcpiPlatform(vcpus=255, pci=AcpiPci.default(512 * GiB)))
    end = max(tab.address + len(tab.data) for tab in tables.tables)
    assert end <= platform.ACPI_TABLES_BASE + platform.ACPI_TABLES_SIZE
    # Inside the legacy hole the boot layer's e820 map reserves.
    assert platform.ACPI_TABLES_BASE >= 0x9FC00 and end <= 0x100000


def test_install_lets_a_guest_walk_from_the_rsdp() -> None:
    mem = GuestMemory.create(16 << 20)
    rsdp = install(mem, FULL)
    assert rsdp == platform.ACPI_TABLES_BASE
    xsdt = u64(mem.read(rsdp, 36), 24)
    head = mem.read(xsdt, 36)
    assert head[:4] == b"XSDT"
    entries = mem.read(xsdt + 36, u32(head, 4) - 36)
    found = {}
    for off in range(0, len(entries), 8):
        addr = u64(entries, off)
        length = u32(mem.read(addr, 8), 4)
        data = mem.read(addr, length)
        assert sum(data) % 256 == 0
        found[data[:4]] = data
    assert set(found) == {b"FACP", b"APIC", b"MCFG"}
    dsdt = mem.read(u64(found[b"FACP"], 140), 36)
    assert dsdt[:4] == b"DSDT"


def test_mmio64_window() -> None:
    assert platform.mmio64_window(2 * GiB) == (64 * GiB, 64 * GiB)
    base, size = platform.mmio64_window(100 * GiB)
    assert base >= 100 * GiB and base % size == 0


# --- acpica ------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, INSTALL_HINT  # fail, not skip: `make test` installs it
    return path


def write_tables(p: AcpiPlatform, where: Path) -> dict[str, Path]:
    files = {}
    for table in build_tables(p).tables:
        if table.signature == "RSDP":
            continue  # not a table with a header: see test_iasl_disassembles_every_table
        path = where / f"{table.signature.lower()}.dat"
        path.write_bytes(table.data)
        files[table.signature] = path
    return files


def run(args: list[str], cwd: Path) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return out


@pytest.mark.parametrize("p", [FULL, BARE, SHIM], ids=["full", "bare", "shim"])
def test_iasl_disassembles_every_table(p: AcpiPlatform, tmp_path: Path) -> None:
    """iasl disassembles every table without an error or a warning. The RSDP is checked
    by test_rsdp_layout instead: acpica cannot load an RSDP from a file at all
    (acfileio.c: "Loading an RSDP is not supported"; its signature is not a valid table
    NameSeg)."""
    iasl = tool("iasl")
    files = write_tables(p, tmp_path)
    assert set(files) >= {"XSDT", "FACP", "DSDT", "APIC"}
    for sig, path in files.items():
        out = run([iasl, "-d", path.name], tmp_path)
        assert not re.search(r"error|warning", out, re.IGNORECASE), f"{sig}:\n{out}"
        dsl = path.with_suffix(".dsl").read_text()
        # iasl marks what it could not decode with "****" lines in the listing.
        assert "****" not in dsl and not re.search(r"error|warning", dsl, re.I), dsl
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert 'Name (_HID, "ACPI0013"' in dsl and "Notify (\\_SB.PWRB, 0x80)" in dsl


def test_dsdt_is_what_iasl_compiles_from_its_own_disassembly(tmp_path: Path) -> None:
    """Round trip: iasl's compilation (optimisations off) of the disassembled DSDT is
    our DSDT byte for byte, except the header's checksum and compiler fields and the
    resource End Tags, where iasl writes a zero checksum (§6.4.2.9 allows both)."""
    iasl = tool("iasl")
    ours = write_tables(FULL, tmp_path)["DSDT"].read_bytes()
    run([iasl, "-d", "dsdt.dat"], tmp_path)
    out = run([iasl, "-oa", "-p", "again", "dsdt.dsl"], tmp_path)
    assert "0 Errors, 0 Warnings" in out, out
    theirs = (tmp_path / "again.aml").read_bytes()
    assert len(theirs) == len(ours)
    header_only = {9, *range(28, 36)}
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            assert i in header_only or (ours[i - 1] == 0x79 and b == 0), f"offset {i}"


def test_acpiexec_loads_the_namespace_and_runs_methods(tmp_path: Path) -> None:
    acpiexec = tool("acpiexec")
    files = write_tables(FULL, tmp_path)
    names = [files[s].name for s in ("DSDT", "FACP", "APIC", "MCFG")]
    commands = "; ".join(
        [
            "evaluate \\_S5",
            "evaluate \\_SB.GED._EVT 9",
            "evaluate \\_SB.PCI0._CRS",
            "evaluate \\_SB.COM1._CRS",
        ]
    )
    out = run([acpiexec, "-b", commands, *names], tmp_path)
    assert not re.search(r"ACPI (Error|Warning)|AE_", out), out
    assert "[Integer] = 0000000000000005" in out  # \_S5's SLP_TYP
    assert "11 Devices" in out  # 4 CPUs, PCI0, MRES, COM1, RTC, KBD, PWRB, GED


def test_processor_devices_are_hot_pluggable_as_iasl_reads_them(tmp_path: Path) -> None:
    """ACPI CPU hotplug in the DSDT, as iasl disassembles it: every processor device's
    _STA reads its own status byte of devices/cpu_hotplug.py (a Field at offset N of the
    region at CPU_HOTPLUG_BASE), its _MAT is its MADT entry Enabled (§6.2.10; Linux maps
    a hot-added CPU's APIC ID from it), every vCPU but the boot one has _EJ0 writing
    EJECT, and the GED's _EVT calls CSCN, which sends Device Check (1) or Eject Request
    (3) and acknowledges (§6.3, §5.6.6)."""
    from xenopus.devices import cpu_hotplug as hp

    p = AcpiPlatform(vcpus=3, online=1)
    files = write_tables(p, tmp_path)
    run([tool("iasl"), "-d", files["DSDT"].name], tmp_path)
    dsl = (tmp_path / "dsdt.dsl").read_text()
    base = platform.CPU_HOTPLUG_BASE
    assert re.search(rf"OperationRegion \(CPHR, SystemMemory, 0x{base:08X}, 0x03\)", dsl), dsl
    devices = dict(re.findall(r"Device \((C00\d)\)\s*\{(.*?)\n        \}", dsl, re.S))
    assert set(devices) == {"C000", "C001", "C002"}
    for i in range(3):
        body = devices[f"C{i:03X}"]
        assert "Field (\\_SB.CPHR, ByteAcc, NoLock, WriteAsZeros)" in body
        assert (f"Offset (0x{i:02X})," in body) == (i > 0) and "CSTS,   8" in body
        assert re.search(r"If \(\(CSTS & One\)\)\s*\{\s*Return \(0x0F\)", body), body
        mat = f"0x00, 0x08, 0x{i:02X}, 0x{i:02X}, 0x01, 0x00, 0x00, 0x00"
        assert mat in body, body  # type 0, length 8, UID i, APIC ID i, Enabled
        assert ("Method (_EJ0, 1" in body) == (i != hp.BOOT_VCPU)
        if i:
            assert f"CSTS = 0x{hp.EJECT:02X}" in body
    for i in (1, 2):
        assert re.search(rf"If \(\(\\_SB.C00{i}.CSTS & 0x0{hp.INSERT}\)\)\s*\{{\s*"
                         rf"Notify \(\\_SB.C00{i}, One\)[^\n]*\n\s*\\_SB.C00{i}.CSTS = "
                         rf"0x0{hp.INSERT}", dsl), dsl
        assert re.search(rf"If \(\(\\_SB.C00{i}.CSTS & 0x0{hp.REMOVE}\)\)\s*\{{\s*"
                         rf"Notify \(\\_SB.C00{i}, 0x03\)[^\n]*\n\s*\\_SB.C00{i}.CSTS = "
                         rf"0x0{hp.REMOVE}", dsl), dsl
    assert re.search(rf"If \(\(Local0 & 0x0{acpi_power.GED_CPU_HOTPLUG}\)\)\s*\{{\s*"
                     r"\\_SB.CSCN \(\)", dsl), dsl


def test_acpiexec_runs_the_hotplug_methods(tmp_path: Path) -> None:
    """acpiexec (its operation regions are plain memory, zero at first) runs _STA, _EJ0,
    _MAT and the scan method of a hot-pluggable vCPU without an error: _STA of a zero
    status byte is 0 (absent), and _MAT is the Enabled LAPIC entry."""
    files = write_tables(AcpiPlatform(vcpus=3, online=1), tmp_path)
    names = [files[s].name for s in ("DSDT", "FACP", "APIC")]
    commands = "; ".join(["evaluate \\_SB.C002._STA", "evaluate \\_SB.C002._EJ0 1",
                          "evaluate \\_SB.CSCN", "evaluate \\_SB.GED._EVT 9",
                          "evaluate \\_SB.C002._MAT"])
    out = run([tool("acpiexec"), "-b", commands, *names], tmp_path)
    assert not re.search(r"ACPI (Error|Warning)|AE_", out), out
    assert re.search(r"C002._STA\n.*\n\s*\[Integer\] = 0000000000000000", out), out
    assert "00 08 02 02 01 00 00 00" in out, out
