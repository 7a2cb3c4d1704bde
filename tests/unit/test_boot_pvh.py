"""PVH loader tests on ELF images built here.

Offsets and constants come from Xen's public headers, not from our own structs:
xen/include/public/arch-x86/hvm/start_info.h (struct layouts, magic),
xen/include/public/elfnote.h (XEN_ELFNOTE_PHYS32_ENTRY = 18), docs/misc/pvh.pandoc
(entry state), and the ELF gABI for the image format.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
from pathlib import Path

import pytest

from tests.unit import boothelp
from tests.unit.boothelp import refused
from xenopus.boot import BootImageError, load_kernel
from xenopus.boot.elf import ElfFile
from xenopus.boot.pvh import find_phys32_entry, parse_pvh
from xenopus.memory.guest import GuestMemory
from xenopus.xen import abi

MiB = 1 << 20
EM_386, EM_X86_64, EM_ARM = 3, 62, 40
PT_LOAD, PT_NOTE = 1, 4
SHT_NOTE, SHT_STRTAB = 7, 3
PHYS32_ENTRY = 18  # elfnote.h

KERNEL_PADDR = 0x1000000
ENTRY = KERNEL_PADDR + 0x10


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note, name and desc padded to 4 bytes (gABI "Note Section")."""
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def build_elf(
    *,
    cls: int = 64,
    machine: int = EM_X86_64,
    notes: bytes | None = None,
    segments: list[tuple[int, bytes, int]] | None = None,
    note_as: str = "segment",
) -> bytes:
    """An executable ELF with PT_LOAD segments (paddr, bytes, memsz) and a note block.

    note_as: "segment" (a PT_NOTE) or "section" (an SHT_NOTE section only).
    p_vaddr is deliberately different from p_paddr: PVH loads at physical addresses.
    """
    if notes is None:
        notes = note(b"Xen\0", PHYS32_ENTRY, struct.pack("<I", ENTRY))
    if segments is None:
        segments = [(KERNEL_PADDR, b"\x90" * 0x40 + b"KERNEL", 0x2000)]
    wide = cls == 64
    ehsize, phentsize, shentsize = (64, 56, 64) if wide else (52, 32, 40)
    phnum = len(segments) + (note_as == "segment")
    off = ehsize + phnum * phentsize
    note_off = off
    off += len(notes)
    body = bytearray(notes)
    seg_offs = []
    for _, data, _ in segments:
        pad = -off % 16
        body += b"\0" * pad
        off += pad
        seg_offs.append(off)
        body += data
        off += len(data)
    phdrs = b""

    def phdr(ptype: int, offset: int, paddr: int, filesz: int, memsz: int, align: int) -> bytes:
        vaddr = (paddr + 0xFFFFFFFF80000000) if wide else (paddr + 0xC0000000) & 0xFFFFFFFF
        if ptype == PT_NOTE:
            vaddr = paddr = 0
        if wide:
            return struct.pack("<IIQQQQQQ", ptype, 5, offset, vaddr, paddr, filesz, memsz, align)
        return struct.pack("<IIIIIIII", ptype, offset, vaddr, paddr, filesz, memsz, 5, align)

    if note_as == "segment":
        phdrs += phdr(PT_NOTE, note_off, 0, len(notes), len(notes), 4)
    for (paddr, data, memsz), o in zip(segments, seg_offs, strict=True):
        phdrs += phdr(PT_LOAD, o, paddr, len(data), memsz, 0x1000)
    shoff = shnum = shstrndx = 0
    shdrs = b""
    if note_as == "section":
        strtab = b"\0.note\0.shstrtab\0"
        pad = -off % 8
        body += b"\0" * pad + strtab
        str_off = off + pad
        off = str_off + len(strtab)
        pad = -off % 8
        body += b"\0" * pad
        shoff = off + pad
        fmt = "<IIQQQQIIQQ" if wide else "<IIIIIIIIII"
        shdrs = struct.pack(fmt, *[0] * 10)
        shdrs += struct.pack(fmt, 1, SHT_NOTE, 2, 0, note_off, len(notes), 0, 0, 4, 0)
        shdrs += struct.pack(fmt, 7, SHT_STRTAB, 0, 0, str_off, len(strtab), 0, 0, 1, 0)
        shnum, shstrndx = 3, 2
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1]) + b"\0" * 9
    if wide:
        ehdr = struct.pack(
            "<16sHHIQQQIHHHHHH", ident, 2, machine, 1, 0xFFFFFFFF81000000, ehsize, shoff, 0,
            ehsize, phentsize, phnum, shentsize, shnum, shstrndx,
        )  # fmt: skip
    else:
        ehdr = struct.pack(
            "<16sHHIIIIIHHHHHH", ident, 2, machine, 1, 0xC1000000, ehsize, shoff, 0,
            ehsize, phentsize, phnum, shentsize, shnum, shstrndx,
        )  # fmt: skip
    return ehdr + phdrs + bytes(body) + shdrs


