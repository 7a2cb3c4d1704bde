#!/usr/bin/env python3
"""Assemble a bzImage from the real-mode setup area and a guest ELF linked at 1 MiB.

Usage: mkbzimage.py SETUP.bin GUEST.elf OUT.bzImage

Layout (Documentation/arch/x86/boot.rst, "THE REAL-MODE KERNEL HEADER"): setup_sects + 1
sectors of setup (boot sector + header + real-mode code), then the protected-mode kernel,
which is the ELF's PT_LOAD contents flattened from physical 0x100000. Only the standard
library is used.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

BASE = 0x100000  # code32_start / pref_address; the ELF is linked here
PT_LOAD = 1

# Offsets in the setup header (boot.rst).
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_BOOT_FLAG = 0x1FE
OFF_HEADER = 0x202
OFF_INIT_SIZE = 0x260


def flatten(elf: bytes) -> tuple[bytes, int]:
    """The ELF64 PT_LOAD segments laid out from BASE, and the memory size incl. .bss."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise SystemExit("mkbzimage: not an ELF64 file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    image = bytearray()
    end = BASE
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_LOAD or memsz == 0:
            continue
        if paddr < BASE:
            raise SystemExit(f"mkbzimage: segment at {paddr:#x} below {BASE:#x}")
        start = paddr - BASE
        if len(image) < start + filesz:
            image.extend(bytes(start + filesz - len(image)))
        image[start:start + filesz] = elf[off:off + filesz]
        end = max(end, paddr + memsz)
    return bytes(image), end - BASE


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise SystemExit(__doc__)
    setup = bytearray(Path(argv[1]).read_bytes())
    kernel, mem_size = flatten(Path(argv[2]).read_bytes())
    if setup[OFF_HEADER:OFF_HEADER + 4] != b"HdrS" or setup[OFF_BOOT_FLAG:OFF_BOOT_FLAG + 2] != b"\x55\xaa":
        raise SystemExit("mkbzimage: setup has no HdrS header / 0xAA55 boot flag")
    setup.extend(bytes(-len(setup) % 512))
    sects = len(setup) // 512 - 1
    if not 4 <= sects <= 255:
        raise SystemExit(f"mkbzimage: setup_sects {sects} out of range")
    setup[OFF_SETUP_SECTS] = sects
    struct.pack_into("<I", setup, OFF_SYSSIZE, (len(kernel) + 15) // 16)
    # init_size: memory the kernel needs from its load address, incl. .bss and stacks.
    struct.pack_into("<I", setup, OFF_INIT_SIZE, (mem_size + 4095) & ~4095)
    Path(argv[3]).write_bytes(bytes(setup) + kernel)


if __name__ == "__main__":
    main(sys.argv)
