"""PV-in-PVH: Xen's PV shim booted as the PVH kernel, the PV guest's kernel as its module.

As libxl builds a `pvshim = 1` domain (tools/libs/light/libxl_dom.c,
libxl__domain_firmware and libxl__build_hvm): the shim is the kernel, started through PVH
with the shim's command line in hvm_start_info; the PV kernel is module 0 with the guest's
command line as that module's cmdline; the ramdisk, if any, is module 1 without one. The
shim (xen/arch/x86/guest/xen/pvh-boot.c) turns the modules into multiboot modules and
builds its one domain from them as Xen builds dom0: the first is the kernel, the next
the initrd, and each module's cmdline is used as is (setup.c cmdline_cook keeps the
first word when Xen runs as a guest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from xenopus.boot.e820 import E820Entry
from xenopus.boot.layout import BootImageError, BootInfo, open_file
from xenopus.boot.loader import image_format
from xenopus.boot.pvh import BootModule, load_pvh
from xenopus.memory.guest import GuestMemory

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path


def load_pv_shim(
    memory: GuestMemory,
    shim: str | Path,
    *,
    pv_kernel: str | Path,
    ramdisk: str | Path | None = None,
    shim_cmdline: str,
    pv_cmdline: str = "",
    rsdp_paddr: int = 0,
    extra_e820: Sequence[E820Entry] = (),
) -> BootInfo:
    """Load `shim` (a PVH ELF) with `pv_kernel` and `ramdisk` as its modules."""
    if image_format(shim) != "pvh":
        raise BootImageError(shim, "the PV shim must be an ELF with a PVH entry note (Xen"
                                   " built with pvshim_defconfig: `make shim`)")
    f, size = open_file(pv_kernel, "PV kernel")
    f.close()
    if size == 0:
        raise BootImageError(pv_kernel, "PV kernel is empty")
    boot = load_pvh(
        memory, shim, ramdisk=ramdisk, cmdline=shim_cmdline, rsdp_paddr=rsdp_paddr,
        extra_e820=extra_e820, modules=[BootModule(pv_kernel, pv_cmdline, "PV kernel")],
    )
    boot.details["pvshim"] = True
    return boot