@pytest.fixture
def mem():
    with GuestMemory.create(64 * MiB) as m:
        yield m


def write(tmp_path: Path, data: bytes, name: str = "vmlinux") -> Path:
    return boothelp.write(tmp_path, data, name)


# --- the PHYS32_ENTRY note ---------------------------------------------------------


@pytest.mark.parametrize("cls", [32, 64])
@pytest.mark.parametrize(
    ("fmt", "value"),
    [("<B", 0xAB), ("<H", 0xBEEF), ("<I", 0xDEADBEEF), ("<Q", 0x123456789ABCDEF0)],
)
@pytest.mark.parametrize("note_as", ["segment", "section"])
def test_phys32_entry_payload_sizes(cls: int, fmt: str, value: int, note_as: str) -> None:
    # Another vendor's note first: only name "Xen" with type 18 counts.
    notes = note(b"GNU\0", 3, b"\1" * 20) + note(b"Xen\0", PHYS32_ENTRY, struct.pack(fmt, value))
    elf = ElfFile(io.BytesIO(build_elf(cls=cls, notes=notes, note_as=note_as)))
    assert elf.elfclass == cls
    assert find_phys32_entry(elf, "x") == value


@pytest.mark.parametrize("fmt", ["<B", "<H"])
def test_parse_short_payload_entry(fmt: str) -> None:
    """1- and 2-byte payloads parse through the whole header check (loadable or not)."""
    data = build_elf(
        notes=note(b"Xen\0", PHYS32_ENTRY, struct.pack(fmt, 0xAB)),
        segments=[(0, b"\x90" * 0x100, 0x100)],
    )
    assert parse_pvh(io.BytesIO(data), "x", len(data)).entry == 0xAB


@pytest.mark.parametrize("cls", [32, 64])
@pytest.mark.parametrize("fmt", ["<I", "<Q"])
def test_load_elf32_and_elf64(mem: GuestMemory, tmp_path: Path, cls: int, fmt: str) -> None:
    kernel = write(tmp_path, build_elf(cls=cls, notes=note(b"Xen\0", 18, struct.pack(fmt, ENTRY))))
    info = load_kernel(mem, kernel)
    assert info.protocol == "pvh"
    assert info.entry == ENTRY
    assert info.cpu.rip == ENTRY
    assert info.details["elfclass"] == cls


@pytest.mark.parametrize("size", [3, 16])
def test_refuses_odd_note_payload(mem: GuestMemory, tmp_path: Path, size: int) -> None:
    kernel = write(tmp_path, build_elf(notes=note(b"Xen\0", 18, b"\x10" * size)))
    refused(mem, kernel, "PHYS32_ENTRY", f"{size}-byte payload")


