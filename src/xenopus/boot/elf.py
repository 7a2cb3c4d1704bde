"""The little of ELF a kernel loader reads: the file header, program headers, section
headers and notes (System V ABI, "ELF Header", "Program Header", "Sections", "Note
Section"; <linux/elf.h> for the numbers).

Our own reader rather than pyelftools: a domain process needs only these tables, and
importing pyelftools (construct, DWARF) cost each domain process time and private memory.
It reads from a seekable binary file and checks every offset and count against the file
before it reads (a header may claim any size); every refusal is an `ElfError`
(a `ValueError`). tests/unit/test_boot_elf.py checks it against pyelftools on real images.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EI_NIDENT = 16
PN_XNUM = 0xFFFF  # e_phnum's escape: the real count is section 0's sh_info
SHN_XINDEX = 0xFFFF

PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
SHF_COMPRESSED = 0x800  # the section's data is an Elf_Chdr and compressed bytes

# e_machine values (<linux/elf-em.h>), for messages.
MACHINES = {
    3: "EM_386", 4: "EM_68K", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390",
    40: "EM_ARM", 43: "EM_SPARCV9", 50: "EM_IA_64", 62: "EM_X86_64", 183: "EM_AARCH64",
    243: "EM_RISCV", 258: "EM_LOONGARCH",
}

# Per class: the header after e_ident, a program header, a section header (gABI layouts).
_EHDR = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
_PHDR = {32: "IIIIIIII", 64: "IIQQQQQQ"}
_SHDR = {32: "IIIIIIIIII", 64: "IIQQQQIIQQ"}
PHDR_SIZE = {32: 32, 64: 56}
SHDR_SIZE = {32: 40, 64: 64}


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    """A program header (Elf32_Phdr / Elf64_Phdr)."""

    index: int
    p_type: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int
    p_align: int


@dataclass(frozen=True)
class Section:
    """A section header (Elf32_Shdr / Elf64_Shdr)."""

    index: int
    sh_name: int
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int


@dataclass(frozen=True)
class Note:
    """One ELF note (name, type, descriptor)."""

    name: bytes  # without its terminating NUL
    type: int
    desc: bytes


class ElfFile:
    """An ELF file's header; its tables are read on demand."""

    def __init__(self, f: BinaryIO, file_size: int | None = None) -> None:
        self.stream = f
        self.file_size = f.seek(0, 2) if file_size is None else file_size
        ident = self._read(0, EI_NIDENT, "the ELF identification")
        if ident[:4] != MAGIC:
            raise ElfError("not an ELF file (bad magic)")
        if ident[4] not in (ELFCLASS32, ELFCLASS64):
            raise ElfError(f"unknown ELF class {ident[4]}")
        if ident[5] not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ElfError(f"unknown ELF data encoding {ident[5]}")
        self.elfclass = 32 if ident[4] == ELFCLASS32 else 64
        self.little_endian = ident[5] == ELFDATA2LSB
        self._order = "<" if self.little_endian else ">"
        fmt = self._order + _EHDR[self.elfclass]
        (self.e_type, self.e_machine, self.e_version, self.e_entry, self.e_phoff,
         self.e_shoff, self.e_flags, self.e_ehsize, self.e_phentsize, self.e_phnum,
         self.e_shentsize, self.e_shnum, self.e_shstrndx) = struct.unpack(
            fmt, self._read(EI_NIDENT, struct.calcsize(fmt), "the ELF header"))

    @property
    def machine(self) -> str:
        return MACHINES.get(self.e_machine, f"EM_{self.e_machine}")

    def _read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.file_size:
            raise ElfError(f"{what} runs past the end of the file")
        self.stream.seek(offset)
        data = self.stream.read(size)
        if len(data) != size:
            raise ElfError(f"{what}: short read")
        return data

    # -- section 0 holds the counts that overflow the header's 16-bit fields ------------
    def _section0(self) -> Section | None:
        if self.e_shoff == 0 or self.e_shentsize != SHDR_SIZE[self.elfclass]:
            return None
        return self._section(0)

    def num_segments(self) -> int:
        if self.e_phnum != PN_XNUM:
            return self.e_phnum
        s0 = self._section0()
        if s0 is None:
            raise ElfError("e_phnum is PN_XNUM but there is no section 0 with the count")
        return s0.sh_info

    def num_sections(self) -> int:
        if self.e_shoff == 0:
            return 0
        if self.e_shnum:
            return self.e_shnum
        s0 = self._section0()
        return s0.sh_size if s0 is not None else 0

    # -- tables ---------------------------------------------------------------------
    def check_tables(self, phdr_table_max: int) -> None:
        """Program and section header entries of their struct's size, inside the file,
        and a program header table of at most `phdr_table_max` bytes."""
        tables = (("program", self.num_segments(), self.e_phentsize, PHDR_SIZE, self.e_phoff),
                  ("section", self.num_sections(), self.e_shentsize, SHDR_SIZE, self.e_shoff))
        for what, count, entsize, sizes, offset in tables:
            if not count:
                continue
            want = sizes[self.elfclass]
            if entsize != want:
                raise ElfError(f"{what} header entries of {entsize} bytes"
                               f" (ELF{self.elfclass} has {want})")
            if what == "program" and count * entsize > phdr_table_max:
                raise ElfError(f"{count} program headers (more than {phdr_table_max} bytes)")
            if offset + count * entsize > self.file_size:
                raise ElfError(f"the {what} header table runs past the end of the file")

    def _segment(self, i: int) -> Segment:
        size = PHDR_SIZE[self.elfclass]
        if self.e_phentsize != size:
            raise ElfError(f"program header entries of {self.e_phentsize} bytes")
        raw = struct.unpack(self._order + _PHDR[self.elfclass],
                            self._read(self.e_phoff + i * size, size, f"program header {i}"))
        if self.elfclass == 64:
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = raw
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = raw
        return Segment(i, p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align)

    def _section(self, i: int) -> Section:
        size = SHDR_SIZE[self.elfclass]
        if self.e_shentsize != size:
            raise ElfError(f"section header entries of {self.e_shentsize} bytes")
        raw = struct.unpack(self._order + _SHDR[self.elfclass],
                            self._read(self.e_shoff + i * size, size, f"section header {i}"))
        return Section(i, *raw)

    def segments(self) -> Iterator[Segment]:
        for i in range(self.num_segments()):
            yield self._segment(i)

    def sections(self) -> Iterator[Section]:
        for i in range(self.num_sections()):
            yield self._section(i)

    # -- notes ----------------------------------------------------------------------
    def note_blocks(self) -> list[tuple[bytes, int]]:
        """(data, alignment) of each PT_NOTE segment or, when there is none, each SHT_NOTE
        section. A compressed note section is refused rather than inflated."""
        blocks = [(s.p_offset, s.p_filesz, s.p_align, "a note segment")
                  for s in self.segments() if s.p_type == PT_NOTE]
        if not blocks:
            for sec in self.sections():
                if sec.sh_type != SHT_NOTE:
                    continue
                if sec.sh_flags & SHF_COMPRESSED:
                    raise ElfError(f"note section {sec.index} is compressed")
                blocks.append((sec.sh_offset, sec.sh_size, sec.sh_addralign, "a note section"))
        return [(self._read(offset, size, what), align) for offset, size, align, what in blocks]

    def notes(self) -> Iterator[Note]:
        for data, align in self.note_blocks():
            yield from iter_notes(data, 8 if align == 8 else 4, self._order)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def iter_notes(data: bytes, align: int, order: str = "<") -> Iterator[Note]:
    """Each note in a note segment or section (gABI "Note Section"): header words are 4
    bytes in both classes; name and desc are padded to `align`."""
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "III", data, off)
        off += 12
        name = data[off : off + namesz]
        off += align_up(namesz, align)
        desc = data[off : off + descsz]
        off += align_up(descsz, align)
        if len(name) != namesz or len(desc) != descsz:
            raise ElfError("a note runs past the end of its segment")
        yield Note(name.rstrip(b"\0"), ntype, desc)
