"""PVH direct boot: an ELF kernel entered in 32-bit protected mode with a start_info.

Implements Xen's docs/misc/pvh.pandoc ("x86/HVM direct boot ABI"): the kernel announces
the ABI with a XEN_ELFNOTE_PHYS32_ENTRY note (xen/include/public/elfnote.h), the loader
places its PT_LOAD segments at their physical addresses and enters at the note's address
with %ebx pointing at a struct hvm_start_info
(xen/include/public/arch-x86/hvm/start_info.h, version 1 with a memory map).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from xenopus.arch.x86 import CR0_ET, CR0_PE, RFLAGS_RESERVED
from xenopus.boot import elf as elf_format
from xenopus.boot.e820 import E820Entry, build_e820
from xenopus.boot.elf import ElfError, ElfFile
from xenopus.boot.layout import (
    BOOT_AREA_END,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    MEMMAP_ADDR,
    MEMMAP_END,
    MODLIST_ADDR,
    PLATFORM_AREA,
    START_INFO_ADDR,
    BootImageError,
    BootInfo,
    load_ramdisk,
    open_file,
    overlaps,
    read_into,
    span,
    write_cmdline,
    write_gdt,
)
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import (
    CpuState,
    flat_code32,
    flat_data,
    task_segment,
)
from xenopus.xen import abi

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path

# PVH itself sets no limit; ours is the space layout.py gives the command line.
CMDLINE_LIMIT = CMDLINE_MAX - 1

_FOUR_GIB = 1 << 32
_ELF_ERRORS = (ElfError, struct.error)

# pvh.pandoc fixes the segments but not the selectors; these match CpuState's defaults.
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
TSS_SELECTOR = 0x18


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD program header: `filesz` bytes from file `offset` to `paddr`, `memsz` in memory."""

    index: int
    paddr: int
    offset: int
    filesz: int
    memsz: int

    @property
    def range(self) -> tuple[int, int]:
        return self.paddr, self.paddr + self.memsz


@dataclass
class PvhImage:
    """A PVH ELF kernel: its load segments, entry and Xen ELF notes."""

    path: str
    elfclass: int
    machine: str
    entry: int
    segments: list[LoadSegment]
    xen_notes: dict[int, bytes] = field(default_factory=dict)  # type -> payload (elfnote.h)


def xen_notes(elf: ElfFile) -> dict[int, bytes]:
    """Every "Xen" note by type: the toolstack asks for XEN_ELFNOTE_HYPERCALL_PAGE (2) and
    XEN_ELFNOTE_GUEST_OS (6) to pick the hypercall path (elfnote.h). PT_NOTE segments, or
    SHT_NOTE sections when there is none (boot/elf.py)."""
    notes: dict[int, bytes] = {}
    for n in elf.notes():
        if n.name == abi.XEN_ELFNOTE_NAME:
            notes.setdefault(n.type, n.desc)
    return notes


def find_phys32_entry(elf: ElfFile, path: str) -> int:
    return phys32_entry(xen_notes(elf), path)


def phys32_entry(notes: dict[int, bytes], path: str) -> int:
    """The entry address of the first XEN_ELFNOTE_PHYS32_ENTRY note among `notes`."""
    desc = notes.get(abi.XEN_ELFNOTE_PHYS32_ENTRY)
    if desc is None:
        raise BootImageError(path, "no XEN_ELFNOTE_PHYS32_ENTRY note (not a PVH kernel)")
    # The ABI's note is ".long", but loaders accept any natural integer width.
    if len(desc) not in (1, 2, 4, 8):
        raise BootImageError(
            path,
            f"XEN_ELFNOTE_PHYS32_ENTRY note has a {len(desc)}-byte payload"
            " (expected 1, 2, 4 or 8)",
        )
    return int.from_bytes(desc, "little")


# Linux's binfmt_elf (load_elf_phdrs) refuses a program header table over 64 KiB; real
# kernels have a handful of entries. Without a bound, e_phnum = 0xf800 with e_phentsize 0
# in a 67-byte file kept pyelftools parsing the same bytes for 13 s (found by fuzzing).
PHDR_TABLE_MAX = 64 * 1024