def test_refuses_missing_note(mem: GuestMemory, tmp_path: Path) -> None:
    # A note of the right type under another name is not Xen's.
    kernel = write(tmp_path, build_elf(notes=note(b"Xem\0", 18, struct.pack("<I", ENTRY))))
    refused(mem, kernel, "no XEN_ELFNOTE_PHYS32_ENTRY note", "not a PVH kernel")


# --- start_info (start_info.h) -------------------------------------------------------


def test_struct_sizes_match_start_info_h() -> None:
    # start_info.h: "56 +----+" ends version 1; modlist entry 32 bytes; memmap entry 24.
    assert ctypes.sizeof(abi.hvm_start_info) == 56
    assert ctypes.sizeof(abi.hvm_modlist_entry) == 32
    assert ctypes.sizeof(abi.hvm_memmap_table_entry) == 24


def test_start_info_layout(mem: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, build_elf())
    initrd = write(tmp_path, os.urandom(10000), "initrd")
    info = load_kernel(mem, kernel, ramdisk=initrd, cmdline="console=hvc0 root=/dev/ram0")
    si = info.cpu.gprs["rbx"]
    u32 = mem.read_u32
    u64 = mem.read_u64
    assert u32(si + 0) == 0x336EC578  # XEN_HVM_START_MAGIC_VALUE
    assert u32(si + 4) == 1  # version
    assert u32(si + 8) == 0  # flags
    assert u32(si + 12) == 1  # nr_modules
    modlist = u64(si + 16)
    cmdline = u64(si + 24)
    assert u64(si + 32) == 0  # rsdp_paddr: no ACPI yet
    memmap = u64(si + 40)
    entries = u32(si + 48)
    assert u32(si + 52) == 0  # reserved
    assert mem.read(cmdline, 28) == b"console=hvc0 root=/dev/ram0\0"
    # hvm_modlist_entry: paddr 0, size 8, cmdline_paddr 16, reserved 24
    rd = u64(modlist)
    assert u64(modlist + 8) == 10000
    assert u64(modlist + 16) == 0
    assert u64(modlist + 24) == 0
    assert mem.read(rd, 10000) == initrd.read_bytes()
    # "the ramdisk placed page-aligned at the top of low RAM"
    assert rd % 4096 == 0 and 64 * MiB - 4096 < rd + 10000 <= 64 * MiB
    assert info.ramdisk_range == (rd, rd + 10000)
    # hvm_memmap_table_entry: addr 0, size 8, type 16, reserved 20; 24 bytes each
    got = [(u64(memmap + 24 * i), u64(memmap + 24 * i + 8), u32(memmap + 24 * i + 16))
           for i in range(entries)]  # fmt: skip
    assert got == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 63 * MiB, 1)]
    assert all(u32(memmap + 24 * i + 20) == 0 for i in range(entries))
    # Nothing the guest is told about may overlap the kernel.
    for addr in (si, modlist, cmdline, memmap):
        assert not info.kernel_range[0] <= addr < info.kernel_range[1]


def test_no_ramdisk_no_modules_and_rsdp_parameter(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_elf()), rsdp_paddr=0xE0000)
    si = info.cpu.gprs["rbx"]
    assert mem.read_u32(si + 12) == 0
    assert mem.read_u64(si + 16) == 0
    assert mem.read_u64(si + 32) == 0xE0000
    assert info.ramdisk_range is None


# --- loading --------------------------------------------------------------------------


def test_segments_loaded_at_paddr_and_bss_zeroed(mem: GuestMemory, tmp_path: Path) -> None:
    text = os.urandom(0x1234)
    data = os.urandom(0x100)
    kernel = write(
        tmp_path,
        build_elf(segments=[(KERNEL_PADDR, text, 0x1234), (0x1400000, data, 0x5000)]),
    )
    mem.fill(0x1400000, 0x5000, 0xCC)  # stale bytes where .bss goes
    info = load_kernel(mem, kernel)
    assert mem.read(KERNEL_PADDR, len(text)) == text
    assert mem.read(0x1400000, 0x100) == data
    assert mem.read(0x1400100, 0x5000 - 0x100) == bytes(0x5000 - 0x100)
    assert info.kernel_range == (KERNEL_PADDR, 0x1405000)


