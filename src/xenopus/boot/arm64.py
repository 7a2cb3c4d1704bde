"""The arm64 Linux boot protocol: the `Image` header, where the kernel, initramfs and
device tree go in guest RAM, and the registers at entry.

Implements Documentation/arch/arm64/booting.rst (Linux 6.12), cited by section:
  §2 "Setup the device tree": the DTB on an 8-byte boundary, at most 2 MiB.
  §3 "Decompress the kernel image": an uncompressed `Image` only (Debian's arm64
     vmlinuz is one; a gzip'ed Image is refused by name).
  §4 "Call the kernel image": the 64-byte header; the image placed `text_offset` bytes
     above a 2 MiB-aligned base in RAM; `image_size` bytes from that point must be free
     (BSS included); an initramfs within the same 32 GiB window of 1 GiB alignment; x0 the
     DTB's physical address, x1-x3 zero; MMU and D-cache off; DAIF masked; EL1h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenopus.arch.arm64 import PSTATE_DAIF, PSTATE_MODE_EL1H
from xenopus.boot.layout import BootImageError, open_file
from xenopus.memory.guest import GuestMemory

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

# §4: u32 code0, code1; u64 text_offset, image_size, flags, res2, res3, res4; u32 magic,
# res5 (the PE header's offset on EFI stubs), all little-endian.
IMAGE_HEADER = struct.Struct("<IIQQQQQQII")
IMAGE_MAGIC = 0x644D5241  # "ARM\x64"
IMAGE_FLAG_BE = 1 << 0  # bit 0: kernel endianness, 1 = big-endian
IMAGE_FLAG_PAGE_SIZE_SHIFT = 1  # bits 1-2: 0 unspecified, 1 4K, 2 16K, 3 64K
IMAGE_FLAG_PHYS_ANYWHERE = 1 << 3  # bit 3: 2 MiB-aligned base anywhere in RAM
IMAGE_BASE_ALIGN = 2 * MiB
# §4: "Prior to v3.17, the endianness of text_offset was not specified ... image_size is
# zero ... text_offset is 0x80000" for such old kernels.
LEGACY_TEXT_OFFSET = 0x80000
DTB_MAX = 2 * MiB  # §2
# §2 NOTE: "versions prior to v4.2 also require that the DTB be placed within the 512 MB
# region starting at text_offset bytes below the kernel Image"; we keep to that too.
DTB_WINDOW = 512 * MiB
DTB_ALIGN = 8
INITRD_WINDOW = 32 * GiB  # §4: within a 1 GiB-aligned window of up to 32 GiB with the Image
PAGE = 4096
# Linux's arm64 early boot needs RAM for its page tables and the image's BSS beyond the
# Image itself; a guest with less RAM than this cannot boot (booting.rst asks for
# image_size; this is a floor for a clear error).
MIN_RAM = 32 * MiB


@dataclass(frozen=True)
class ImageHeader:
    text_offset: int
    image_size: int
    flags: int

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & IMAGE_FLAG_BE)

    @property
    def page_size(self) -> int:
        """The kernel's page size in bytes, 0 when the header does not say."""
        return {0: 0, 1: 4096, 2: 16384, 3: 65536}[(self.flags >> IMAGE_FLAG_PAGE_SIZE_SHIFT) & 3]


def parse_image_header(data: bytes, name: str = "kernel") -> ImageHeader:
    """The header of an arm64 `Image` (§4); BootImageError naming `name` otherwise."""
    if data[:2] == b"\x1f\x8b":
        raise BootImageError(name, "a gzip-compressed Image; booting.rst §3 leaves "
                             "decompression to the boot loader: pass the uncompressed Image")
    if len(data) < IMAGE_HEADER.size:
        raise BootImageError(name, f"{len(data)} bytes, shorter than the 64-byte arm64 Image header")
    _, _, text_offset, image_size, flags, _, _, _, magic, _ = IMAGE_HEADER.unpack_from(data)
    if magic != IMAGE_MAGIC:
        raise BootImageError(name, "no arm64 Image magic (\"ARM\\x64\" at offset 56): "
                             "not an arm64 Linux Image")
    if image_size == 0:  # §4: a kernel before v3.17
        text_offset = LEGACY_TEXT_OFFSET
    header = ImageHeader(text_offset, image_size, flags)
    if header.big_endian:
        raise BootImageError(name, "a big-endian kernel; xenopus runs little-endian guests")
    if text_offset % PAGE:
        raise BootImageError(name, f"text_offset {text_offset:#x} is not page-aligned")
    return header


