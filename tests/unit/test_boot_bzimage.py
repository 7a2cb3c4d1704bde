"""Linux boot protocol tests on a bzImage built here.

Offsets are the literal ones of Documentation/arch/x86/boot.rst ("The Real-Mode Kernel
Header") and Documentation/arch/x86/zero-page.rst; the entry state is boot.rst's
"64-bit Boot Protocol"; page-table bits are from the Intel SDM vol. 3A §4.5.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest

from tests.unit import boothelp
from tests.unit.boothelp import refused
from xenopus.boot import BootImageError, load_kernel
from xenopus.boot.bzimage import BootParams, SetupHeader
from xenopus.memory.guest import GuestMemory

MiB = 1 << 20
PAYLOAD = os.urandom(0x3000) + b"END-OF-KERNEL"


def build_bzimage(
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    boot_flag: int = 0xAA55,
    loadflags: int = 0x01,  # LOADED_HIGH
    xloadflags: int = 0x01,  # XLF_KERNEL_64
    relocatable: int = 1,
    kernel_alignment: int = 0x200000,
    pref_address: int = 0x1000000,
    init_size: int = 0x800000,
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFFFFFF,
    header_len: int = 0x6A,  # byte at 0x201: the header ends at 0x202 + this = 0x26C
    payload: bytes = PAYLOAD,
) -> bytes:
    real = bytearray((max(setup_sects, 1) if setup_sects else 4) * 512 + 512)
    struct.pack_into("<B", real, 0x1F1, setup_sects)
    struct.pack_into("<H", real, 0x1FA, 0xFFFF)
    struct.pack_into("<H", real, 0x1FE, boot_flag)
    real[0x200:0x202] = bytes([0xEB, header_len])  # jmp short past the header
    real[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", real, 0x206, version)
    struct.pack_into("<B", real, 0x211, loadflags)
    struct.pack_into("<I", real, 0x214, 0x100000)  # code32_start default
    struct.pack_into("<I", real, 0x22C, initrd_addr_max)
    struct.pack_into("<I", real, 0x230, kernel_alignment)
    struct.pack_into("<B", real, 0x234, relocatable)
    struct.pack_into("<H", real, 0x236, xloadflags)
    struct.pack_into("<I", real, 0x238, cmdline_size)
    struct.pack_into("<Q", real, 0x258, pref_address)
    struct.pack_into("<I", real, 0x260, init_size)
    return bytes(real) + payload


@pytest.fixture
def mem():
    with GuestMemory.create(128 * MiB) as m:
        yield m


def write(tmp_path: Path, data: bytes, name: str = "bzImage") -> Path:
    return boothelp.write(tmp_path, data, name)


def test_struct_sizes() -> None:
    # zero-page.rst: boot_params is one 4 KiB page; boot.rst: header 0x1F1..0x26C (2.15).
    assert ctypes.sizeof(BootParams) == 4096
    assert ctypes.sizeof(SetupHeader) == 0x26C - 0x1F1
    assert BootParams.e820_table.offset == 0x2D0


def test_zero_page_fields(mem: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, build_bzimage())
    initrd = write(tmp_path, os.urandom(5000), "initrd")
    info = load_kernel(mem, kernel, ramdisk=initrd, cmdline="console=ttyS0 quiet")
    assert info.protocol == "linux"
    zp = info.cpu.gprs["rsi"]
    u8, u16, u32, u64 = mem.read_u8, mem.read_u16, mem.read_u32, mem.read_u64
    # The setup header is copied from the image...
    assert u8(zp + 0x1F1) == 4  # setup_sects
    assert u16(zp + 0x1FE) == 0xAA55  # boot_flag
    assert mem.read(zp + 0x202, 4) == b"HdrS"
    assert u16(zp + 0x206) == 0x020F  # version
    assert u16(zp + 0x236) == 0x01  # xloadflags
    assert u32(zp + 0x238) == 2047  # cmdline_size
    assert u64(zp + 0x258) == 0x1000000  # pref_address
    assert u32(zp + 0x260) == 0x800000  # init_size
    # ...and the loader's fields are filled in.
    assert u8(zp + 0x210) == 0xFF  # type_of_loader: undefined
    assert u8(zp + 0x211) & 0x01  # LOADED_HIGH
    assert u8(zp + 0x211) & 0x80  # CAN_USE_HEAP
    assert u16(zp + 0x224) != 0  # heap_end_ptr
    assert u32(zp + 0x214) == 0x1000000  # code32_start = where the kernel went
    cmd = u32(zp + 0x228) | u32(zp + 0x0C8) << 32  # cmd_line_ptr, ext_cmd_line_ptr
    assert mem.read(cmd, 20) == b"console=ttyS0 quiet\0"
    assert cmd < 0xA0000  # boot.rst: "anywhere between the end of the setup heap and 0xA0000"
    rd = u32(zp + 0x218) | u32(zp + 0x0C0) << 32  # ramdisk_image, ext_ramdisk_image
    size = u32(zp + 0x21C) | u32(zp + 0x0C4) << 32  # ramdisk_size, ext_ramdisk_size
    assert size == 5000
    assert mem.read(rd, size) == initrd.read_bytes()
    assert info.ramdisk_range == (rd, rd + size)
    # e820_entries at 0x1E8, e820_table at 0x2D0, 20-byte packed entries.
    n = u8(zp + 0x1E8)
    table = [(u64(zp + 0x2D0 + 20 * i), u64(zp + 0x2D8 + 20 * i), u32(zp + 0x2E0 + 20 * i))
             for i in range(n)]  # fmt: skip
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 127 * MiB, 1)]


def test_kernel_loaded_and_entered_at_64bit_entry(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_bzimage()))
    assert mem.read(0x1000000, len(PAYLOAD)) == PAYLOAD  # protected-mode code at (4+1)*512
    assert info.entry == info.cpu.rip == 0x1000000 + 0x200
    assert info.kernel_range == (0x1000000, 0x1800000)  # init_size


@pytest.mark.parametrize(
    ("kw", "addr"),
    [
        ({"pref_address": 0x1100000}, 0x1200000),  # aligned up to kernel_alignment
        ({"relocatable": 0}, 0x100000),
        ({"setup_sects": 0}, 0x1000000),  # 0 means 4
    ],
)
def test_load_address(mem: GuestMemory, tmp_path: Path, kw: dict, addr: int) -> None:
    info = load_kernel(mem, write(tmp_path, build_bzimage(**kw)))
    assert info.kernel_range[0] == addr
    assert mem.read(addr, len(PAYLOAD)) == PAYLOAD
    assert mem.read_u32(info.cpu.gprs["rsi"] + 0x214) == addr


def test_initrd_below_initrd_addr_max(mem: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, build_bzimage(initrd_addr_max=0x2FFFFFF))
    initrd = write(tmp_path, b"i" * 100000, "initrd")
    info = load_kernel(mem, kernel, ramdisk=initrd)
    start, end = info.ramdisk_range
    assert start % 4096 == 0
    assert end - 1 <= 0x2FFFFFF  # "the address of the highest safe byte"
    assert end > 0x2FFFFFF - 4096  # as high as it goes
    assert not (start < info.kernel_range[1] and info.kernel_range[0] < end)


def test_initrd_avoids_kernel_at_top(tmp_path: Path) -> None:
    with GuestMemory.create(64 * MiB) as mem:
        kernel = write(tmp_path, build_bzimage(pref_address=0x3000000, init_size=0x1000000))
        initrd = write(tmp_path, b"i" * 100000, "initrd")
        info = load_kernel(mem, kernel, ramdisk=initrd)
        assert info.kernel_range == (0x3000000, 0x4000000)
        assert info.ramdisk_range[1] <= 0x3000000
        assert mem.read(info.ramdisk_range[0], 100000) == b"i" * 100000


def walk(mem: GuestMemory, cr3: int, va: int) -> int:
    """4-level walk (SDM 3A §4.5), 2 MiB or 4 KiB pages; asserts present entries."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        e = mem.read_u64(table + 8 * ((va >> shift) & 0x1FF))
        assert e & 1, f"not present at level {level} for {va:#x}"
        if shift in (30, 21) and e & 0x80:  # PS: a 1 GiB or 2 MiB page
            return (e & ((1 << 52) - 1) & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = e & 0x000FFFFFFFFFF000
    return table | (va & 0xFFF)


def test_entry_state_and_identity_map(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_bzimage()), cmdline="x")
    cpu = info.cpu
    assert cpu.cr0 & 1 and cpu.cr0 & (1 << 31)  # PE, PG
    assert cpu.cr4 & (1 << 5)  # PAE
    assert cpu.efer & (1 << 8) and cpu.efer & (1 << 10)  # LME, LMA
    assert not cpu.rflags & (1 << 9)  # interrupts disabled
    assert cpu.code.selector == 0x10 and cpu.data.selector == 0x18  # __BOOT_CS, __BOOT_DS
    assert cpu.code.l and not cpu.code.db
    gdt = cpu.gdt_base
    assert cpu.gdt_limit >= 0x1F
    assert mem.read_u64(gdt + 0x10) == 0x00AF9B000000FFFF  # flat 64-bit code, execute/read
    assert mem.read_u64(gdt + 0x18) == 0x00CF93000000FFFF  # flat data, read/write
    zp = cpu.gprs["rsi"]
    cmd = mem.read_u32(zp + 0x228)
    start, end = info.kernel_range
    for va in (start, start + 0x200, end - 1, zp, zp + 4095, cmd, 0xFFFFFFFF):
        assert walk(mem, cpu.cr3, va) == va


