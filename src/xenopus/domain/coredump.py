"""A domain's memory as an ELF core file (`xl dump-core`, on_* = coredump-*).

The format is not Xen's: xc_domain_dumpcore (tools/libs/guest/xg_core.c) writes an ELF
with sections (.xen_prstatus, .xen_pages, .xen_pfn, ...). This is the layout QEMU's
dump-guest-memory writes and crash(8) and gdb read: an ELF64 ET_CORE for EM_X86_64 with
one PT_LOAD per guest-RAM range, p_paddr its guest-physical address (p_vaddr 0: no
virtual mapping is claimed), its bytes at a page-aligned p_offset. No register notes.
Field layouts: the System V ABI, ELF-64 Object File Format (Elf64_Ehdr, Elf64_Phdr).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

PAGE = 4096
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr: 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: 56 bytes
ELF_IDENT = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT, SysV
ET_CORE = 4
EM_X86_64 = 62
EV_CURRENT = 1
PT_LOAD = 1
PF_RWX = 7
CHUNK = 1 << 20  # bytes written per system call


def _align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def headers(ranges: list[tuple[int, int]]) -> tuple[bytes, list[int]]:
    """The ELF and program headers for RAM `ranges` (gpa, size), and each range's file
    offset."""
    phoff = EHDR.size
    out = bytearray(EHDR.pack(ELF_IDENT, ET_CORE, EM_X86_64, EV_CURRENT, 0, phoff, 0, 0,
                              EHDR.size, PHDR.size, len(ranges), 0, 0, 0))
    offset = _align(phoff + PHDR.size * len(ranges))
    offsets = []
    for gpa, size in ranges:
        out += PHDR.pack(PT_LOAD, PF_RWX, offset, 0, gpa, size, size, 0)
        offsets.append(offset)
        offset = _align(offset + size)
    return bytes(out), offsets


def write_core(fd: int, ranges: Iterable[tuple[int, int]], view) -> int:
    """Write the core of the memory `view(gpa, size) -> memoryview` covers in `ranges`
    to `fd`, in order (a pipe will do); the octets written."""
    ranges = list(ranges)
    head, offsets = headers(ranges)
    pos = _write_all(fd, head, 0)
    for (gpa, size), offset in zip(ranges, offsets, strict=True):
        pos = _write_all(fd, bytes(offset - pos), pos)  # padding to the page boundary
        for at in range(0, size, CHUNK):
            pos = _write_all(fd, view(gpa + at, min(CHUNK, size - at)), pos)
    return pos


def _write_all(fd: int, data, pos: int) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return pos + len(data)