def parse_pvh(f: BinaryIO, path: str, file_size: int) -> PvhImage:
    """Read and check the ELF headers; nothing is written to guest memory."""
    try:
        elf = ElfFile(f, file_size)
        if not elf.little_endian:
            raise BootImageError(path, "big-endian ELF (not an x86 kernel)")
        machine = elf.machine
        if machine not in ("EM_X86_64", "EM_386"):
            raise BootImageError(
                path, f"ELF for the wrong machine: {machine} (need EM_X86_64 or EM_386)"
            )
        try:  # the header tables' shape first, before anything iterates them
            elf.check_tables(PHDR_TABLE_MAX)
        except ElfError as e:
            what = "truncated ELF" if "past the end" in str(e) else "corrupt ELF"
            raise BootImageError(path, f"{what}: {e}") from None
        segments = [LoadSegment(s.index, s.p_paddr, s.p_offset, s.p_filesz, s.p_memsz)
                    for s in elf.segments() if s.p_type == elf_format.PT_LOAD and s.p_memsz]
        notes = xen_notes(elf)  # the note segments are read and parsed once
        entry = phys32_entry(notes, path)
        elfclass = elf.elfclass
    except _ELF_ERRORS as e:
        raise BootImageError(path, f"truncated or corrupt ELF: {e}") from e
    if not segments:
        raise BootImageError(path, "ELF has no PT_LOAD segment")
    for s in segments:
        if s.filesz > s.memsz:
            raise BootImageError(
                path, f"corrupt ELF: PT_LOAD segment {s.index} has p_filesz > p_memsz"
            )
        if s.offset + s.filesz > file_size:
            raise BootImageError(
                path,
                f"truncated ELF: PT_LOAD segment {s.index} needs file bytes up to"
                f" {s.offset + s.filesz:#x}, the file has {file_size:#x}",
            )
    if not any(s.paddr <= entry < s.paddr + s.filesz for s in segments):
        raise BootImageError(path, f"entry point {entry:#x} is not inside a loaded segment")
    return PvhImage(path, elfclass, machine, entry, segments, notes)