def test_acpi_rsdp_addr(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_bzimage()), rsdp_paddr=0xE0000)
    assert mem.read_u64(info.cpu.gprs["rsi"] + 0x070) == 0xE0000  # acpi_rsdp_addr


# --- refusals -------------------------------------------------------------------------


def test_refuses_old_protocol(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_bzimage(version=0x0205)), "2.05", "too old")


@pytest.mark.parametrize("kw", [{"xloadflags": 0}, {"version": 0x020B}])
def test_refuses_no_64bit_entry(mem: GuestMemory, tmp_path: Path, kw: dict) -> None:
    refused(mem, write(tmp_path, build_bzimage(**kw)), "64-bit entry", "XLF_KERNEL_64")


def test_refuses_bad_boot_flag(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_bzimage(boot_flag=0x1234)), "boot_flag", "0x1234")


def test_refuses_zimage(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_bzimage(loadflags=0)), "zImage")


def test_refuses_oversized_setup_header(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_bzimage(header_len=0xF0)), "corrupt", "setup header")


def test_refuses_cmdline_over_cmdline_size(mem: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, build_bzimage(cmdline_size=16))
    load_kernel(mem, kernel, cmdline="x" * 16)  # cmdline_size excludes the NUL
    refused(mem, kernel, "command line too long", "17", cmdline="x" * 17)


