"""The memory map both boot protocols hand to the guest.

Address range types are the ACPI spec's ("System Address Map Interfaces", ACPI 6.2
§15, table 15-374), the same values Xen's start_info.h uses for XEN_HVM_MEMMAP_TYPE_*
and Linux's e820 table in boot_params uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from xenopus.boot.layout import ACPI_WINDOW, LEGACY_END, LEGACY_START, XEN_SPECIAL_PAGES
from xenopus.memory.guest import GuestMemory

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5

TYPE_NAMES = {
    E820_RAM: "ram",
    E820_RESERVED: "reserved",
    E820_ACPI: "acpi",
    E820_NVS: "nvs",
    E820_UNUSABLE: "unusable",
}


@dataclass(frozen=True)
class E820Entry:
    """One E820 range: `size` bytes from `addr`, of E820 `type`."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size

    def __str__(self) -> str:
        name = TYPE_NAMES.get(self.type, str(self.type))
        return f"[{self.addr:#014x}-{self.end - 1:#014x}] {name}"


class E820Map:
    """A sorted, non-overlapping memory map; later additions override earlier ones."""

    def __init__(self) -> None:
        self.entries: list[E820Entry] = []

    def add(self, addr: int, size: int, type: int) -> None:
        """Mark [addr, addr+size) as `type`, cutting it out of whatever was there."""
        if size <= 0:
            return
        end = addr + size
        kept: list[E820Entry] = []
        for e in self.entries:
            if e.end <= addr or e.addr >= end:
                kept.append(e)
                continue
            if e.addr < addr:
                kept.append(E820Entry(e.addr, addr - e.addr, e.type))
            if e.end > end:
                kept.append(E820Entry(end, e.end - end, e.type))
        kept.append(E820Entry(addr, size, type))
        kept.sort(key=lambda e: e.addr)
        merged: list[E820Entry] = []
        for e in kept:
            last = merged[-1] if merged else None
            if last and last.type == e.type and last.end == e.addr:
                merged[-1] = E820Entry(last.addr, last.size + e.size, e.type)
            else:
                merged.append(e)
        self.entries = merged

    def ram(self) -> list[E820Entry]:
        return [e for e in self.entries if e.type == E820_RAM]

    def __iter__(self) -> Iterator[E820Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def build_e820(memory: GuestMemory, extra: Sequence[E820Entry] = (), *,
               legacy_hole: bool = True) -> E820Map:
    """RAM below the EBDA, the legacy hole reserved, RAM from 1 MiB, RAM above 4 GiB.

    Without `legacy_hole` (Xen's PVH platform, libxl_x86.c's memory map): RAM from 0,
    less only what we place in it: the Xen special pages (reserved) and the ACPI tables
    (ACPI, as libxl marks its PVH tables). `extra` entries are laid over the result.
    """
    m = E820Map()
    for gpa, size in memory.ram_ranges():
        m.add(gpa, size, E820_RAM)
    if legacy_hole:
        # The EBDA/VGA/ROM hole is reported reserved, as PC firmware does, even though
        # our RAM region backs it (so ACPI tables can later be written at 0xE0000).
        m.add(LEGACY_START, LEGACY_END - LEGACY_START, E820_RESERVED)
    else:
        m.add(XEN_SPECIAL_PAGES[0], XEN_SPECIAL_PAGES[1] - XEN_SPECIAL_PAGES[0], E820_RESERVED)
        m.add(ACPI_WINDOW[0], ACPI_WINDOW[1] - ACPI_WINDOW[0], E820_ACPI)
    for e in extra:
        m.add(e.addr, e.size, e.type)
    return m