@dataclass(frozen=True)
class Arm64Layout:
    """Where everything goes: the kernel's entry (its first byte), its extent, the initrd
    and the DTB's slot."""

    kernel: int
    kernel_end: int  # kernel + max(image_size, file length)
    initrd: int
    initrd_size: int
    dtb: int


def plan(header: ImageHeader, kernel_len: int, initrd_len: int, ram_base: int, ram_size: int,
         name: str = "kernel") -> Arm64Layout:
    """Place the Image at the first 2 MiB-aligned RAM base + text_offset (§4), the DTB in
    the last 2 MiB block of RAM's first 512 MiB (§2: 8-byte aligned, a 2 MiB block of its
    own as the kernel maps it cacheable in 2 MiB blocks) and the initrd page-aligned just
    below the DTB."""
    if ram_size < MIN_RAM:
        raise BootImageError(name, f"{ram_size // MiB} MiB of RAM; an arm64 guest needs "
                             f"at least {MIN_RAM // MiB} MiB")
    base = -(-ram_base // IMAGE_BASE_ALIGN) * IMAGE_BASE_ALIGN
    kernel = base + header.text_offset
    kernel_end = kernel + max(header.image_size, kernel_len)
    ram_end = ram_base + ram_size
    dtb = (min(ram_end, base + DTB_WINDOW) - DTB_MAX) & ~(IMAGE_BASE_ALIGN - 1)
    initrd = (dtb - initrd_len) & ~(PAGE - 1) if initrd_len else dtb
    if initrd < kernel_end or kernel_end > dtb:
        need = (kernel_end - ram_base + initrd_len + 2 * DTB_MAX) // MiB + 1
        raise BootImageError(name, f"the kernel ({max(header.image_size, kernel_len)} bytes "
                             f"with its BSS) and initrd ({initrd_len} bytes) do not fit in "
                             f"{ram_size // MiB} MiB of RAM; give the guest at least {need} MiB")
    if initrd_len and (initrd + initrd_len - 1) // INITRD_WINDOW != kernel // INITRD_WINDOW:
        raise BootImageError(name, "the initrd would leave the kernel's 32 GiB window (§4)")
    return Arm64Layout(kernel, kernel_end, initrd, initrd_len, dtb)


@dataclass(frozen=True)
class Arm64Entry:
    """The boot vCPU's registers at entry (§4 "Call the kernel image")."""

    pc: int
    x0: int  # the DTB's physical address; x1-x3 are zero
    pstate: int = PSTATE_MODE_EL1H | PSTATE_DAIF


def check_dtb(dtb: bytes, name: str = "device tree") -> None:
    """§2: at most 2 MiB."""
    if len(dtb) > DTB_MAX:
        raise BootImageError(name, f"{len(dtb)} bytes, more than booting.rst's 2 MiB")


def _read(path: str | Path, what: str) -> bytes:
    f, size = open_file(path, what)
    with f:
        try:
            data = f.read()
        except OSError as e:
            raise BootImageError(path, f"cannot read {what}: {e.strerror or e}") from e
    if len(data) != size or not data:
        raise BootImageError(path, f"{what} is empty or changed while being read")
    return data


def load_image(memory: GuestMemory, kernel: str | Path, ramdisk: str | Path | None,
               ram_base: int, ram_size: int) -> Arm64Layout:
    """Read the Image (and initramfs) into `memory` where `plan` puts them; the caller
    builds the device tree with the layout's initrd range and writes it with `write_dtb`."""
    image = _read(kernel, "kernel")
    header = parse_image_header(image, str(kernel))
    initrd = _read(ramdisk, "ramdisk") if ramdisk is not None else b""
    layout = plan(header, len(image), len(initrd), ram_base, ram_size, str(kernel))
    memory.write(layout.kernel, image)
    # §4: image_size bytes from the Image's start are the kernel's (BSS): zero them.
    memory.fill(layout.kernel + len(image), layout.kernel_end - layout.kernel - len(image))
    if initrd:
        memory.write(layout.initrd, initrd)
    return layout


def write_dtb(memory: GuestMemory, layout: Arm64Layout, dtb: bytes) -> Arm64Entry:
    """Write the device tree into its slot; the entry registers that point x0 at it."""
    check_dtb(dtb)
    memory.write(layout.dtb, dtb)
    return Arm64Entry(pc=layout.kernel, x0=layout.dtb)