def test_refuses_kernel_too_big(mem: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, build_bzimage(init_size=0x10000000))
    refused(mem, kernel, "kernel too big for guest memory", "init_size")


def test_refuses_truncated(mem: GuestMemory, tmp_path: Path) -> None:
    image = build_bzimage()
    refused(mem, write(tmp_path, image[: 5 * 512]), "truncated", "protected-mode kernel")
    refused(mem, write(tmp_path, image[:0x220], "short"), "truncated")


def test_every_truncation_is_refused_cleanly(mem: GuestMemory, tmp_path: Path) -> None:
    image = build_bzimage()
    for n in list(range(1, 0x280, 5)) + list(range(0x280, 5 * 512 + 1, 97)):
        p = write(tmp_path, image[:n], f"cut{n}")
        with pytest.raises(BootImageError) as e:
            load_kernel(mem, p)
        assert str(p) in str(e.value)


def test_refuses_ramdisk_too_big(mem: GuestMemory, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(200 * MiB)
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, write(tmp_path, build_bzimage()), ramdisk=initrd)
    assert str(initrd) in str(e.value) and "too big" in str(e.value)


def test_refuses_ramdisk_overlapping_kernel(tmp_path: Path) -> None:
    # A 16 MiB initrd: above the kernel only 8 MiB remain, below it 15 MiB.
    with GuestMemory.create(32 * MiB) as mem:
        kernel = write(tmp_path, build_bzimage(pref_address=0x1000000, init_size=0x800000))
        initrd = tmp_path / "initrd"
        with open(initrd, "wb") as f:
            f.truncate(16 * MiB)
        with pytest.raises(BootImageError) as e:
            load_kernel(mem, kernel, ramdisk=initrd)
        assert str(initrd) in str(e.value) and "overlaps the kernel" in str(e.value)