def check_placement(memory: GuestMemory, image: PvhImage) -> None:
    """Refuse segments outside RAM, on top of the boot structures or of each other."""
    path = image.path
    for s in image.segments:
        where = f"PT_LOAD segment {s.index} at {span(*s.range)}"
        if overlaps(s.range, (0, BOOT_AREA_END)):
            raise BootImageError(
                path, f"{where} overlaps the boot structures at {span(0, BOOT_AREA_END)}"
            )
        # Only what we place in the legacy hole is off limits (the Xen special pages and
        # the ACPI tables); a segment at 0xFF000, its ELF headers just below 1 MiB, loads.
        if overlaps(s.range, PLATFORM_AREA):
            raise BootImageError(
                path, f"{where} overlaps the Xen special pages and ACPI tables at"
                f" {span(*PLATFORM_AREA)}"
            )
        if s.range[1] > _FOUR_GIB:
            raise BootImageError(path, f"{where} is above 4 GiB, out of reach of a 32-bit entry")
        if not memory.contains(s.paddr, s.memsz):
            ram = ", ".join(span(a, a + n) for a, n in memory.ram_ranges())
            raise BootImageError(
                path, f"{where} is outside guest RAM ({ram}): kernel too big for guest memory?"
            )
    ordered = sorted(image.segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if overlaps(a.range, b.range):
            raise BootImageError(
                path, f"PT_LOAD segment {b.index} at {span(*b.range)} overlaps segment {a.index}"
            )


def entry_state(entry: int, memory: GuestMemory) -> CpuState:
    """The machine state pvh.pandoc requires, with a GDT holding its descriptors."""
    code, data, tss = (
        flat_code32(CODE_SELECTOR),  # 32-bit execute/read, base 0, limit 0xFFFFFFFF
        flat_data(DATA_SELECTOR),  # 32-bit read/write, base 0, limit 0xFFFFFFFF
        task_segment(TSS_SELECTOR),  # "32-bit TSS (active) with a base of 0 and limit 0x67"
    )
    gdt_base, gdt_limit = write_gdt(
        memory, [0, code.descriptor(), data.descriptor(), tss.descriptor()]
    )
    return CpuState(
        rip=entry,
        rflags=RFLAGS_RESERVED,  # VM, IF and TF clear
        gprs={"rbx": START_INFO_ADDR},
        # "cr0: bit 0 (PE) must be set"; ET is read-only 1 on anything since the 486
        # and Xen's own builder passes PE|ET (tools/libxc/xc_dom_x86.c).
        cr0=CR0_PE | CR0_ET,
        cr4=0,
        efer=0,
        code=code,
        data=data,
        tss=tss,
        gdt_base=gdt_base,
        gdt_limit=gdt_limit,
    )


@dataclass(frozen=True)
class BootModule:
    """A file handed to the kernel as a PVH module, with its own command line (the
    hvm_modlist_entry's cmdline_paddr; None: no command line)."""

    path: str | Path
    cmdline: str | None = None
    what: str = "module"  # names the file in messages: "PV kernel", "ramdisk"


def write_module_cmdlines(
    memory: GuestMemory, path: str, after: int, cmdlines: Sequence[str | None]
) -> list[int]:
    """Each module's NUL-terminated command line, one after the other from `after` up to
    the end of the command-line area; 0 for a module without one (start_info.h: "0 if
    no command line")."""
    out, addr, end = [], after, CMDLINE_ADDR + CMDLINE_MAX
    for cmdline in cmdlines:
        if cmdline is None:
            out.append(0)
            continue
        data = cmdline.encode() + b"\0"
        if b"\0" in data[:-1]:
            raise BootImageError(path, "a module command line contains a NUL byte")
        if addr + len(data) > end:
            raise BootImageError(
                path, f"module command lines too long: the boot area has {end - after} bytes"
                " for them")
        memory.write(addr, data)
        out.append(addr)
        addr += len(data)
    return out


def write_start_info(
    memory: GuestMemory,
    *,
    cmdline_paddr: int,
    ramdisk: tuple[int, int] | None,
    e820: Sequence[E820Entry],
    rsdp_paddr: int,
    path: str,
    modules: Sequence[tuple[int, int, int]] = (),
) -> None:
    """`modules` ((start, end, cmdline_paddr) each) come first in the module list, then
    the ramdisk."""
    capacity = (MEMMAP_END - MEMMAP_ADDR) // ctypes.sizeof(abi.hvm_memmap_table_entry)
    if len(e820) > capacity:
        raise BootImageError(path, f"memory map has {len(e820)} entries, room for {capacity}")
    for i, e in enumerate(e820):
        entry = abi.hvm_memmap_table_entry(addr=e.addr, size=e.size, type=e.type)
        memory.write(MEMMAP_ADDR + i * ctypes.sizeof(entry), bytes(entry))
    info = abi.hvm_start_info(
        magic=abi.XEN_HVM_START_MAGIC_VALUE,
        version=abi.HVM_START_INFO_VERSION,
        cmdline_paddr=cmdline_paddr,
        rsdp_paddr=rsdp_paddr,
        memmap_paddr=MEMMAP_ADDR,
        memmap_entries=len(e820),
    )
    entries = [*modules, *([(ramdisk[0], ramdisk[1], 0)] if ramdisk else [])]
    room = (MEMMAP_ADDR - MODLIST_ADDR) // ctypes.sizeof(abi.hvm_modlist_entry)
    if len(entries) > room:
        raise BootImageError(path, f"{len(entries)} modules, room for {room}")
    for i, (start, end, cmdline) in enumerate(entries):
        module = abi.hvm_modlist_entry(paddr=start, size=end - start, cmdline_paddr=cmdline)
        memory.write(MODLIST_ADDR + i * ctypes.sizeof(module), bytes(module))
    if entries:
        info.nr_modules = len(entries)
        info.modlist_paddr = MODLIST_ADDR
    memory.write(START_INFO_ADDR, bytes(info))


def load_pvh(
    memory: GuestMemory,
    kernel: str | Path,
    *,
    ramdisk: str | Path | None = None,
    cmdline: str = "",
    rsdp_paddr: int = 0,
    extra_e820: Sequence[E820Entry] = (),
    legacy_hole: bool = True,
    modules: Sequence[BootModule] = (),
) -> BootInfo:
    """`modules` go in the module list in their order, before the ramdisk (which is the
    last module)."""
    path = str(kernel)
    f, size = open_file(kernel, "kernel")
    with f:
        image = parse_pvh(f, path, size)
        check_placement(memory, image)
        cmdline_paddr = write_cmdline(memory, path, cmdline, CMDLINE_LIMIT)
        for s in image.segments:
            got = read_into(f, memory, s.paddr, s.offset, s.filesz)
            if got != s.filesz:
                raise BootImageError(path, f"truncated ELF: short read of segment {s.index}")
            memory.fill(s.paddr + s.filesz, s.memsz - s.filesz)  # .bss
    kernel_range = (
        min(s.paddr for s in image.segments),
        max(s.paddr + s.memsz for s in image.segments),
    )
    ramdisk_range = None
    top = memory.low_ram_end
    if ramdisk is not None:
        # The ramdisk is the last module, at the top of RAM below 4 GiB.
        ramdisk_range = load_ramdisk(memory, ramdisk, top, kernel_range)
        top = ramdisk_range[0]
    loaded: list[tuple[int, int]] = []
    for module in modules:  # each below the one loaded before it
        loaded.append(load_ramdisk(memory, module.path, top, kernel_range, what=module.what))
        top = loaded[-1][0]
    cmdlines = write_module_cmdlines(
        memory, path, cmdline_paddr + len(cmdline.encode()) + 1, [m.cmdline for m in modules]
    )
    e820 = build_e820(memory, tuple(extra_e820), legacy_hole=legacy_hole).entries
    write_start_info(
        memory,
        cmdline_paddr=cmdline_paddr,
        ramdisk=ramdisk_range,
        e820=e820,
        rsdp_paddr=rsdp_paddr,
        path=path,
        modules=[(a, b, c) for (a, b), c in zip(loaded, cmdlines, strict=True)],
    )
    return BootInfo(
        protocol="pvh",
        entry=image.entry,
        cpu=entry_state(image.entry, memory),
        kernel_range=kernel_range,
        ramdisk_range=ramdisk_range,
        cmdline=cmdline,
        e820=e820,
        kernel_path=path,
        ramdisk_path=str(ramdisk) if ramdisk is not None else None,
        boot_params_addr=START_INFO_ADDR,
        modules=[(str(m.path), r) for m, r in zip(modules, loaded, strict=True)],
        details={
            "elfclass": image.elfclass,
            "machine": image.machine,
            "hypercall_page_note": abi.XEN_ELFNOTE_HYPERCALL_PAGE in image.xen_notes,
            "guest_os": image.xen_notes.get(abi.XEN_ELFNOTE_GUEST_OS, b"").rstrip(b"\0").decode(errors="replace"),
        },
    )