def test_entry_state_follows_pvh_pandoc(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_elf()))
    cpu = info.cpu
    assert cpu.cr0 & 1  # PE
    assert cpu.cr0 & ~0x10 == 1  # everything else clear (ET is read-only 1)
    assert cpu.cr0 & (1 << 31) == 0  # paging off
    assert cpu.cr4 == 0
    assert cpu.efer == 0
    for bit in (8, 9, 17):  # TF, IF, VM
        assert not cpu.rflags & (1 << bit)
    assert cpu.gprs["rbx"] == info.boot_params_addr
    cs, ds, tr = cpu.code, cpu.data, cpu.tss
    # cs: 32-bit read/execute, base 0, limit 0xFFFFFFFF
    assert (cs.base, cs.limit, cs.db, cs.l, cs.s) == (0, 0xFFFFFFFF, True, False, True)
    assert cs.type & 0b1010 == 0b1010  # code, readable
    # ds/es (and ss): 32-bit read/write, base 0, limit 0xFFFFFFFF
    assert (ds.base, ds.limit, ds.db, ds.s) == (0, 0xFFFFFFFF, True, True)
    assert ds.type & 0b1010 == 0b0010  # data, writable
    # tr: 32-bit TSS (active/busy = type 11), base 0, limit 0x67
    assert (tr.base, tr.limit, tr.type, tr.s) == (0, 0x67, 11, False)
    # The GDT in guest memory holds the same descriptors (SDM 3A §3.4.5 encodings).
    gdt = cpu.gdt_base
    assert cpu.gdt_limit >= max(cs.selector, ds.selector, tr.selector) + 7
    assert mem.read_u64(gdt) == 0
    assert mem.read_u64(gdt + cs.selector) == 0x00CF9B000000FFFF
    assert mem.read_u64(gdt + ds.selector) == 0x00CF93000000FFFF
    assert mem.read_u64(gdt + tr.selector) == 0x00008B0000000067


# --- refusals -------------------------------------------------------------------------


def test_refuses_wrong_machine(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_elf(machine=EM_ARM)), "wrong machine", "EM_ARM")


def test_accepts_em_386(mem: GuestMemory, tmp_path: Path) -> None:
    info = load_kernel(mem, write(tmp_path, build_elf(cls=32, machine=EM_386)))
    assert info.details["machine"] == "EM_386"


def test_refuses_entry_outside_segments(mem: GuestMemory, tmp_path: Path) -> None:
    elf = build_elf(notes=note(b"Xen\0", 18, struct.pack("<I", 0x2000000)))
    refused(mem, write(tmp_path, elf), "entry point 0x2000000", "not inside a loaded segment")


@pytest.mark.parametrize(
    ("paddr", "words"),
    [
        (0x1000, ("overlaps the boot structures",)),
        (0x2F000, ("overlaps the boot structures",)),  # its end reaches into them
        (0xDD000, ("overlaps the Xen special pages and ACPI tables", "[0xde000, 0xff000)")),
        (0xFE000, ("overlaps the Xen special pages and ACPI tables",)),
        (0x8000000, ("outside guest RAM", "too big")),
        (64 * MiB - 0x1000, ("outside guest RAM",)),  # starts inside, ends past the end
    ],
)
def test_refuses_bad_segment_placement(
    mem: GuestMemory, tmp_path: Path, paddr: int, words: tuple[str, ...]
) -> None:
    elf = build_elf(
        notes=note(b"Xen\0", 18, struct.pack("<I", paddr)),
        segments=[(paddr, b"\x90" * 16, 0x2000)],
    )
    refused(mem, write(tmp_path, elf), "PT_LOAD segment", *words)


