"""`load_kernel`: pick the boot protocol from the image format and load the kernel.

An ELF file is booted through PVH (it must carry XEN_ELFNOTE_PHYS32_ENTRY), a file with
the Linux setup header ("HdrS" at 0x202, boot.rst) through the Linux boot protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from xenopus.boot.bzimage import HDRS_MAGIC, load_bzimage
from xenopus.boot.e820 import E820Entry
from xenopus.boot.layout import HIGH_MEMORY, BootImageError, BootInfo, open_file
from xenopus.boot.pvh import load_pvh
from xenopus.memory.guest import GuestMemory

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path

ELF_MAGIC = b"\x7fELF"
# Below this the boot structures and a kernel at 1 MiB do not fit.
MIN_GUEST_RAM = 2 * HIGH_MEMORY


def image_format(path: str | Path) -> str:
    """The protocol ("pvh" or "linux") the file's magic numbers ask for; refuses others."""
    f, size = open_file(path, "kernel")
    with f:
        try:
            head = f.read(0x210)
        except OSError as e:
            raise BootImageError(path, f"cannot read kernel: {e.strerror or e}") from e
    if size == 0:
        raise BootImageError(path, "empty file (not an ELF or bzImage kernel)")
    if head[:4] == ELF_MAGIC:
        return "pvh"
    if head[0x202:0x206] == HDRS_MAGIC:
        return "linux"
    raise BootImageError(
        path,
        f'not an ELF or bzImage kernel: starts with {head[:4].hex(" ")} and has no "HdrS" at 0x202',
    )


def load_kernel(
    memory: GuestMemory,
    kernel: str | Path,
    *,
    ramdisk: str | Path | None = None,
    cmdline: str = "",
    rsdp_paddr: int = 0,
    extra_e820: Sequence[E820Entry] = (),
    legacy_hole: bool = True,
) -> BootInfo:
    """Load `kernel` (and `ramdisk`) into `memory`; returns where and how to start.

    `rsdp_paddr` is passed to the guest (start_info.rsdp_paddr / boot_params.acpi_rsdp_addr);
    `extra_e820` ranges (e.g. ACPI tables) are laid over the default memory map;
    without `legacy_hole` the map is Xen PVH's (e820.build_e820).
    """
    if memory.low_ram_end < MIN_GUEST_RAM:
        raise BootImageError(
            kernel, f"guest memory too small: {memory.low_ram_end:#x} bytes below 4 GiB"
        )
    load = load_pvh if image_format(kernel) == "pvh" else load_bzimage
    return load(
        memory,
        kernel,
        ramdisk=ramdisk,
        cmdline=cmdline,
        rsdp_paddr=rsdp_paddr,
        extra_e820=extra_e820,
        legacy_hole=legacy_hole,
    )
