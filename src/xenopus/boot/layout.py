"""Where the boot structures live in guest-physical memory, and what a loader reports.

Everything a loader writes besides the kernel and ramdisk sits in the first 640 KiB:
both boot protocols need it below 4 GiB, Linux's boot.rst wants the command line below
0xA0000, and low memory is free because no firmware runs. We stay above the real-mode
IVT (0x000-0x3FF) and BIOS data area (0x400-0x4FF) so a guest that peeks at them (or a
later real-mode boot path) finds them untouched, and below the EBDA at 0x9FC00.

    0x00500  GDT (a few descriptors)
    0x07000  hvm_start_info (PVH) or boot_params, the "zero page" (Linux), one page
    0x07040    PVH module list, right after the 56-byte start_info
    0x07100    PVH memory map, up to the end of that page
    0x09000  64-bit boot page tables: PML4, PDPT, 4 page directories (to 0x0EFFF)
    0x20000  kernel command line, up to 64 KiB
    0x30000  end of the boot-structure area; kernels may load above it
    0x9FC00  EBDA, VGA memory, option/BIOS ROMs: reserved up to 1 MiB in the memory
             map; inside it we place only the Xen special pages (0xDE000) and the ACPI
             tables (0xE0000-0xFF000), the platform area (devices/platform.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from xenopus import held_files
from xenopus.devices import platform
from xenopus.memory.guest import PAGE_SIZE, GuestMemory
from xenopus.vm.cpu import CpuState

if TYPE_CHECKING:
    from pathlib import Path

    from xenopus.boot.e820 import E820Entry

GDT_ADDR = 0x500
BOOT_INFO_ADDR = 0x7000  # start_info (PVH) or the zero page (Linux); both fit in one page
START_INFO_ADDR = BOOT_INFO_ADDR
ZERO_PAGE_ADDR = BOOT_INFO_ADDR
MODLIST_ADDR = 0x7040
MEMMAP_ADDR = 0x7100
MEMMAP_END = 0x8000
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # four page directories, one per GiB of the first 4 GiB
PD_COUNT = 4
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000  # bytes including the terminating NUL
BOOT_AREA_END = CMDLINE_ADDR + CMDLINE_MAX

# Legacy PC hole: EBDA (0x9FC00), VGA (0xA0000), ROMs and BIOS (0xC0000-0xFFFFF).
LEGACY_START = 0x9FC00
LEGACY_END = 0x100000
HIGH_MEMORY = 0x100000  # 1 MiB: the classic bzImage load address
# What a kernel image must not overwrite in the legacy hole: the structures the platform
# places there (the rest of the hole is only reserved in the memory map).
PLATFORM_AREA = (platform.PLATFORM_AREA_START, platform.PLATFORM_AREA_END)
XEN_SPECIAL_PAGES = (platform.XEN_STORE_PAGE, platform.ACPI_TABLES_BASE)
ACPI_WINDOW = (platform.ACPI_TABLES_BASE, platform.PLATFORM_AREA_END)


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align if align > 1 else value


def align_down(value: int, align: int) -> int:
    return value // align * align if align > 1 else value


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether half-open ranges (start, end) share a byte."""
    return a[0] < b[1] and b[0] < a[1]


def span(start: int, end: int) -> str:
    return f"[{start:#x}, {end:#x})"