@pytest.mark.parametrize("paddr", [0x30000, 0xA0000, 0xFF000])
def test_loads_segments_in_the_legacy_hole_outside_the_platform_area(
    mem: GuestMemory, tmp_path: Path, paddr: int
) -> None:
    # Xen's PVH domains have no legacy hole: a linker's output at 0xFF000 (ELF headers
    # below 1 MiB) loads, as under Xen and QEMU's microvm.
    elf = build_elf(
        notes=note(b"Xen\0", 18, struct.pack("<I", paddr + 0x1000)),
        segments=[(paddr, b"\x90" * 0x1010, 0x2000)],
    )
    info = load_kernel(mem, write(tmp_path, elf))
    assert info.kernel_range[0] == paddr and info.entry == paddr + 0x1000
    assert mem.read(paddr + 0x1000, 4) == b"\x90" * 4


def test_refuses_overlapping_segments(mem: GuestMemory, tmp_path: Path) -> None:
    elf = build_elf(segments=[(KERNEL_PADDR, b"\x90" * 64, 0x2000), (KERNEL_PADDR + 0x1000, b"x", 16)])
    refused(mem, write(tmp_path, elf), "overlaps segment")


def test_refuses_truncated_segment(mem: GuestMemory, tmp_path: Path) -> None:
    elf = build_elf(segments=[(KERNEL_PADDR, b"\x90" * 0x1000, 0x1000)])
    refused(mem, write(tmp_path, elf[:-0x800]), "truncated")


def test_every_truncation_is_refused_cleanly(mem: GuestMemory, tmp_path: Path) -> None:
    """Cut anywhere, the loader reports a BootImageError and never crashes otherwise."""
    for cls in (32, 64):
        for note_as in ("segment", "section"):
            elf = build_elf(cls=cls, note_as=note_as)
            for n in range(1, len(elf), 3):
                p = write(tmp_path, elf[:n], f"cut{n}")
                with pytest.raises(BootImageError) as e:
                    load_kernel(mem, p)
                assert str(p) in str(e.value)


def test_refuses_corrupt_headers(mem: GuestMemory, tmp_path: Path) -> None:
    elf = bytearray(build_elf())
    struct.pack_into("<Q", elf, 32, 0x7FFFFFFF)  # e_phoff far past the end of the file
    refused(mem, write(tmp_path, bytes(elf)), "corrupt")
    elf = bytearray(build_elf())
    elf[4] = 7  # EI_CLASS neither ELFCLASS32 nor ELFCLASS64
    refused(mem, write(tmp_path, bytes(elf), "badclass"), "corrupt")


def test_refuses_long_cmdline(mem: GuestMemory, tmp_path: Path) -> None:
    refused(mem, write(tmp_path, build_elf()), "command line too long", cmdline="x" * 70000)


def test_refuses_ramdisk_too_big(mem: GuestMemory, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(100 * MiB)  # sparse: costs nothing
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, write(tmp_path, build_elf()), ramdisk=initrd)
    assert str(initrd) in str(e.value) and "too big" in str(e.value)


def test_refuses_ramdisk_overlapping_kernel(mem: GuestMemory, tmp_path: Path) -> None:
    # The kernel's .bss fills RAM from 1 MiB to near the top: no room above or below.
    elf = build_elf(
        notes=note(b"Xen\0", 18, struct.pack("<I", 0x100000)),
        segments=[(0x100000, b"\x90" * 16, 64 * MiB - 0x100000 - 0x2000)],
    )
    initrd = write(tmp_path, b"r" * 0x10000, "initrd")
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, write(tmp_path, elf), ramdisk=initrd)
    assert str(initrd) in str(e.value) and "overlaps the kernel" in str(e.value)


def test_refuses_missing_ramdisk(mem: GuestMemory, tmp_path: Path) -> None:
    missing = tmp_path / "nope.img"
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, write(tmp_path, build_elf()), ramdisk=missing)
    assert str(missing) in str(e.value) and "cannot open ramdisk" in str(e.value)