class BootImageError(Exception):
    """A kernel or ramdisk the loader refuses; str() names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class BootInfo:
    """What a loader placed where, and the vCPU state to start the guest in.

    Ranges are half-open (start, end) guest-physical addresses.
    """

    protocol: str  # "pvh" or "linux"
    entry: int
    cpu: CpuState
    kernel_range: tuple[int, int]
    ramdisk_range: tuple[int, int] | None
    cmdline: str
    e820: list[E820Entry] = field(default_factory=list)
    kernel_path: str = ""
    ramdisk_path: str | None = None
    boot_params_addr: int = BOOT_INFO_ADDR  # start_info (PVH) or the zero page (Linux)
    # PVH modules before the ramdisk, (path, range) each: a PV shim's PV kernel.
    modules: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        """A few lines for the domain log."""
        lines = [
            f"{self.protocol} boot of {self.kernel_path}: entry {self.entry:#x},"
            f" kernel {span(*self.kernel_range)}",
        ]
        lines += [f"module {p} at {span(*r)}" for p, r in self.modules]
        if self.ramdisk_range:
            lines.append(f"ramdisk {self.ramdisk_path} at {span(*self.ramdisk_range)}")
        lines.append(f"command line {self.cmdline!r}")
        lines += [f"e820 {e}" for e in self.e820]
        return "\n".join(lines)


def read_into(f: BinaryIO, memory: GuestMemory, gpa: int, offset: int, size: int) -> int:
    """Copy `size` bytes at file `offset` straight into guest memory; returns bytes read."""
    view = memory.view(gpa, size)
    f.seek(offset)
    done = 0
    while done < size:
        n = f.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def write_gdt(memory: GuestMemory, descriptors: list[int]) -> tuple[int, int]:
    """Write 8-byte descriptors (entry 0 should be the null one) at GDT_ADDR.

    Returns (base, limit) for the GDTR.
    """
    for i, d in enumerate(descriptors):
        memory.write_u64(GDT_ADDR + 8 * i, d)
    return GDT_ADDR, 8 * len(descriptors) - 1


def write_cmdline(memory: GuestMemory, path: str | Path, cmdline: str, limit: int) -> int:
    """Write the NUL-terminated command line at CMDLINE_ADDR; `limit` excludes the NUL."""
    data = cmdline.encode()
    if b"\0" in data:
        raise BootImageError(path, "command line contains a NUL byte")
    limit = min(limit, CMDLINE_MAX - 1)
    if len(data) > limit:
        raise BootImageError(path, f"command line too long: {len(data)} bytes, limit {limit}")
    memory.write(CMDLINE_ADDR, data + b"\0")
    return CMDLINE_ADDR


def open_file(path: str | Path, what: str) -> tuple[BinaryIO, int]:
    """Open a kernel or ramdisk for reading; returns the file and its size."""
    try:
        f = os.fdopen(held_files.open_fd(path, os.O_RDONLY), "rb")  # the caller closes it
        f.seek(0)  # a held file's duplicate starts where the last reader left it
    except OSError as e:
        raise BootImageError(path, f"cannot open {what}: {e.strerror or e}") from e
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        f.close()
        raise BootImageError(path, f"cannot read {what}: {e.strerror or e}") from e
    return f, size


def load_ramdisk(
    memory: GuestMemory, path: str | Path, top: int, kernel: tuple[int, int],
    what: str = "ramdisk",
) -> tuple[int, int]:
    """Read a ramdisk page-aligned as high as possible below `top`, clear of the kernel.

    Both protocols want it high (boot.rst: "an initrd should be placed near end of
    memory"); if the kernel sits there, the space below the kernel is tried next.
    Returns the (start, end) range.
    """
    f, size = open_file(path, what)
    with f:
        if size == 0:
            raise BootImageError(path, f"{what} is empty")
        top = min(top, memory.low_ram_end)
        room = top - HIGH_MEMORY
        if size > room:
            raise BootImageError(
                path,
                f"{what} too big for guest memory: {size} bytes, at most {max(room, 0)}"
                f" fit in {span(HIGH_MEMORY, top)}",
            )
        addr = align_down(top - size, PAGE_SIZE)
        if overlaps((addr, addr + size), kernel):
            addr = align_down(kernel[0] - size, PAGE_SIZE)
            if addr < HIGH_MEMORY:
                raise BootImageError(
                    path,
                    f"{what} ({size} bytes) overlaps the kernel at {span(*kernel)}:"
                    f" no room for both below {top:#x}",
                )
        got = read_into(f, memory, addr, 0, size)
        if got != size:
            raise BootImageError(path, f"{what} truncated while reading: {got} of {size} bytes")
    return addr, addr + size
